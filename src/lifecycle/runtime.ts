import { hostname } from 'node:os';
import type { AdminApi, BackendJson, PoolJson } from '../admin/api.js';
import { AdminServer } from '../admin/server.js';
import { renderStatusPage } from '../admin/status-page.js';
import type { Config, ListenerConfig } from '../config/schema.js';
import { formatHostPort } from '../config/values.js';
import { TcpListener } from '../listener/tcp.js';
import { UdpListener } from '../listener/udp.js';
import type { Listener } from '../listener/listener.js';
import type { StateStore } from '../state/store.js';
import type { Logger } from '../telemetry/logger.js';
import { Metrics } from '../telemetry/metrics.js';
import type { Backend } from '../upstream/backend.js';
import type { Pool } from '../upstream/pool.js';
import { PoolSet } from './pool-set.js';
import type { Clock, Random } from '../util/clock.js';
import { Sweeper } from '../util/sweeper.js';

export interface RuntimeDeps {
  readonly logger: Logger;
  readonly clock: Clock;
  readonly random: Random;
  readonly store: StateStore;
  /** Reads and checks the config file again (reload). Throws ConfigError. */
  readonly reloadConfig: () => Promise<Config>;
}

/** Sweep often enough for the shortest configured timeout, but never more than 20 times a second. */
function sweepTick(cfg: Config): number {
  let min = 1000;
  for (const l of cfg.listeners) min = Math.min(min, l.timeouts.idle / 4, l.timeouts.connect / 4, l.timeouts.preface / 4);
  return Math.max(50, Math.min(1000, Math.floor(min)));
}

function listenerKey(l: ListenerConfig): string {
  return `${l.protocol}/${formatHostPort(l.bind.host, l.bind.port)}`;
}

/**
 * The running balancer: pools, listeners, the admin server, the state store. The composition
 * root (main.ts) builds it; reload and shutdown go through it.
 */
export class Runtime implements AdminApi {
  readonly metrics: Metrics;
  readonly logger: Logger;
  readonly sweeper: Sweeper;
  readonly replicaId: string;
  readonly #deps: RuntimeDeps;
  #cfg: Config;
  readonly pools: PoolSet;
  readonly listeners = new Map<string, Listener>();
  readonly admin: AdminServer;
  #draining = false;
  #ready = false;

  constructor(cfg: Config, deps: RuntimeDeps) {
    this.#cfg = cfg;
    this.#deps = deps;
    this.logger = deps.logger;
    this.replicaId = cfg.state.replica_id ?? `${hostname()}:${process.pid}`;
    this.sweeper = new Sweeper(sweepTick(cfg));
    this.metrics = new Metrics({
      backends: () => this.#backendSamples(),
      udpFlows: () => this.#udpFlows(),
      storeUp: () => deps.store.isUp(),
    });
    this.admin = new AdminServer(this, deps.logger);
    this.pools = new PoolSet({ clock: deps.clock, random: deps.random, metrics: this.metrics, logger: deps.logger });
  }

  get config(): Config {
    return this.#cfg;
  }

  /** Binds everything. Rejects with a one-line cause (port in use, token file unreadable). */
  async start(): Promise<void> {
    const cfg = this.#cfg;
    this.admin.setTokenFile(cfg.admin.token_file);
    this.pools.apply(cfg.pools);
    for (const l of cfg.listeners) this.listeners.set(l.name, this.#newListener(l));
    await this.admin.listen(cfg.admin.listen.host, cfg.admin.listen.port);
    for (const l of this.listeners.values()) {
      await l.listen();
      this.logger.info({ listener: l.name, address: l.boundAddress, protocol: l.config.protocol }, 'listener bound');
    }
    await this.#deps.store.start();
    this.#ready = true;
    this.logger.info({ admin: this.admin.boundAddress, replica: this.replicaId, store: this.#deps.store.kind }, 'sluice ready');
  }

  /**
   * Graceful stop: readiness turns 503, listeners stop accepting, sessions run until they end
   * or `drain_timeout` passes; then whatever is left is closed.
   */
  async drain(): Promise<void> {
    if (this.#draining) return;
    this.#draining = true;
    const open = (): number => [...this.listeners.values()].reduce((n, l) => n + l.openCount, 0);
    this.logger.info({ sessions: open(), drain_timeout_ms: this.#cfg.shutdown.drain_timeout }, 'draining');
    await Promise.all([...this.listeners.values()].map((l) => l.close()));
    const deadline = performance.now() + this.#cfg.shutdown.drain_timeout;
    while (open() > 0 && performance.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    const left = open();
    if (left > 0) {
      this.logger.warn({ sessions: left }, 'drain deadline passed; closing the remaining sessions');
      for (const l of this.listeners.values()) l.closeAll('shutdown');
    }
    await this.stop();
  }

  /** Releases everything at once (after a drain, or on a second signal). */
  async stop(): Promise<void> {
    this.sweeper.stop();
    this.pools.stop();
    await this.#deps.store.withdraw(this.replicaId).catch(() => undefined);
    await this.#deps.store.close().catch(() => undefined);
    await this.admin.close();
  }

  // ---- AdminApi ----

  readiness(): { ready: boolean; reason: string } {
    if (this.#draining) return { ready: false, reason: 'draining' };
    if (!this.#ready) return { ready: false, reason: 'starting' };
    return { ready: true, reason: 'ready' };
  }

  async metricsText(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.metrics.registry.contentType, body: await this.metrics.registry.metrics() };
  }

  poolsJson(): { pools: PoolJson[] } {
    const now = this.#deps.clock.now();
    return {
      pools: [...this.pools.values()].map((p) => ({
        name: p.name,
        algorithm: p.config.algorithm,
        backends: [...p.backends()].map((b) => this.#backendJson(b, now)),
      })),
    };
  }

  setAdmin(poolName: string, address: string, verb: 'drain' | 'enable' | 'disable'): BackendJson | undefined {
    const pool = this.pools.get(poolName);
    const b = pool?.get(address);
    if (pool === undefined || b === undefined) return undefined;
    const state = verb === 'drain' ? 'draining' : verb === 'disable' ? 'disabled' : 'enabled';
    pool.setAdmin(b, state);
    this.logger.info({ pool: poolName, backend: address, admin: state }, 'admin state changed');
    return this.#backendJson(b, this.#deps.clock.now());
  }

  async reload(): Promise<{ ok: true } | { ok: false; errors: string[] }> {
    return { ok: false, errors: [`reload is not available (${String(this.#deps.reloadConfig.name)})`] };
  }

  statusPage(): string {
    return renderStatusPage(this.poolsJson().pools, [...this.listeners.values()].map((l) => ({
      name: l.name,
      protocol: l.config.protocol,
      bind: l.boundAddress,
      pool: l.config.pool,
      sessions: l.openCount,
    })));
  }

  // ---- wiring ----

  #newListener(cfg: ListenerConfig): Listener {
    const deps = {
      metrics: this.metrics,
      logger: this.logger,
      sweeper: this.sweeper,
      accessLog: this.#cfg.log.access_log,
      pool: (name: string) => this.pools.get(name),
      passive: (pool: Pool, backend: Backend, ok: boolean) => this.pools.report(pool, backend, ok),
    };
    return cfg.protocol === 'udp' ? new UdpListener(cfg, deps) : new TcpListener(cfg, deps);
  }

  *#udpFlows(): Iterable<{ listener: string; flows: number }> {
    for (const l of this.listeners.values()) if (l instanceof UdpListener) yield { listener: l.name, flows: l.flows };
  }

  *#backendSamples(): Iterable<{ pool: string; address: string; up: boolean; local: number; remote: number }> {
    const now = this.#deps.clock.now();
    for (const p of this.pools.values())
      for (const b of p.backends())
        yield { pool: p.name, address: b.address, up: b.readiness(now) === 'ready', local: b.local, remote: b.remote };
  }

  #backendJson(b: Backend, now: number): BackendJson {
    return {
      address: b.address,
      state: b.state(now),
      weight: b.configWeight,
      effective_weight: b.weight,
      health: {
        active: b.checked ? b.health : 'unchecked',
        ejected_until: b.ejectedUntil > now ? new Date(Date.now() + (b.ejectedUntil - now)).toISOString() : null,
        admin: b.admin,
        readiness: b.readiness(now),
      },
      connections: { local: b.local, cluster: b.local + b.remote },
    };
  }
}

export { listenerKey };
