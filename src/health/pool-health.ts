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

export interface PoolHealthDeps {
  readonly clock: Clock;
  readonly random: Random;
  readonly metrics: Metrics;
  readonly logger: Logger;
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
 */
export class PoolHealth {
  readonly #pool: Pool;
  readonly #deps: PoolHealthDeps;
  readonly #logger: Logger;
  readonly #checkers = new Map<Backend, ActiveChecker>();
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
    };
    for (const b of pool.backends()) this.#watch(b);
    pool.rebuild();
  }

  /** A session's connect to `b` failed (ok false) or worked (ok true). */
  report(b: Backend, ok: boolean): void {
    if (ok) this.#passive.success(b);
    else this.#passive.failure(b);
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
    for (const b of [...this.#checkers.keys()]) this.#unwatch(b);
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
      },
      onReturn: (b) => {
        this.#logger.info({ backend: b.address }, 'backend ejection ended');
        this.#pool.rebuild();
      },
    });
  }

  #watch(b: Backend): void {
    const probe = this.#probe;
    if (probe === undefined || this.#checkers.has(b)) return;
    const a = this.#cfg.health.active;
    const initial = b.health === 'up' ? 'up' : 'down';
    b.checked = true;
    b.health = initial;
    const checks = this.#deps.metrics.healthChecks;
    const checker = new ActiveChecker({
      probe: () => probe(b),
      clock: this.#deps.clock,
      random: this.#deps.random,
      interval: a.interval,
      jitter: a.jitter,
      rise: a.rise,
      fall: a.fall,
      initial,
      onResult: (r) => checks.labels(this.#pool.name, b.address, r.ok ? 'pass' : r.reason).inc(),
      onTransition: (from, to, last) => {
        this.#deps.metrics.healthTransitions.labels(this.#pool.name, b.address, to).inc();
        this.#logger[to === 'up' ? 'info' : 'warn'](
          { backend: b.address, from, to, reason: last.ok ? 'pass' : last.reason },
          `backend ${to === 'up' ? 'up' : 'down'}`,
        );
        this.#pool.setHealth(b, to);
      },
    });
    this.#checkers.set(b, checker);
    checker.start();
  }

  #unwatch(b: Backend): void {
    this.#checkers.get(b)?.stop();
    this.#checkers.delete(b);
    this.#passive.forget(b);
  }
}
