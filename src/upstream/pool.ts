import type { PoolConfig } from '../config/schema.js';
import { formatHostPort } from '../config/values.js';
import type { Clock, Random, Timer } from '../util/clock.js';
import { buildPicker } from './balancer/index.js';
import type { PickContext, Picker } from './balancer/picker.js';
import type { HealthVerdict, Readiness } from './backend.js';
import { Backend } from './backend.js';
import { WaitQueue } from './wait-queue.js';
import type { QueueWaiter } from './wait-queue.js';

/** Something that holds a backend: a TCP session or a UDP flow. */
export interface Holder {
  /** Ends the holder now (drain deadline, shutdown); `reason` goes to its access-log line. */
  close(reason: string): void;
  /**
   * Its backend stopped being ready for a health reason (active checks, passive ejection). A UDP
   * flow ends, so that the client's next datagram picks again; a TCP session stays pinned.
   */
  backendLost?(): void;
}

/** What `pickFree` found: a backend with room, `full` (every candidate at its cap) or none ready. */
export type FreePick = Backend | 'full' | undefined;

/** A member as a membership source (config, DNS, registry) reports it. */
export interface Member {
  readonly address: string;
  readonly host: string;
  readonly port: number;
  readonly weight: number;
}

/** Told when the ready set changes, so health checkers can follow membership. */
export interface PoolObserver {
  added?(backend: Backend): void;
  removed?(backend: Backend): void;
  readyChanged?(pool: Pool): void;
  /** The pool entered (`panic` true) or left panic mode; `ready` of `eligible` backends are ready. */
  panicChanged?(panic: boolean, ready: number, eligible: number): void;
}

const SLOW_START_STEP_MS = 1000;

/**
 * A named group of backends and the picker over its ready ones. Membership is the union of the
 * config's backends and what discovery reports; a backend that leaves drains instead of
 * vanishing. The picker is rebuilt on every change of the ready set or of an effective weight,
 * never per pick.
 */
export class Pool {
  readonly name: string;
  #cfg: PoolConfig;
  readonly #clock: Clock;
  readonly #random: Random;
  /** Every backend known, including removed ones that still hold sessions. */
  readonly #backends = new Map<string, Backend>();
  readonly #sources = new Map<string, readonly Member[]>();
  readonly #holders = new Map<Backend, Set<Holder>>();
  readonly #drainTimers = new Map<Backend, Timer>();
  /** Sessions waiting for a slot. */
  readonly #queue = new WaitQueue();
  #ready = new Set<Backend>();
  /** What the picker chooses from: the ready backends, or in panic mode every eligible one. */
  #members = new Set<Backend>();
  #panic = false;
  /** False until the first build: backends present at start-up skip slow start and begin up. */
  #started = false;
  #picker: Picker<Backend>;
  #rampTimer: Timer | undefined;
  observer: PoolObserver = {};

  constructor(cfg: PoolConfig, clock: Clock, random: Random) {
    this.name = cfg.name;
    this.#cfg = cfg;
    this.#clock = clock;
    this.#random = random;
    this.#picker = this.#build([]);
    this.setMembers('config', configMembers(cfg));
  }

  get config(): PoolConfig {
    return this.#cfg;
  }

  /** Every backend, removed-but-draining ones included. */
  backends(): IterableIterator<Backend> {
    return this.#backends.values();
  }

  get(address: string): Backend | undefined {
    return this.#backends.get(address);
  }

  get readyCount(): number {
    return this.#ready.size;
  }

  /** Backends a new session may be sent to: the ready ones, or every eligible one in panic mode. */
  get available(): number {
    return this.#members.size;
  }

  /** True while too few backends are ready and the pool balances over all eligible ones. */
  get panic(): boolean {
    return this.#panic;
  }

  /**
   * True when a backend other than `b` is ready: passive health ejects `b` only then, so a
   * failing connect or two never take a pool's last ready backend out on their own.
   */
  leavesReady(b: Backend): boolean {
    for (const other of this.#ready) if (other !== b) return true;
    return false;
  }

  /** Applies a new config for this pool (reload): algorithm, weights, static members. */
  update(cfg: PoolConfig): void {
    // A cap becoming cluster-wide starts from no grant: whatever cap a backend held before is
    // not covered by the store any more.
    if (!clusterCapped(this.#cfg) && clusterCapped(cfg))
      for (const b of this.#backends.values()) b.clusterCap = 0;
    this.#cfg = cfg;
    this.setMembers('config', configMembers(cfg));
    this.rebuild();
  }

  /** Replaces the members reported by one source; others' members are kept. */
  setMembers(source: string, members: readonly Member[]): void {
    this.#sources.set(source, members);
    const wanted = new Map<string, Member>();
    for (const list of this.#sources.values())
      for (const m of list) if (!wanted.has(m.address)) wanted.set(m.address, m);
    for (const m of wanted.values()) {
      const b = this.#backends.get(m.address);
      if (b === undefined) {
        // Members present at start-up begin up (traffic flows at once, the first failed check
        // removes them); later arrivals wait for a passing check when one is configured.
        const nb = new Backend(
          this.name,
          m.address,
          m.host,
          m.port,
          m.weight,
          this.#started ? 'unknown' : 'up',
        );
        nb.readySince = this.#started ? this.#clock.now() : -Infinity;
        this.#backends.set(m.address, nb);
        this.observer.added?.(nb);
      } else {
        b.configWeight = m.weight;
        if (b.removed) {
          b.removed = false;
          this.#cancelDrain(b);
        }
      }
    }
    for (const b of this.#backends.values()) {
      if (!wanted.has(b.address) && !b.removed) this.#retire(b);
    }
    this.rebuild();
  }

  /** Sets the active-health verdict of a backend. */
  setHealth(b: Backend, verdict: HealthVerdict): void {
    if (b.health === verdict) return;
    b.health = verdict;
    this.rebuild();
  }

  /** Chooses a ready backend for a new session; undefined when none is left. */
  pick(ctx: PickContext, exclude: ReadonlySet<Backend> | undefined): Backend | undefined {
    return this.#picker.pick(ctx, exclude);
  }

  /**
   * Like `pick`, but skips backends at `max_connections_per_backend`: the picker's choice is kept
   * when it has room, otherwise the picker is asked again with the full ones excluded, so each
   * algorithm's own order decides who comes next (for hash algorithms, the next point on the
   * ring or table: affinity yields to the cap, as with bounded load). At most one pick per ready
   * backend. The cap counts this process's sessions; under the cluster scope, against the share
   * of the cap this process holds now (`backend.clusterCap`).
   */
  pickFree(ctx: PickContext, tried: ReadonlySet<Backend> | undefined): FreePick {
    const max = this.#cfg.max_connections_per_backend;
    const first = this.#picker.pick(ctx, tried);
    if (max <= 0 || first === undefined || this.#hasRoom(first, max)) return first;
    const skip = new Set(tried);
    skip.add(first);
    for (let i = 1; i < this.#members.size; i++) {
      const next = this.#picker.pick(ctx, skip);
      if (next === undefined) break;
      if (this.#hasRoom(next, max)) return next;
      skip.add(next);
    }
    return 'full';
  }

  #hasRoom(b: Backend, max: number): boolean {
    return b.local < (this.#cfg.max_connections_per_backend_scope === 'cluster' ? b.clusterCap : max);
  }

  /** Cluster-scoped caps were set (some may have grown): waiting sessions try again. */
  capsChanged(): void {
    if (this.#queue.size > 0) this.#queue.serve(true);
  }

  /** Sessions waiting for a slot. */
  get queued(): number {
    return this.#queue.size;
  }

  /** Puts `w` at the back of the queue; false when the queue holds `max_queue` already. */
  enqueue(w: QueueWaiter): boolean {
    return this.#queue.add(w, this.#cfg.max_queue);
  }

  /** Takes `w` out of the queue (it timed out or its client left). */
  dequeue(w: QueueWaiter): void {
    this.#queue.delete(w);
  }

  /** Counts a session or flow on `b` until `release`. */
  acquire(b: Backend, h: Holder): void {
    let set = this.#holders.get(b);
    if (set === undefined) this.#holders.set(b, (set = new Set()));
    set.add(h);
    b.local++;
    b.placed++;
  }

  release(b: Backend, h: Holder): void {
    const set = this.#holders.get(b);
    if (set?.delete(h)) {
      b.local--;
      if (set.size === 0) {
        this.#holders.delete(b);
        if (b.removed) this.#forget(b);
      }
      if (this.#queue.size > 0 && this.#members.has(b)) this.#queue.serve(false);
    }
  }

  /**
   * Admin drain: no new sessions; open ones run until they end or `deadlineMs` passes, then close.
   * disable: no new sessions, open ones kept. enable: back to normal.
   */
  setAdmin(b: Backend, state: 'enabled' | 'draining' | 'disabled', deadlineMs?: number): void {
    b.admin = state;
    this.#cancelDrain(b);
    if (state === 'draining') this.#scheduleDrain(b, deadlineMs ?? this.#drainDeadline());
    this.rebuild();
  }

  /**
   * Recomputes the ready set, slow-start weights and the picker. Panic mode (Envoy's
   * healthy_panic_threshold): when fewer than `health.panic_threshold` percent of the eligible
   * backends are ready, the picker balances over all eligible ones, health ignored, instead of
   * piling every session on the few left or refusing them all. Eligible: not removed, drained or
   * disabled by an operator, weight above 0, and ready at least once (a backend discovered but
   * never passing a check is not sent sessions even in panic).
   */
  rebuild(): void {
    const now = this.#clock.now();
    const ready: Backend[] = [];
    const eligible: Backend[] = [];
    const readySet = new Set<Backend>();
    let ramping = false;
    for (const b of this.#backends.values()) {
      const readiness = b.readiness(now);
      if (readiness === 'ready') {
        if (this.#started && !this.#ready.has(b)) b.readySince = now;
        b.wasReady = true;
        readySet.add(b);
      } else if (!(
        b.wasReady &&
        b.configWeight > 0 &&
        (readiness === 'unhealthy' || readiness === 'ejected')
      )) {
        continue;
      }
      b.weight = this.#effectiveWeight(b, now);
      if (b.weight < b.configWeight) ramping = true;
      eligible.push(b);
      if (readiness === 'ready') ready.push(b);
    }
    const threshold = this.#cfg.health.panic_threshold;
    const panic = threshold > 0 && eligible.length > 0 && ready.length * 100 < threshold * eligible.length;
    const members = panic ? eligible : ready;
    this.#started = true;
    const lost = [...this.#ready].filter((b) => !readySet.has(b) && isHealthLoss(b.readiness(now)));
    this.#ready = readySet;
    this.#members = panic ? new Set(eligible) : readySet;
    this.#picker = this.#build(members);
    this.#scheduleRamp(ramping);
    if (panic !== this.#panic) {
      this.#panic = panic;
      this.observer.panicChanged?.(panic, ready.length, eligible.length);
    }
    this.observer.readyChanged?.(this);
    for (const b of lost) for (const h of [...(this.#holders.get(b) ?? [])]) h.backendLost?.();
    // A backend became ready, or the cap was raised by a reload: there may be room for many.
    if (this.#queue.size > 0) this.#queue.serve(true);
  }

  /** Closes every holder on every backend (end of a shutdown drain). */
  closeAll(reason: string): void {
    for (const set of [...this.#holders.values()]) for (const h of [...set]) h.close(reason);
  }

  /** Stops timers (the pool is being discarded). */
  stop(): void {
    this.#rampTimer?.cancel();
    for (const t of this.#drainTimers.values()) t.cancel();
    this.#drainTimers.clear();
  }

  #build(ready: readonly Backend[]): Picker<Backend> {
    // The picker being replaced may have watched loads; the new one sets its own watch.
    for (const b of this.#backends.values()) b.loadWatcher = undefined;
    return buildPicker(this.#cfg.algorithm, ready, {
      hashKey: this.#cfg.hash_key,
      random: this.#random,
      maglevTableSize: this.#cfg.maglev_table_size,
      ...(this.#cfg.bounded_load !== undefined ? { boundedLoadFactor: this.#cfg.bounded_load } : {}),
    });
  }

  /** Slow start: weight grows linearly from 10 % to 100 % over `slow_start` after becoming ready. */
  #effectiveWeight(b: Backend, now: number): number {
    const window = this.#cfg.slow_start;
    const age = now - b.readySince;
    if (window <= 0 || age >= window) return b.configWeight;
    const share = Math.max(0.1, age / window);
    return Math.max(1, Math.round(b.configWeight * share * 100) / 100);
  }

  #scheduleRamp(ramping: boolean): void {
    this.#rampTimer?.cancel();
    this.#rampTimer = ramping ? this.#clock.setTimer(SLOW_START_STEP_MS, () => this.rebuild()) : undefined;
  }

  #drainDeadline(): number {
    return this.#cfg.drain_timeout ?? 300_000;
  }

  #retire(b: Backend): void {
    b.removed = true;
    if (!this.#holders.has(b)) this.#forget(b);
    else this.#scheduleDrain(b, this.#drainDeadline());
  }

  #forget(b: Backend): void {
    this.#cancelDrain(b);
    b.loadWatcher = undefined;
    this.#backends.delete(b.address);
    this.observer.removed?.(b);
  }

  #scheduleDrain(b: Backend, ms: number): void {
    this.#drainTimers.set(
      b,
      this.#clock.setTimer(ms, () => {
        this.#drainTimers.delete(b);
        const set = this.#holders.get(b);
        if (set) for (const h of [...set]) h.close('backend_drained');
      }),
    );
  }

  #cancelDrain(b: Backend): void {
    this.#drainTimers.get(b)?.cancel();
    this.#drainTimers.delete(b);
  }
}

/** The pool caps sessions per backend across the replicas. */
export function clusterCapped(cfg: PoolConfig): boolean {
  return cfg.max_connections_per_backend > 0 && cfg.max_connections_per_backend_scope === 'cluster';
}

/** Not ready because of its health, not an operator's word or a reload. */
function isHealthLoss(r: Readiness): boolean {
  return r === 'unhealthy' || r === 'ejected';
}

function configMembers(cfg: PoolConfig): Member[] {
  return cfg.backends.map((b) => ({
    address: formatHostPort(b.address.host, b.address.port),
    host: b.address.host,
    port: b.address.port,
    weight: b.weight,
  }));
}
