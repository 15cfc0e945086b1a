import type { HealthEvents, PoolHealth } from '../health/pool-health.js';
import { MAX_EJECTION_FACTOR } from '../health/passive.js';
import type { Backend } from '../upstream/backend.js';
import type { Pool } from '../upstream/pool.js';
import type { Clock } from '../util/clock.js';
import type { AdminState } from '../upstream/backend.js';
import type { BackendFact, StateStore } from './store.js';

/** A pool and its health, as the sync sees them. */
export interface SyncedPool {
  readonly pool: Pool;
  readonly health: PoolHealth;
}

export interface SharedHealthDeps {
  readonly store: StateStore;
  readonly clock: Clock;
  /** Epoch milliseconds: ejection ends cross replicas as wall time. */
  readonly wallClock: () => number;
  readonly replicaId: string;
  /** Lease time to live: the prober renews every heartbeat; a dead one is replaced after this. */
  readonly leaseTtlMs: number;
  /** A background store call failed (logged by the caller, rate-limited). */
  readonly onError: (op: string, err: unknown) => void;
  /** A shared fact changed something here (for the log). */
  readonly onApplied: (b: Backend, what: Record<string, unknown>) => void;
}

/**
 * A replica that lost a backend's lease asks for it again only every this many rounds (on a turn
 * of its own per backend, so each round asks for an even share): another replica holds it and
 * renews it every round, and the lease outlives three rounds anyway. This keeps the lease load on
 * the store near one ask per backend per round, not one per replica per backend.
 */
export const LOSER_ASKS_EVERY = 3;

/** A stable small hash of a key, to give each backend its turn among the rounds. */
function turnOf(key: string): number {
  let h = 0;
  for (let i = 0; i < key.length; i++) h = (h * 31 + key.charCodeAt(i)) >>> 0;
  return h;
}

/** The lease that decides who probes `b`. */
export function probeLease(b: Backend): string {
  return `probe:${b.key}`;
}

/**
 * Health shared between replicas: one elected prober per backend, its verdicts, passive
 * ejections and admin states.
 *
 * - Election: each replica asks for the lease `probe:<pool/address>` of every backend under
 *   active checks (SET NX PX; the holder renews every heartbeat, a replica that lost it asks
 *   again every {@link LOSER_ASKS_EVERY} heartbeats). The holder runs the checker and
 *   publishes its verdict as the `healthy` fact; the others stop their checker and follow the
 *   fact. With one replica it always wins, so a lone process checks everything itself.
 * - Fallback: `fallback()` (the store is out) resumes every checker here: each replica probes
 *   for itself until the store returns and the election runs again.
 * - Admin states and ejections written here wait in an outbox until the store took them, so a
 *   drain made while Redis is down is shared once it returns; until then the outbox shields the
 *   local state from the (older) shared one.
 * - Shared ejections are applied (not advisory): a backend ejected by one replica leaves every
 *   replica's ready set until the ejection ends. The end crosses replicas as wall time, so it
 *   is capped at {@link MAX_EJECTION_FACTOR} base ejections from now (a skewed clock cannot eject
 *   a backend for longer than any replica could have).
 */
export class SharedHealth implements HealthEvents {
  readonly #d: SharedHealthDeps;
  /** Backends whose probe lease this replica held at the last election. */
  readonly #held = new Set<Backend>();
  /** Backends whose lease another replica held when this one last asked. */
  readonly #lost = new Set<Backend>();
  /** Elections run, for the turns of lost leases. */
  #rounds = 0;
  /** Facts written here and not yet confirmed by the store, per backend key. */
  readonly #outbox = new Map<string, BackendFact>();
  /** Ejection ends (epoch ms) published by this replica, so its own fact is not applied back. */
  readonly #ownEjections = new Map<string, number>();
  /** Backends ejected because of another replica's fact. */
  readonly #remoteEjected = new Map<Backend, Pool>();
  /** Write sequence: a read reflects only the writes issued before it. */
  #seq = 0;
  /** Sequence of the latest admin write made here, per backend key. */
  readonly #adminWritten = new Map<string, number>();

  constructor(deps: SharedHealthDeps) {
    this.#d = deps;
  }

  /** True when this replica held the probe lease of `b` at the last election. */
  holds(b: Backend): boolean {
    return this.#held.has(b);
  }

  /**
   * One round: elect probers, publish this replica's verdicts, flush the outbox, apply the shared
   * facts. Rejects when the store could not be read (the caller counts the failure).
   */
  async sync(pools: readonly SyncedPool[]): Promise<void> {
    this.#endRemoteEjections();
    // Writes go out before the read, so the read reflects them (one connection keeps the order).
    const flushed = this.#flush();
    const mark = this.#seq;
    const read = this.#d.store.readFacts(pools.map(({ pool }) => pool.name));
    const [elected, facts] = await Promise.all([this.#elect(pools), read]);
    await flushed;
    for (const { pool, health } of pools) {
      for (const b of pool.backends()) {
        const fact = facts.get(b.key) ?? {};
        this.#publishVerdict(health, b, fact);
        this.#apply(pool, health, b, fact, mark);
      }
    }
    if (!elected) throw new Error('some probe leases could not be renewed');
  }

  /** The store is out: every replica probes every backend itself until it returns. */
  fallback(pools: readonly SyncedPool[]): void {
    this.#held.clear();
    this.#lost.clear(); // the next election, once the store is back, asks for every lease
    for (const { health } of pools) for (const b of [...health.watched()]) health.delegate(b, false);
  }

  /** Shares an admin state set through this replica's API. Never rejects. */
  shareAdmin(b: Backend, state: AdminState): void {
    this.#adminWritten.set(b.key, this.#seq + 1);
    this.#queue(b.key, { admin: state });
  }

  /** Gives up the probe leases held here (clean shutdown), so another replica takes over at once. */
  async releaseAll(): Promise<void> {
    const held = [...this.#held];
    this.#held.clear();
    const { store, replicaId } = this.#d;
    await Promise.allSettled(held.map((b) => store.release(probeLease(b), replicaId)));
  }

  // ---- HealthEvents, from the checkers and passive health of this process ----

  /** The checker here changed its verdict: publish it at once when this replica is the prober. */
  verdict(b: Backend, to: 'up' | 'down'): void {
    if (!this.#held.has(b)) return;
    this.#d.store.putFact(b.key, { healthy: to === 'up' }).catch((err: unknown) => {
      this.#d.onError('putFact', err);
    });
  }

  /** Passive health ejected `b` here: every replica should stop sending it sessions too. */
  ejected(b: Backend, until: number): void {
    const epoch = Math.round(this.#d.wallClock() + (until - this.#d.clock.now()));
    this.#ownEjections.set(b.key, epoch);
    this.#queue(b.key, { ejectedUntil: epoch });
  }

  // ---- internals ----

  /**
   * Takes or renews the lease of every checked backend, in a few batched calls; true when the
   * store answered. On no answer every backend keeps its current role until the next round or
   * the fallback.
   */
  async #elect(pools: readonly SyncedPool[]): Promise<boolean> {
    const { store, replicaId, leaseTtlMs } = this.#d;
    const round = this.#rounds++;
    const watched: { health: PoolHealth; b: Backend }[] = [];
    const all = new Set<Backend>();
    for (const { health } of pools)
      for (const b of health.watched()) {
        all.add(b);
        if (!this.#lost.has(b) || (round + turnOf(b.key)) % LOSER_ASKS_EVERY === 0)
          watched.push({ health, b });
      }
    for (const b of this.#lost) if (!all.has(b)) this.#lost.delete(b); // gone by a reload
    if (watched.length === 0) return true;
    let won: boolean[];
    try {
      won = await store.leaseMany(
        watched.map(({ b }) => probeLease(b)),
        replicaId,
        leaseTtlMs,
      );
    } catch {
      return false;
    }
    watched.forEach(({ health, b }, i) => {
      if (won[i] === true) {
        this.#held.add(b);
        this.#lost.delete(b);
      } else {
        this.#held.delete(b);
        this.#lost.add(b);
      }
      health.delegate(b, won[i] !== true);
    });
    return true;
  }

  /** The elected prober publishes its confirmed verdict when the shared one differs. */
  #publishVerdict(health: PoolHealth, b: Backend, fact: BackendFact): void {
    if (!this.#held.has(b)) return;
    const v = health.confirmedVerdict(b);
    if (v === undefined || fact.healthy === (v === 'up')) return;
    this.verdict(b, v);
  }

  /**
   * Applies one backend's shared facts. An admin state written here is not overwritten by a read
   * that may predate it: one still in the outbox, or one written after the read (`mark`) went out.
   */
  #apply(pool: Pool, health: PoolHealth, b: Backend, fact: BackendFact, mark: number): void {
    const mine = this.#outbox.get(b.key)?.admin !== undefined || (this.#adminWritten.get(b.key) ?? 0) > mark;
    if (fact.admin !== undefined && fact.admin !== b.admin && !mine) {
      pool.setAdmin(b, fact.admin);
      this.#d.onApplied(b, { admin: fact.admin });
    }
    if (fact.healthy !== undefined && health.watches(b) && !health.probing(b)) {
      const verdict = fact.healthy ? 'up' : 'down';
      if (b.health !== verdict) {
        pool.setHealth(b, verdict);
        this.#d.onApplied(b, { health: verdict });
      }
    }
    if (fact.ejectedUntil !== undefined && fact.ejectedUntil !== this.#ownEjections.get(b.key))
      this.#applyEjection(pool, b, fact.ejectedUntil);
  }

  #applyEjection(pool: Pool, b: Backend, epoch: number): void {
    const now = this.#d.clock.now();
    const cap = pool.config.health.passive.ejection * MAX_EJECTION_FACTOR;
    const until = now + Math.min(epoch - this.#d.wallClock(), cap);
    if (until <= now || until <= b.ejectedUntil + 1000) return;
    // As for local ejections: never the pool's last ready backend (panic mode covers the rest).
    if (!pool.leavesReady(b)) return;
    b.ejectedUntil = until;
    this.#remoteEjected.set(b, pool);
    pool.rebuild();
    this.#d.onApplied(b, { ejected_ms: Math.round(until - now) });
  }

  /**
   * Shared ejections have no timer of their own: the round after their end puts the backend back
   * (within a heartbeat), which is as precise as the shared state gets anyway.
   */
  #endRemoteEjections(): void {
    const now = this.#d.clock.now();
    for (const [b, pool] of this.#remoteEjected) {
      if (b.ejectedUntil > now) continue;
      this.#remoteEjected.delete(b);
      b.ejectedUntil = 0;
      pool.rebuild();
    }
  }

  #queue(key: string, fact: BackendFact): void {
    this.#seq++;
    this.#outbox.set(key, { ...this.#outbox.get(key), ...fact });
    void this.#send(key);
  }

  /** Sends every waiting fact; an ejection that has already ended is dropped instead. */
  async #flush(): Promise<void> {
    await Promise.all([...this.#outbox.keys()].map((key) => this.#send(key)));
  }

  /** Sends one backend's waiting facts; they leave the outbox once stored, unless replaced meanwhile. */
  async #send(key: string): Promise<void> {
    const fact = this.#outbox.get(key);
    if (fact === undefined) return;
    if (
      fact.ejectedUntil !== undefined &&
      fact.ejectedUntil <= this.#d.wallClock() &&
      fact.admin === undefined
    ) {
      this.#outbox.delete(key);
      return;
    }
    try {
      await this.#d.store.putFact(key, fact);
      if (this.#outbox.get(key) === fact) this.#outbox.delete(key);
    } catch (err) {
      this.#d.onError('putFact', err);
    }
  }
}
