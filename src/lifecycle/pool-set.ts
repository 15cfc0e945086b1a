import type { PoolConfig } from '../config/schema.js';
import { DnsDiscovery } from '../discovery/dns.js';
import type { HealthEvents } from '../health/pool-health.js';
import { PoolHealth } from '../health/pool-health.js';
import type { Logger } from '../telemetry/logger.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { Backend } from '../upstream/backend.js';
import { Pool } from '../upstream/pool.js';
import type { Clock, Random } from '../util/clock.js';

export interface PoolSetDeps {
  readonly clock: Clock;
  readonly random: Random;
  readonly metrics: Metrics;
  readonly logger: Logger;
  /** Told of health verdicts and ejections (the state sync shares them). */
  readonly healthEvents?: HealthEvents;
}

/** A pool and its health, as the state sync sees them. */
export interface PoolEntry {
  readonly pool: Pool;
  readonly health: PoolHealth;
}

/** A pool with what keeps it current: its health and its discovery. */
interface PoolUnit {
  readonly pool: Pool;
  readonly health: PoolHealth;
  dns: DnsDiscovery | undefined;
  dnsKey: string;
}

/**
 * The pools of the running config. Reload keeps a pool that is still named (its backends, health
 * and open sessions carry over) and applies the new settings to it; a pool that is gone is
 * retired: its backends drain with the sessions still on them.
 */
export class PoolSet {
  readonly #deps: PoolSetDeps;
  readonly #units = new Map<string, PoolUnit>();

  constructor(deps: PoolSetDeps) {
    this.#deps = deps;
  }

  get(name: string): Pool | undefined {
    return this.#units.get(name)?.pool;
  }

  values(): Pool[] {
    return [...this.#units.values()].map((u) => u.pool);
  }

  /** Every pool with its health. */
  entries(): PoolEntry[] {
    return [...this.#units.values()].map((u) => ({ pool: u.pool, health: u.health }));
  }

  /** Creates, updates and retires pools to match `configs`. */
  apply(configs: readonly PoolConfig[]): void {
    const wanted = new Set(configs.map((c) => c.name));
    for (const [name, unit] of this.#units) {
      if (!wanted.has(name)) {
        this.#stopUnit(unit);
        unit.pool.setMembers('config', []);
        for (const src of ['dns', 'registry']) unit.pool.setMembers(src, []);
        this.#units.delete(name);
      }
    }
    for (const cfg of configs) {
      const unit = this.#units.get(cfg.name);
      if (unit === undefined) this.#units.set(cfg.name, this.#create(cfg));
      else {
        unit.pool.update(cfg);
        unit.health.update(cfg);
        this.#syncDns(unit, cfg);
      }
    }
  }

  /** Passive health report from a session or flow. */
  report(pool: Pool, backend: Backend, ok: boolean): void {
    this.#units.get(pool.name)?.health.report(backend, ok);
  }

  stop(): void {
    for (const u of this.#units.values()) {
      this.#stopUnit(u);
      u.pool.stop();
    }
  }

  #create(cfg: PoolConfig): PoolUnit {
    const { clock, random, metrics, logger, healthEvents } = this.#deps;
    const pool = new Pool(cfg, clock, random);
    const events = healthEvents !== undefined ? { events: healthEvents } : {};
    const health = new PoolHealth(pool, { clock, random, metrics, logger, ...events });
    const unit: PoolUnit = { pool, health, dns: undefined, dnsKey: '' };
    this.#syncDns(unit, cfg);
    return unit;
  }

  /** Starts, restarts or stops DNS discovery when its settings changed. */
  #syncDns(unit: PoolUnit, cfg: PoolConfig): void {
    const dnsCfg = cfg.discovery?.dns;
    const key = dnsCfg === undefined ? '' : JSON.stringify(dnsCfg);
    if (key === unit.dnsKey) return;
    unit.dns?.stop();
    unit.dns = undefined;
    unit.dnsKey = key;
    if (dnsCfg === undefined) {
      unit.pool.setMembers('dns', []);
      return;
    }
    const log = this.#deps.logger.child({ pool: cfg.name, discovery: 'dns' });
    unit.dns = new DnsDiscovery(dnsCfg, {
      clock: this.#deps.clock,
      logger: log,
      onUpdate: (members) => {
        log.info({ backends: members.map((m) => m.address) }, 'dns discovery updated the pool');
        unit.pool.setMembers('dns', members);
      },
      onError: (code) => this.#deps.metrics.discoveryErrors.labels(cfg.name, code).inc(),
    });
    void unit.dns.start();
  }

  #stopUnit(u: PoolUnit): void {
    u.dns?.stop();
    u.health.stop();
  }
}
