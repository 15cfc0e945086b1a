import type { Logger } from '../telemetry/logger.js';
import type { Backend } from '../upstream/backend.js';
import type { Clock, Timer } from '../util/clock.js';
import { LimitSync } from './limit-sync.js';
import type { SharedLimit } from './limit-sync.js';
import { RegistrySync } from './registry-sync.js';
import type { SyncedPool } from './shared-health.js';
import { SharedHealth } from './shared-health.js';
import type { AdminState } from '../upstream/backend.js';
import type { StateStore } from './store.js';

export type { SyncedPool } from './shared-health.js';
export type { SharedLimit } from './limit-sync.js';

/** Heartbeats without a successful round after which the shared view is dropped. */
export const STALE_HEARTBEATS = 3;
/** A failing store is logged at most this often. */
const LOG_EVERY_MS = 30_000;

export interface StateSyncOptions {
  readonly store: StateStore;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly replicaId: string;
  /** Milliseconds between rounds (`state.heartbeat`). */
  readonly heartbeat: number;
  /** The pools of the running config, read at every round (reload changes them). */
  readonly pools: () => readonly SyncedPool[];
  /** The cluster-scoped limits of the running config, read at every round (none by default). */
  readonly limits?: () => readonly SharedLimit[];
  /** Cluster-scoped caps were set: sessions waiting for a slot may try again. */
  readonly onCaps?: () => void;
  /** Epoch milliseconds; default Date.now. */
  readonly wallClock?: () => number;
  /** A round failed (for `sluice_state_sync_failures_total`). */
  readonly onFailure?: () => void;
}

/**
 * Converges this replica's view with the others' through the state store, every heartbeat, in
 * the background. Nothing on the connection path waits for it: sessions are counted in
 * `backend.local` at once and pickers read `backend.load` (local + the others' last synced
 * count), so a backend loaded through another replica gets fewer new sessions here.
 *
 * One round:
 * - publishes `backend.local` per backend key, with a TTL of {@link STALE_HEARTBEATS} heartbeats
 *   (a replica that dies stops counting by itself), and reads the sum of the others' counts into
 *   `backend.remote` (0 when absent). `local` is never negative and Backend objects survive a
 *   reload, so a reload neither loses nor doubles a count.
 * - elects probers, shares verdicts, ejections and admin states (see SharedHealth);
 * - reads registry discovery (see RegistrySync);
 * - claims grants for the cluster-scoped limits (see LimitSync).
 *
 * When rounds fail for {@link STALE_HEARTBEATS} heartbeats, `remote` drops to 0 (a dead store
 * must not keep counting sessions that may have ended) and every checker resumes here; the
 * replica then balances on its own sessions only until the store returns. No call ever throws
 * out of a round: failures are counted and logged at most every 30 s.
 */
export class StateSync {
  readonly #o: StateSyncOptions;
  readonly #health: SharedHealth;
  readonly #registry: RegistrySync;
  readonly #limits: LimitSync;
  readonly #logger: Logger;
  #timer: Timer | undefined;
  #round: Promise<void> | undefined;
  #stopped = false;
  #started = false;
  /** Clock time of the last round in which every step succeeded. */
  #lastOk = 0;
  /** Clock time of the last successful count read (`remote` is fresh since). */
  #countsOk = 0;
  #stale = false;
  #failures = 0;
  #lastLog = -Infinity;

  constructor(options: StateSyncOptions) {
    this.#o = options;
    this.#logger = options.logger.child({ component: 'state-sync' });
    this.#lastOk = this.#countsOk = options.clock.now();
    this.#health = new SharedHealth({
      store: options.store,
      clock: options.clock,
      wallClock: options.wallClock ?? Date.now,
      replicaId: options.replicaId,
      leaseTtlMs: STALE_HEARTBEATS * options.heartbeat,
      onError: (op, err) => this.#failed(op, err),
      onApplied: (b, what) =>
        this.#logger.info({ pool: b.pool, backend: b.address, ...what }, 'shared state applied'),
    });
    this.#registry = new RegistrySync(options.store, options.clock, (pool, backends) =>
      this.#logger.info({ pool: pool.name, backends }, 'registry discovery updated the pool'),
    );
    this.#limits = new LimitSync({
      store: options.store,
      clock: options.clock,
      logger: options.logger,
      replicaId: options.replicaId,
      ttlMs: STALE_HEARTBEATS * options.heartbeat,
      limits: options.limits ?? (() => []),
      ...(options.onCaps !== undefined ? { onCaps: options.onCaps } : {}),
    });
  }

  /** Cluster-scoped limits: true while they are enforced on local shares (the store is out). */
  get limitFallback(): boolean {
    return this.#limits.fallback;
  }

  /** Every cluster-scoped limit with what this process may hold under it now. */
  limitCaps(): Iterable<{ kind: string; name: string; cap: number }> {
    return this.#limits.caps();
  }

  /** Health events for the pools' checkers and passive health (verdicts and ejections). */
  get healthEvents(): SharedHealth {
    return this.#health;
  }

  /** Starts the rounds; the first runs at once. */
  start(): void {
    if (this.#started || this.#stopped) return;
    this.#started = true;
    const now = this.#o.clock.now();
    this.#lastOk = now;
    this.#countsOk = now;
    this.#limits.start();
    this.#schedule(0);
  }

  /** Stops the rounds, waits for one in flight, and gives up the probe leases held here. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#timer?.cancel();
    this.#timer = undefined;
    this.#limits.stop();
    await this.#round;
    await this.#health.releaseAll();
  }

  /** Runs one round now (or waits for the one in flight). Never rejects. */
  syncNow(): Promise<void> {
    this.#round ??= this.#runRound().finally(() => (this.#round = undefined));
    return this.#round;
  }

  /** Seconds since the last fully successful round (since construction or start before the first). */
  lagSeconds(): number {
    return Math.max(0, this.#o.clock.now() - this.#lastOk) / 1000;
  }

  /** Shares an admin state set through this replica's API (drain, enable, disable). */
  shareAdmin(b: Backend, state: AdminState): void {
    this.#health.shareAdmin(b, state);
  }

  /** For `sluice_health_prober`: every checked backend, and whether this replica probes it. */
  *probers(): Iterable<{ pool: string; backend: string; probing: boolean }> {
    for (const { pool, health } of this.#o.pools())
      for (const b of health.watched())
        yield { pool: pool.name, backend: b.address, probing: health.probing(b) };
  }

  #schedule(ms: number): void {
    this.#timer = this.#o.clock.setTimer(ms, () => {
      this.#timer = undefined;
      const began = this.#o.clock.now();
      void this.syncNow().then(() => {
        if (!this.#stopped) this.#schedule(Math.max(0, this.#o.heartbeat - (this.#o.clock.now() - began)));
      });
    });
  }

  async #runRound(): Promise<void> {
    const pools = this.#o.pools();
    const steps = await Promise.allSettled([
      this.#syncCounts(pools),
      this.#health.sync(pools),
      this.#registry.sync(pools.map((p) => p.pool)),
      this.#limits.sync(),
    ]);
    const failed = steps.filter((s): s is PromiseRejectedResult => s.status === 'rejected');
    const now = this.#o.clock.now();
    if (failed.length === 0) {
      this.#lastOk = now;
      this.#recovered();
      return;
    }
    this.#o.onFailure?.();
    this.#failed('sync', failed[0]?.reason);
    if (now - this.#countsOk >= STALE_HEARTBEATS * this.#o.heartbeat) this.#dropRemote(pools);
    if (now - this.#lastOk >= STALE_HEARTBEATS * this.#o.heartbeat) this.#goStale(pools);
  }

  async #syncCounts(pools: readonly SyncedPool[]): Promise<void> {
    const { store, replicaId, heartbeat } = this.#o;
    const counts = new Map<string, number>();
    for (const { pool } of pools)
      for (const b of pool.backends()) if (b.local > 0) counts.set(b.key, b.local);
    const [, others] = await Promise.all([
      store.publishCounts(replicaId, counts, STALE_HEARTBEATS * heartbeat),
      store.readCounts(
        replicaId,
        pools.map(({ pool }) => pool.name),
      ),
    ]);
    for (const { pool } of pools) for (const b of pool.backends()) b.remote = others.get(b.key) ?? 0;
    this.#countsOk = this.#o.clock.now();
  }

  #dropRemote(pools: readonly SyncedPool[]): void {
    for (const { pool } of pools) for (const b of pool.backends()) b.remote = 0;
  }

  /** The shared view is too old to trust: probe everything here until the store is back. */
  #goStale(pools: readonly SyncedPool[]): void {
    this.#health.fallback(pools);
    if (this.#stale) return;
    this.#stale = true;
    this.#logger.warn(
      { heartbeats: STALE_HEARTBEATS },
      'state store out: balancing on local counts, every backend probed from here',
    );
  }

  #recovered(): void {
    if (this.#failures === 0 && !this.#stale) return;
    this.#logger.info({ failures: this.#failures }, 'state sync recovered');
    this.#failures = 0;
    this.#stale = false;
    this.#lastLog = -Infinity;
  }

  /** Logs a failed store call, at most every 30 s, with the count of those in between. */
  #failed(op: string, err: unknown): void {
    this.#failures++;
    const now = this.#o.clock.now();
    if (now - this.#lastLog < LOG_EVERY_MS) return;
    this.#lastLog = now;
    const error = err instanceof Error ? err.message : String(err);
    this.#logger.warn({ op, error, failures: this.#failures }, 'state sync failed');
  }
}
