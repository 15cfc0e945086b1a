import type { PoolConfig } from '../config/schema.js';
import { encodeProxyV1, encodeProxyV2Local } from '../protocol/proxy-encode.js';
import type { Logger } from '../telemetry/logger.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { Backend } from '../upstream/backend.js';
import type { Pool } from '../upstream/pool.js';
import type { Clock, Random } from '../util/clock.js';
import { ActiveChecker } from './active.js';
import { PassiveHealth } from './passive.js';
import type { Probe } from './probe.js';
import { createProbe } from './probe.js';

/**
 * What the pool's health tells the outside (the state sync shares it with other replicas). Called
 * synchronously after the pool has been updated; a listener must not throw.
 */
export interface HealthEvents {
  /** The active checker running here changed its verdict on `b`. */
  verdict?(b: Backend, to: 'up' | 'down'): void;
  /** Passive health ejected `b` until `until` (Clock time). */
  ejected?(b: Backend, until: number): void;
}

export interface PoolHealthDeps {
  readonly clock: Clock;
  readonly random: Random;
  readonly metrics: Metrics;
  readonly logger: Logger;
  readonly events?: HealthEvents;
}

/** Health checks of a PROXY pool open with a header, so backends that require one accept the probe. */
function preambleFor(cfg: PoolConfig): Buffer | undefined {
  if (cfg.proxy_protocol === 'v2') return encodeProxyV2Local();
  if (cfg.proxy_protocol === 'v1') return encodeProxyV1(undefined, undefined);
  return undefined;
}

/**
 * Keeps one pool's backends' health: an active checker per backend (when a check type is set)
 * and passive ejection fed by sessions. Both only set flags on the backend and ask the pool to
 * rebuild its picker; the balancer reads the ready set and nothing else.
 *
 * A backend's checks may be delegated (another replica holds its probe lease): its checker is
 * stopped here and its verdict is set from outside with `pool.setHealth`. By default nothing is
 * delegated, so a lone process checks every backend itself.
 */
export class PoolHealth {
  readonly #pool: Pool;
  readonly #deps: PoolHealthDeps;
  readonly #logger: Logger;
  /** Backends under active checks, wherever they run. */
  readonly #watched = new Set<Backend>();
  /** Checkers running in this process. */
  readonly #checkers = new Map<Backend, ActiveChecker>();
  /** Backends whose checks run on another replica. Kept across reloads. */
  readonly #delegated = new Set<Backend>();
  #cfg: PoolConfig;
  #probe: Probe | undefined;
  #passive: PassiveHealth<Backend>;

  constructor(pool: Pool, deps: PoolHealthDeps) {
    this.#pool = pool;
    this.#deps = deps;
    this.#cfg = pool.config;
    this.#logger = deps.logger.child({ pool: pool.name });
    this.#probe = this.#makeProbe(pool.config);
    this.#passive = this.#makePassive(pool.config);
    pool.observer = {
      added: (b) => this.#watch(b),
      removed: (b) => this.#unwatch(b),
      panicChanged: (panic, ready, eligible) => this.#panicChanged(panic, ready, eligible),
    };
    for (const b of pool.backends()) this.#watch(b);
    pool.rebuild();
  }

  /** A session's connect to `b` failed (ok false) or worked (ok true). */
  report(b: Backend, ok: boolean): void {
    if (ok) this.#passive.success(b);
    else this.#passive.failure(b);
  }

  /** True when `b` is under active checks (here or on another replica). */
  watches(b: Backend): boolean {
    return this.#watched.has(b);
  }

  /** Backends under active checks, wherever they run. */
  watched(): IterableIterator<Backend> {
    return this.#watched.values();
  }

  /** True when this process runs the active checks of `b`. */
  probing(b: Backend): boolean {
    return this.#checkers.has(b);
  }

  /**
   * The verdict of the checker running here, once at least one probe has settled since it
   * started; undefined otherwise (no checker, or only the provisional starting verdict).
   */
  confirmedVerdict(b: Backend): 'up' | 'down' | undefined {
    const c = this.#checkers.get(b);
    return c?.lastResult === undefined ? undefined : c.state;
  }

  /**
   * Hands the active checks of `b` to another replica (`elsewhere` true: the checker here stops)
   * or takes them back (a new checker starts from the current verdict, provisionally).
   */
  delegate(b: Backend, elsewhere: boolean): void {
    if (elsewhere) {
      this.#delegated.add(b);
      this.#checkers.get(b)?.stop();
      this.#checkers.delete(b);
    } else if (this.#delegated.delete(b) && this.#watched.has(b)) {
      this.#startChecker(b);
    }
  }

  /** Applies the pool's new config (reload): checks restart only when their settings changed. */
  update(cfg: PoolConfig): void {
    const changed =
      JSON.stringify(cfg.health) !== JSON.stringify(this.#cfg.health) ||
      cfg.proxy_protocol !== this.#cfg.proxy_protocol;
    this.#cfg = cfg;
    if (!changed) return;
    this.#passive.stop();
    this.#passive = this.#makePassive(cfg);
    this.#probe = this.#makeProbe(cfg);
    for (const b of [...this.#watched]) this.#stopChecks(b);
    for (const b of this.#pool.backends()) this.#watch(b);
    this.#pool.rebuild();
  }

  stop(): void {
    for (const c of this.#checkers.values()) c.stop();
    this.#checkers.clear();
    this.#passive.stop();
  }

  #makeProbe(cfg: PoolConfig): Probe | undefined {
    const preamble = preambleFor(cfg);
    const r = createProbe(cfg.health.active, preamble !== undefined ? { preamble } : {});
    if (!r.ok) {
      // Validation rejects these at load time; keep serving without active checks if one slips by.
      this.#logger.error({ error: r.error }, 'health check disabled: bad settings');
      return undefined;
    }
    return r.value;
  }

  #makePassive(cfg: PoolConfig): PassiveHealth<Backend> {
    const p = cfg.health.passive;
    return new PassiveHealth<Backend>({
      consecutiveFailures: p.consecutive_failures,
      ejection: p.ejection,
      maxEjectionPercent: p.max_ejection_percent,
      clock: this.#deps.clock,
      members: () => [...this.#pool.backends()].filter((b) => !b.removed),
      onEject: (b, until, count) => {
        this.#deps.metrics.ejections.labels(this.#pool.name, b.address).inc();
        this.#logger.warn(
          { backend: b.address, ejection_ms: Math.round(until - this.#deps.clock.now()), ejections: count },
          'backend ejected after consecutive failures',
        );
        this.#pool.rebuild();
        this.#deps.events?.ejected?.(b, until);
      },
      onReturn: (b) => {
        this.#logger.info({ backend: b.address }, 'backend ejection ended');
        this.#pool.rebuild();
      },
      mayEject: (b) => this.#pool.leavesReady(b),
      onHeld: (b) =>
        this.#logger.warn(
          { backend: b.address, failures: p.consecutive_failures },
          'backend kept in despite consecutive failures: it is the last ready backend of the pool',
        ),
    });
  }

  /** Counted and logged once per change: a pool in panic sends sessions to unhealthy backends too. */
  #panicChanged(panic: boolean, ready: number, eligible: number): void {
    const name = this.#pool.name;
    this.#deps.metrics.poolPanic.labels(name).set(panic ? 1 : 0);
    if (panic) {
      this.#deps.metrics.poolPanics.labels(name).inc();
      this.#logger.warn(
        { ready, eligible, panic_threshold: this.#cfg.health.panic_threshold },
        'pool in panic: too few backends ready, balancing over all of them',
      );
    } else {
      this.#logger.info({ ready, eligible }, 'pool out of panic');
    }
  }

  #watch(b: Backend): void {
    if (this.#probe === undefined || this.#watched.has(b)) return;
    this.#watched.add(b);
    b.checked = true;
    b.health = b.health === 'up' ? 'up' : 'down';
    if (!this.#delegated.has(b)) this.#startChecker(b);
  }

  /** Starts a checker on `b` from its current verdict (provisional: one result the other way flips it). */
  #startChecker(b: Backend): void {
    const probe = this.#probe;
    if (probe === undefined || this.#checkers.has(b)) return;
    const a = this.#cfg.health.active;
    const checks = this.#deps.metrics.healthChecks;
    const checker = new ActiveChecker({
      probe: () => probe(b),
      clock: this.#deps.clock,
      random: this.#deps.random,
      interval: a.interval,
      jitter: a.jitter,
      rise: a.rise,
      fall: a.fall,
      initial: b.health === 'up' ? 'up' : 'down',
      onResult: (r) => checks.labels(this.#pool.name, b.address, r.ok ? 'pass' : r.reason).inc(),
      onTransition: (from, to, last) => {
        this.#deps.metrics.healthTransitions.labels(this.#pool.name, b.address, to).inc();
        this.#logger[to === 'up' ? 'info' : 'warn'](
          { backend: b.address, from, to, reason: last.ok ? 'pass' : last.reason },
          `backend ${to === 'up' ? 'up' : 'down'}`,
        );
        this.#pool.setHealth(b, to);
        this.#deps.events?.verdict?.(b, to);
      },
    });
    this.#checkers.set(b, checker);
    checker.start();
  }

  /** Ends active checks of `b` (settings changed or backend gone); its health is no longer read. */
  #stopChecks(b: Backend): void {
    this.#checkers.get(b)?.stop();
    this.#checkers.delete(b);
    this.#watched.delete(b);
    b.checked = false;
  }

  #unwatch(b: Backend): void {
    this.#stopChecks(b);
    this.#delegated.delete(b);
    this.#passive.forget(b);
  }
}
