import { hostname } from 'node:os';
import type { AdminApi, BackendJson, ListenerJson, PoolJson } from '../admin/api.js';
import { History } from '../telemetry/history.js';
import type { Sample } from '../telemetry/history.js';
import { AdminServer } from '../admin/server.js';
import { renderStatusPage } from '../admin/status-page.js';
import { backendJson, backendSamples, poolJson } from '../admin/views.js';
import type { Config, ListenerConfig } from '../config/schema.js';
import { TcpListener } from '../listener/tcp.js';
import { ListenerSet } from './listener-set.js';
import type { PassedSockets } from './socket-activation.js';
import { ConfigError, configWarnings } from '../config/validate.js';
import { UdpListener } from '../listener/udp.js';
import type { Listener, TcpListenerDeps } from '../listener/listener.js';
import { SessionSink } from './session-sink.js';
import type { StateStore } from '../state/store.js';
import { StateSync } from '../state/sync.js';
import type { Logger } from '../telemetry/logger.js';
import { Metrics } from '../telemetry/metrics.js';
import type { Backend } from '../upstream/backend.js';
import type { Pool } from '../upstream/pool.js';
import { PoolSet } from './pool-set.js';
import { hasSharedLimits, sharedLimits } from './shared-limits.js';
import { OverloadGuard } from './overload.js';
import type { Clock, Random } from '../util/clock.js';
import { Sweeper } from '../util/sweeper.js';
import { loadSpliceRelay, loadedSpliceRelay } from '../relay/binding.js';
import type { SpliceRelay } from '../relay/binding.js';

export interface RuntimeDeps {
  readonly logger: Logger;
  readonly clock: Clock;
  readonly random: Random;
  readonly store: StateStore;
  /** Reads and checks the config file again (reload). Throws ConfigError. */
  readonly reloadConfig: () => Promise<Config>;
  /** Listening sockets systemd passed (socket activation); TCP listeners on their addresses adopt them. */
  readonly passed?: PassedSockets;
}

/** Sweep often enough for the shortest configured timeout, but never more than 20 times a second. */
function sweepTick(cfg: Config): number {
  let min = 1000;
  for (const l of cfg.listeners) {
    min = Math.min(min, l.timeouts.idle / 4, l.timeouts.connect / 4, l.timeouts.preface / 4);
    if (l.timeouts.half_closed > 0) min = Math.min(min, l.timeouts.half_closed / 4);
    if (l.protocol === 'udp') min = Math.min(min, l.udp.flow_idle / 4);
  }
  return Math.max(50, Math.min(1000, Math.floor(min)));
}

/** How often a drain checks whether everything has closed. */
const DRAIN_POLL_MS = 50;
/** The longest stop() waits on each step that depends on the state store. */
const STOP_STEP_MS = 1_000;
/** The bounded steps of stop(): sync, withdraw, close (the admin server closes at once). */
const STOP_STEPS = 3;

/** Waits for `step` at most STOP_STEP_MS; a failure or a timeout is not an error at shutdown. */
function bounded(step: Promise<unknown>): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<void>((resolve) => (timer = setTimeout(resolve, STOP_STEP_MS)));
  const settled = step.then(
    () => undefined,
    () => undefined,
  );
  return Promise.race([settled, timeout]).finally(() => clearTimeout(timer));
}

/**
 * The relay that `mode` asks for: the splice relay for `splice` (an Error when it cannot be
 * loaded) and for `auto` when it loads; undefined (Node streams) otherwise.
 */
export function chooseRelay(
  mode: Config['relay'],
  load: typeof loadSpliceRelay = loadSpliceRelay,
): { relay: SpliceRelay | undefined; error: string | undefined } {
  if (mode === 'stream') return { relay: undefined, error: undefined };
  const { relay, error } = load();
  if (relay === undefined && mode === 'splice') throw new Error(`relay: splice is not available: ${error}`);
  return { relay, error };
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
  /** Shares counts, health and admin states with the other replicas through the store. */
  readonly #sync: StateSync;
  #cfg: Config;
  readonly pools: PoolSet;
  readonly listeners: ListenerSet;
  readonly admin: AdminServer;
  readonly overload: OverloadGuard;
  #draining = false;
  #reloading = false;
  #history: History | undefined;
  #ready = false;
  #splice: SpliceRelay | undefined;

  constructor(cfg: Config, deps: RuntimeDeps) {
    this.#cfg = cfg;
    this.#deps = deps;
    this.logger = deps.logger;
    this.replicaId = cfg.state.replica_id ?? `${hostname()}:${process.pid}`;
    this.sweeper = new Sweeper(sweepTick(cfg));
    this.overload = new OverloadGuard(cfg.overload, deps.logger);
    this.metrics = new Metrics({
      overloaded: () => this.overload.active,
      backends: () => backendSamples(this.pools.values(), this.#deps.clock.now()),
      udpFlows: () => this.#udpFlows(),
      storeUp: () => deps.store.isUp(),
      syncLagSeconds: () => this.#sync.lagSeconds(),
      probers: () => this.#sync.probers(),
      limits: () => ({ fallback: this.#sync.limitFallback, caps: this.#sync.limitCaps() }),
      splice: () => loadedSpliceRelay()?.counts(),
    });
    this.#sync = new StateSync({
      store: deps.store,
      clock: deps.clock,
      logger: deps.logger,
      replicaId: this.replicaId,
      heartbeat: cfg.state.heartbeat,
      pools: () => this.pools.entries(),
      limits: () => sharedLimits(this.listeners.values(), this.pools.values()),
      onCaps: () => this.pools.values().forEach((p) => p.capsChanged()),
      onFailure: () => this.metrics.stateSyncFailures.inc(),
    });
    this.admin = new AdminServer(this, deps.logger);
    this.listeners = new ListenerSet((l) => this.#newListener(l), deps.logger);
    this.pools = new PoolSet({
      clock: deps.clock,
      random: deps.random,
      metrics: this.metrics,
      logger: deps.logger,
      healthEvents: this.#sync.healthEvents,
    });
  }

  get config(): Config {
    return this.#cfg;
  }

  /** Binds everything. Rejects with a one-line cause (port in use, token file unreadable). */
  async start(): Promise<void> {
    const cfg = this.#cfg;
    const relay = chooseRelay(cfg.relay);
    this.#splice = relay.relay;
    if (relay.error !== undefined && cfg.relay === 'auto')
      this.logger.warn({ reason: relay.error }, 'splice relay unavailable; relaying through Node streams');
    this.admin.setTokenFile(cfg.admin.token_file);
    this.pools.apply(cfg.pools);
    await this.admin.listen(cfg.admin.listen.host, cfg.admin.listen.port);
    this.#warnUnusedSockets(cfg);
    await this.listeners.apply(cfg.listeners);
    this.overload.start();
    this.#logBound(cfg.listeners.map((l) => l.name));
    this.#logWarnings(cfg);
    await this.#deps.store.start();
    this.#sync.start();
    // Cluster-scoped limits admit nothing before their first grant: take it before saying ready.
    if (hasSharedLimits(cfg)) await this.#sync.syncNow();
    this.#history = new History(this.metrics.listenerConnections, this.metrics.bytes);
    this.#ready = true;
    this.logger.info(
      {
        admin: this.admin.boundAddress,
        replica: this.replicaId,
        store: this.#deps.store.kind,
        relay: this.#splice === undefined ? 'stream' : 'splice',
      },
      'sluice ready',
    );
  }

  /**
   * Graceful stop: readiness turns 503, listeners stop accepting, sessions and flows run until
   * they end or `drain_timeout` passes; then whatever is left is closed, and the process is
   * released within one sweeper tick more ({@link shutdownBudgetMs}).
   */
  async drain(): Promise<void> {
    if (this.#draining) return;
    this.#draining = true;
    const timeout = this.#cfg.shutdown.drain_timeout;
    this.logger.info({ sessions: this.listeners.openCount(), drain_timeout_ms: timeout }, 'draining');
    await this.listeners.closeAll();
    if (!(await this.#allClosedWithin(timeout))) {
      const left = this.listeners.openCount();
      this.logger.warn({ sessions: left }, 'drain deadline passed; closing the remaining sessions');
      this.listeners.endAll();
      // A stream session reports (access line, counts) on its sockets' 'close' events, a tick
      // later: wait for those, never longer than one sweeper tick.
      await this.#allClosedWithin(this.sweeper.tickMs);
    }
    await this.stop();
  }

  /**
   * The longest a shutdown may take from the signal: the drain, one sweeper tick to close what is
   * left, and {@link STOP_STEP_MS} for each release step of stop(). main.ts exits by then whatever
   * is still pending.
   */
  shutdownBudgetMs(): number {
    return this.#cfg.shutdown.drain_timeout + this.sweeper.tickMs + STOP_STEPS * STOP_STEP_MS;
  }

  /** Resolves true once no session or flow is open, false if `ms` passes first. */
  async #allClosedWithin(ms: number): Promise<boolean> {
    const deadline = performance.now() + ms;
    for (;;) {
      if (this.listeners.openCount() === 0) return true;
      const wait = Math.min(DRAIN_POLL_MS, deadline - performance.now());
      if (wait <= 0) return false;
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }

  /**
   * Releases everything at once (after a drain, or on a second signal). Steps that wait on the
   * state store are bounded: a store that does not answer must not hold the exit.
   */
  async stop(): Promise<void> {
    await bounded(this.#sync.stop()); // first: a last round must not restart checkers after pools.stop()
    this.sweeper.stop();
    this.#history?.stop();
    this.overload.stop();
    this.pools.stop();
    await bounded(this.#deps.store.withdraw(this.replicaId));
    await bounded(this.#deps.store.close());
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
    return { pools: this.pools.values().map((p) => poolJson(p, now)) };
  }

  setAdmin(poolName: string, address: string, verb: 'drain' | 'enable' | 'disable'): BackendJson | undefined {
    const pool = this.pools.get(poolName);
    const b = pool?.get(address);
    if (pool === undefined || b === undefined) return undefined;
    const state = verb === 'drain' ? 'draining' : verb === 'disable' ? 'disabled' : 'enabled';
    pool.setAdmin(b, state);
    this.#sync.shareAdmin(b, state);
    this.logger.info({ pool: poolName, backend: address, admin: state }, 'admin state changed');
    return backendJson(b, this.#deps.clock.now());
  }

  /**
   * Reloads the config file (SIGHUP, POST /api/v1/reload). An invalid file, or a listener that
   * cannot be bound, is rejected whole and the running config stays. Otherwise pools update in
   * place (sessions keep their backend; removed backends drain), unchanged listeners keep their
   * sockets, and new sessions see the new config at once. admin.*, workers and state.* take
   * effect only on restart; a change to them is logged.
   */
  async reload(): Promise<{ ok: true } | { ok: false; errors: string[] }> {
    if (this.#reloading) return { ok: false, errors: ['a reload is already running'] };
    this.#reloading = true;
    try {
      return await this.#reload();
    } finally {
      this.#reloading = false;
    }
  }

  async #reload(): Promise<{ ok: true } | { ok: false; errors: string[] }> {
    const fail = (errors: string[]): { ok: false; errors: string[] } => {
      this.metrics.configReloads.labels('failure').inc();
      this.logger.error({ errors }, 'reload rejected; the running config is kept');
      return { ok: false, errors };
    };
    if (this.#draining) return fail(['shutting down']);
    let next: Config;
    try {
      next = await this.#deps.reloadConfig();
    } catch (err) {
      if (err instanceof ConfigError) return fail(err.problems.map((p) => `${p.path}: ${p.message}`));
      return fail([err instanceof Error ? err.message : String(err)]);
    }
    let relay;
    try {
      relay = chooseRelay(next.relay);
    } catch (err) {
      return fail([err instanceof Error ? err.message : String(err)]);
    }
    const restartOnly = (['admin', 'workers', 'state'] as const).filter(
      (k) => JSON.stringify(next[k]) !== JSON.stringify(this.#cfg[k]),
    );
    // Pools first, so new listeners find their pools; a failed bind below leaves them updated,
    // which is harmless: the old listeners route by pool name and the pools are a superset.
    const prevPools = this.#cfg.pools;
    this.pools.apply([...next.pools, ...prevPools.filter((p) => !next.pools.some((n) => n.name === p.name))]);
    let plan;
    try {
      plan = await this.listeners.apply(next.listeners);
    } catch (err) {
      this.pools.apply(prevPools);
      return fail([err instanceof Error ? err.message : String(err)]);
    }
    this.pools.apply(next.pools);
    this.#splice = relay.relay; // new sessions; open ones keep how they relay
    this.#cfg = { ...next, admin: this.#cfg.admin, workers: this.#cfg.workers, state: this.#cfg.state };
    this.logger.level = next.log.level;
    this.sweeper.setTick(sweepTick(next));
    this.overload.update(next.overload);
    this.metrics.configReloads.labels('success').inc();
    this.#logBound([...plan.added, ...plan.rebound]);
    this.logger.info({ ...plan, restart_needed_for: restartOnly }, 'config reloaded');
    this.#logWarnings(next);
    // A limit that became cluster-wide admits nothing until it is granted: claim it now.
    if (hasSharedLimits(next)) void this.#sync.syncNow();
    return { ok: true };
  }

  /**
   * Passed sockets that no TCP listener of `cfg` will adopt, said before binding: a UDP listener
   * on the same address then fails with "already in use", and this line says why.
   */
  #warnUnusedSockets(cfg: Config): void {
    for (const s of this.#deps.passed?.unadopted(cfg.listeners) ?? [])
      this.logger.warn(
        { socket: s },
        'systemd passed a socket that no TCP listener binds: connections to it wait unanswered (sluice adopts ListenStream sockets whose address a listener names)',
      );
  }

  /** What `sluice validate` warns about, once per start or reload. */
  #logWarnings(cfg: Config): void {
    for (const w of configWarnings(cfg)) this.logger.warn({ key: w.path }, `config: ${w.message}`);
  }

  #logBound(names: readonly string[]): void {
    for (const name of names) {
      const l = this.listeners.get(name);
      if (l !== undefined)
        this.logger.info(
          {
            listener: l.name,
            address: l.boundAddress,
            protocol: l.config.protocol,
            ...(l instanceof TcpListener && l.passed ? { socket: 'systemd' } : {}),
          },
          'listener bound',
        );
    }
  }

  listenersJson(): { listeners: ListenerJson[] } {
    return {
      listeners: [...this.listeners.values()].map((l) => ({
        name: l.name,
        protocol: l.config.protocol,
        bind: l.boundAddress,
        pool: l.config.pool,
        open: l.openCount,
      })),
    };
  }

  historyJson(): { samples: readonly Sample[] } {
    return { samples: this.#history?.samples() ?? [] };
  }

  statusPage(): string {
    return renderStatusPage(
      this.poolsJson().pools,
      this.listenersJson().listeners,
      this.historyJson().samples,
    );
  }

  // ---- wiring ----

  #newListener(cfg: ListenerConfig): Listener {
    const config = (): Config => this.#cfg;
    // eslint-disable-next-line @typescript-eslint/no-this-alias -- the getter below reads a private field
    const runtime = this;
    const deps: TcpListenerDeps = {
      metrics: this.metrics,
      logger: this.logger,
      sweeper: this.sweeper,
      overload: this.overload,
      get accessLog() {
        return config().log.access_log;
      },
      get splice() {
        return runtime.#splice;
      },
      pool: (name: string) => this.pools.get(name),
      passive: (pool: Pool, backend: Backend, ok: boolean) => this.pools.report(pool, backend, ok),
      sessionEvents: (name: string, logger: Logger) =>
        new SessionSink(name, {
          metrics: this.metrics,
          logger,
          accessLog: () => config().log.access_log,
          passive: (pool, backend, ok) => this.pools.report(pool, backend, ok),
        }),
    };
    return cfg.protocol === 'udp'
      ? new UdpListener(cfg, deps)
      : new TcpListener(cfg, deps, this.#deps.passed?.take(cfg));
  }

  *#udpFlows(): Iterable<{ listener: string; flows: number }> {
    for (const l of this.listeners.all())
      if (l instanceof UdpListener) yield { listener: l.name, flows: l.flows };
  }
}
