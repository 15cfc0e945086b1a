import { Registry } from 'prom-client';
import type { BackendJson, ListenerJson, PoolJson } from '../admin/api.js';
import { renderStatusPage } from '../admin/status-page.js';
import { AdminServer } from '../admin/server.js';
import type { AdminSource } from '../admin/server.js';
import { EXIT_CONFIG, UserError } from '../util/exit.js';
import type { Config } from '../config/schema.js';
import type { Sample } from '../telemetry/history.js';
import { createLogger } from '../telemetry/logger.js';
import type { Logger } from '../telemetry/logger.js';
import {
  aggregateMetrics,
  mergeAdminAnswers,
  mergeListeners,
  mergePools,
  mergeSamples,
  parseView,
  reloadRefusals,
} from './primary-merge.js';
import type { WorkerAnswer, WorkerView } from './primary-merge.js';
import { PrimaryMetrics } from './primary-metrics.js';
import { probeListeners } from './primary-probe.js';
import { SdNotify } from './sd-notify.js';
import type { PassedSockets } from './socket-activation.js';
import { COUNTS_INTERVAL_MS } from './worker-agent.js';
import type { Counts } from './worker-protocol.js';
import { WorkerSlot } from './worker-slot.js';
import { queuedResetWarning, readWorkerConfig, workerCount } from './workers.js';

/** A worker crashing this often within CRASH_WINDOW_MS makes the primary give up (exit 1). */
const MAX_CRASHES = 5;
const CRASH_WINDOW_MS = 60_000;
/** First restart delay; doubles with each recent crash of the same worker, up to the cap. */
const RESTART_BASE_MS = 250;
const RESTART_MAX_MS = 10_000;
/** How long an admin question to the workers may take. */
const ASK_TIMEOUT_MS = 2000;
const RELOAD_TIMEOUT_MS = 30_000;

type ReloadResult = { ok: true } | { ok: false; errors: string[] };

/**
 * `sluice run` with workers > 1: forks the workers, restarts a crashed one, fans out reload and
 * drain, owns the admin port (health, readiness of all workers, metrics summed over them, pools
 * merged, actions fanned out) and tells systemd. It serves no traffic itself. See docs/workers.md.
 */
export class Primary implements AdminSource {
  readonly #path: string;
  #text: string;
  #cfg: Config;
  readonly #logger: Logger;
  readonly #notify: SdNotify;
  readonly #admin: AdminServer;
  readonly #slots: WorkerSlot[];
  readonly #metrics: PrimaryMetrics;
  /** Listening sockets systemd passed (socket activation): kept open here, shared by every worker. */
  readonly #passed: PassedSockets | undefined;
  #state: 'starting' | 'running' | 'draining' = 'starting';
  #reloading: Promise<ReloadResult> | undefined;
  #siblingTimer: NodeJS.Timeout | undefined;
  #started: { resolve: () => void; reject: (err: Error) => void } | undefined;
  #exitCode = 0;
  /** The config text each worker process was started with (a reload may come before it is ready). */
  readonly #startedWith = new Map<WorkerSlot, string>();
  /** Admin actions taken, replayed to a restarted worker so it agrees with its siblings. */
  readonly #adminActions = new Map<
    string,
    { pool: string; address: string; verb: 'drain' | 'enable' | 'disable' }
  >();

  constructor(path: string, text: string, cfg: Config, workers: number, passed?: PassedSockets) {
    this.#passed = passed;
    this.#path = path;
    this.#text = text;
    this.#cfg = cfg;
    this.#logger = createLogger(cfg.log.level).child({ role: 'primary' });
    this.#notify = new SdNotify(this.#logger);
    this.#admin = new AdminServer(this, this.#logger);
    const events = {
      ready: (s: WorkerSlot) => this.#onReady(s),
      failed: (s: WorkerSlot, message: string, code: number) => this.#onFailed(s, message, code),
      exit: (s: WorkerSlot, code: number | null, signal: NodeJS.Signals | null) =>
        this.#onExit(s, code, signal),
    };
    this.#slots = Array.from({ length: workers }, (_, i) => new WorkerSlot(i + 1, this.#logger, events));
    this.#metrics = new PrimaryMetrics(() => this.#slots.filter((s) => s.ready).length);
  }

  /** Checks the ports, binds admin, starts every worker; rejects with a UserError if one fails. */
  async start(): Promise<void> {
    const cfg = this.#cfg;
    // A passed socket is systemd's: its address is taken on purpose, and its queue is shared.
    const own = cfg.listeners.filter((l) => this.#passed?.has(l) !== true);
    await probeListeners(own);
    const queued = queuedResetWarning({ ...cfg, listeners: own });
    if (queued !== undefined) this.#logger.warn({ sysctl: 'net.ipv4.tcp_migrate_req' }, queued);
    this.#admin.setTokenFile(cfg.admin.token_file);
    await this.#admin.listen(cfg.admin.listen.host, cfg.admin.listen.port);
    this.#wireSignals();
    const started = new Promise<void>((resolve, reject) => (this.#started = { resolve, reject }));
    for (const s of this.#slots) this.#spawn(s);
    await started;
    this.#state = 'running';
    if (cfg.state.store === 'memory') {
      this.#siblingTimer = setInterval(() => this.#pushSiblings(), COUNTS_INTERVAL_MS);
      this.#siblingTimer.unref();
    }
    this.#logger.info(
      { admin: this.#admin.boundAddress, workers: this.#slots.map((s) => s.pid) },
      'sluice ready',
    );
    void this.#notify.ready(`${this.#slots.length} workers ready`);
  }

  // ---- supervision ----

  #spawn(s: WorkerSlot): void {
    s.restartTimer = undefined;
    this.#startedWith.set(s, this.#text);
    const { passed, stdio } = this.#passed?.forWorkers() ?? { passed: [], stdio: [] };
    s.spawn(
      {
        t: 'start',
        text: this.#text,
        index: s.index,
        workers: this.#slots.length,
        admin: this.#admin.boundAddress,
        passed,
      },
      stdio,
    );
    this.#logger.info({ worker: s.index, worker_pid: s.pid }, 'worker started');
  }

  #onReady(s: WorkerSlot): void {
    if (this.#state === 'draining') s.send({ t: 'drain' });
    if (this.#started !== undefined && this.#slots.every((x) => x.ready)) {
      this.#started.resolve();
      this.#started = undefined;
    }
    if (this.#state !== 'running') return;
    this.#logger.info({ worker: s.index, worker_pid: s.pid }, 'worker ready');
    for (const a of this.#adminActions.values()) void s.request({ op: 'admin', ...a }, ASK_TIMEOUT_MS);
    // Started before a reload that it could not take part in: bring it to the running text.
    if (this.#startedWith.get(s) !== this.#text) {
      this.#startedWith.set(s, this.#text);
      void s.request({ op: 'reload', text: this.#text }, RELOAD_TIMEOUT_MS);
    }
  }

  #onFailed(s: WorkerSlot, message: string, code: number): void {
    this.#logger.error({ worker: s.index, code, error: message }, 'worker failed to start');
    if (this.#started === undefined) return; // a restart that failed: its exit is counted as a crash
    // At start-up every worker would fail the same way: stop them all and report it once.
    for (const x of this.#slots) x.kill('SIGKILL');
    this.#started.reject(new UserError(message, code));
    this.#started = undefined;
  }

  #onExit(s: WorkerSlot, code: number | null, signal: NodeJS.Signals | null): void {
    this.#logger.info({ worker: s.index, code, signal }, 'worker exited');
    if (this.#state === 'draining') {
      if (this.#slots.every((x) => !x.alive)) this.#finish();
      return;
    }
    if (this.#started !== undefined) {
      for (const x of this.#slots) x.kill('SIGKILL');
      this.#started.reject(new UserError(`worker ${s.index} exited during start-up (${code ?? signal})`));
      this.#started = undefined;
      return;
    }
    if (code === EXIT_CONFIG) {
      // The config it was given is invalid: restarting cannot help.
      this.#logger.error({ worker: s.index }, 'worker exited 78 (invalid configuration); not restarted');
      if (this.#slots.every((x) => !x.alive)) this.#fatal('every worker exited 78', EXIT_CONFIG);
      return;
    }
    const now = performance.now();
    s.crashes = [...s.crashes.filter((t) => now - t < CRASH_WINDOW_MS), now];
    if (s.crashes.length >= MAX_CRASHES) {
      this.#fatal(
        `worker ${s.index} crashed ${s.crashes.length} times within ${CRASH_WINDOW_MS / 1000}s (last: ${code ?? signal}); giving up`,
        1,
      );
      return;
    }
    const delay = Math.min(RESTART_MAX_MS, RESTART_BASE_MS * 2 ** (s.crashes.length - 1));
    this.#logger.warn({ worker: s.index, code, signal, restart_in_ms: delay }, 'worker crashed; restarting');
    this.#metrics.restarts.inc();
    s.restartTimer = setTimeout(() => this.#spawn(s), delay);
  }

  /** Gives up: logs the cause as one line on stderr too, drains the workers left, exits `code`. */
  #fatal(message: string, code: number): void {
    this.#logger.fatal({ exit_code: code }, message);
    process.stderr.write(`sluice: ${message}\n`);
    this.drain('fatal', code);
  }

  /** Sessions on the other workers per backend, so least-connections sees the whole host. */
  #pushSiblings(): void {
    const total = new Map<string, number>();
    for (const s of this.#slots) for (const [k, n] of s.counts) total.set(k, (total.get(k) ?? 0) + n);
    for (const s of this.#slots) {
      if (!s.ready) continue;
      const counts: Counts = [];
      for (const [k, n] of total) {
        const others = n - (s.counts.get(k) ?? 0);
        if (others > 0) counts.push([k, others]);
      }
      s.send({ t: 'siblings', counts });
    }
  }

  // ---- signals, drain ----

  #wireSignals(): void {
    const onStop = (signal: NodeJS.Signals): void => {
      if (this.#state === 'draining') {
        this.#logger.warn({ signal }, 'second signal: exiting now');
        for (const s of this.#slots) s.kill('SIGKILL');
        this.#logger.flush();
        process.exit(this.#exitCode);
      }
      this.drain(signal, 0);
    };
    process.on('SIGTERM', onStop);
    process.on('SIGINT', onStop);
    process.on('SIGHUP', () => {
      void this.#notify.reloading();
      void this.reload().finally(() => void this.#notify.ready(`${this.#slots.length} workers ready`));
    });
  }

  /** Every worker drains (drain_timeout each); the primary exits `code` once all have exited. */
  drain(why: string, code: number): void {
    if (this.#state === 'draining') return;
    this.#state = 'draining';
    this.#exitCode = code;
    this.#logger.info({ why }, 'shutting down');
    void this.#notify.stopping();
    if (this.#siblingTimer !== undefined) clearInterval(this.#siblingTimer);
    for (const s of this.#slots) {
      if (s.restartTimer !== undefined) clearTimeout(s.restartTimer);
      s.send({ t: 'drain' });
    }
    if (this.#slots.every((s) => !s.alive)) this.#finish();
    // A worker stuck past its own drain deadline is killed; the margin covers its clean-up.
    setTimeout(() => {
      for (const s of this.#slots) s.kill('SIGKILL');
    }, this.#cfg.shutdown.drain_timeout + 10_000).unref();
  }

  #finish(): void {
    void this.#admin.close().finally(() => {
      this.#logger.info({ exit_code: this.#exitCode }, 'stopped');
      this.#logger.flush();
      process.exit(this.#exitCode);
    });
  }

  // ---- AdminSource ----

  readiness(): { ready: boolean; reason: string } {
    if (this.#state === 'draining') return { ready: false, reason: 'draining' };
    const notReady = this.#slots.find((s) => !s.ready);
    if (this.#state === 'starting' || notReady !== undefined)
      return {
        ready: false,
        reason: notReady === undefined ? 'starting' : `worker ${notReady.index} not ready`,
      };
    return { ready: true, reason: 'ready' };
  }

  async metricsText(): Promise<{ contentType: string; body: string }> {
    const answers = await this.#askEach({ op: 'metrics' });
    const owned = new Set(['sluice_config_reloads_total']);
    const host = aggregateMetrics(answers, this.#cfg.state.store !== 'memory', owned);
    const merged = Registry.merge([host, this.#metrics.registry]);
    return { contentType: merged.contentType, body: await merged.metrics() };
  }

  async poolsJson(): Promise<{ pools: PoolJson[] }> {
    return { pools: mergePools(await this.#views(), this.#cfg.state.store !== 'memory') };
  }

  async listenersJson(): Promise<{ listeners: ListenerJson[] }> {
    return { listeners: mergeListeners(await this.#views()) };
  }

  async historyJson(): Promise<{ samples: readonly Sample[] }> {
    return { samples: mergeSamples(await this.#views()) };
  }

  async statusPage(): Promise<string> {
    const views = await this.#views();
    return renderStatusPage(
      mergePools(views, this.#cfg.state.store !== 'memory'),
      mergeListeners(views),
      mergeSamples(views),
    );
  }

  /** Fanned out to every worker: worker 1's answer, with connections summed over all. */
  async setAdmin(
    pool: string,
    address: string,
    verb: 'drain' | 'enable' | 'disable',
  ): Promise<BackendJson | undefined> {
    const merged = mergeAdminAnswers(await this.#ask({ op: 'admin', pool, address, verb }));
    if (merged === undefined) return undefined;
    const key = `${pool}/${address}`;
    if (verb === 'enable')
      this.#adminActions.delete(key); // the default state: nothing to replay
    else this.#adminActions.set(key, { pool, address, verb });
    return merged;
  }

  /**
   * SIGHUP and POST /api/v1/reload: the file is read and checked once, here; an invalid one is
   * rejected before any worker sees it. A valid one goes to every worker as text, so all run the
   * same config. A worker can still refuse it (a new port in use): that is reported per worker.
   */
  reload(): Promise<ReloadResult> {
    this.#reloading ??= this.#reload().finally(() => (this.#reloading = undefined));
    return this.#reloading;
  }

  async #reload(): Promise<ReloadResult> {
    const fail = (errors: string[]): ReloadResult => {
      this.#metrics.reloads.labels('failure').inc();
      this.#logger.error({ errors }, 'reload rejected; the running config is kept');
      return { ok: false, errors };
    };
    if (this.#state !== 'running') return fail([this.#state === 'draining' ? 'shutting down' : 'starting']);
    const read = await readWorkerConfig(this.#path);
    if ('errors' in read) return fail(read.errors);
    const { text, cfg: next } = read;
    // Only ready workers can reload; one still starting catches up when it is ready (#onReady).
    const live = this.#slots.filter((s) => s.ready);
    const answers = await Promise.all(live.map((s) => s.request({ op: 'reload', text }, RELOAD_TIMEOUT_MS)));
    const { refused, errors } = reloadRefusals(
      answers,
      live.map((s) => s.index),
    );
    // Workers restarted from now on get the new text if any worker runs it (they are the majority
    // case: a refusal is a bind race on one worker, reported so that the operator reloads again).
    if (refused < live.length || live.length === 0) this.#text = text;
    for (const s of live) this.#startedWith.set(s, this.#text);
    if (errors.length > 0) return fail(errors);
    if (workerCount(next.workers) !== this.#slots.length)
      this.#logger.warn({ workers: next.workers }, 'a change of workers takes effect on restart');
    this.#cfg = { ...next, admin: this.#cfg.admin, workers: this.#cfg.workers, state: this.#cfg.state };
    this.#logger.level = next.log.level;
    this.#metrics.reloads.labels('success').inc();
    this.#logger.info({ workers: live.length }, 'config reloaded');
    return { ok: true };
  }

  async #views(): Promise<WorkerView[]> {
    return (await this.#ask({ op: 'view' })).map(parseView).filter((v): v is WorkerView => v !== undefined);
  }

  /** The same question to every live worker, answers in worker order (silent ones left out). */
  async #ask(body: Parameters<WorkerSlot['request']>[0]): Promise<unknown[]> {
    return (await this.#askEach(body)).map((a) => a.body);
  }

  /** The answers of the workers that answered in time, each with its worker's number. */
  async #askEach(body: Parameters<WorkerSlot['request']>[0]): Promise<WorkerAnswer[]> {
    const answers = await Promise.all(this.#slots.map((s) => s.request(body, ASK_TIMEOUT_MS)));
    return answers.flatMap((a, i) => (a === undefined ? [] : [{ worker: this.#slots[i]!.index, body: a }]));
  }
}
