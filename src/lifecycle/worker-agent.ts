import { armExitBackstop } from './exit-backstop.js';
import type { Runtime } from './runtime.js';
import { parseToWorker } from './worker-protocol.js';
import type { Counts, FromWorker, Request } from './worker-protocol.js';

/** How often a worker reports its per-backend counts to the primary. */
export const COUNTS_INTERVAL_MS = 250;

/**
 * The worker's side of the IPC channel once its Runtime is running: answers the primary's
 * requests (reload, admin actions, metrics, views), applies sibling counts to its backends,
 * reports its own counts, and drains on the primary's word, on SIGTERM/SIGINT, or when the
 * primary is gone (IPC disconnect), then exits 0. A drain asked for twice is one drain: under
 * systemd's control-group kill a worker gets SIGTERM and the primary's drain together.
 */
export class WorkerAgent {
  readonly #runtime: Runtime;
  readonly #siblings: boolean;
  readonly #send: (m: FromWorker) => void;
  #timer: NodeJS.Timeout | undefined;
  #lastCounts = '';
  #draining = false;
  /** Called with the config text of a reload before the runtime re-reads it. */
  onReloadText: (text: string) => void = () => undefined;

  constructor(runtime: Runtime, opts: { siblings: boolean; send: (m: FromWorker) => void }) {
    this.#runtime = runtime;
    this.#siblings = opts.siblings;
    this.#send = opts.send;
  }

  start(): void {
    process.on('message', (raw: unknown) => this.#onMessage(raw));
    process.on('SIGTERM', () => this.drain('SIGTERM'));
    process.on('SIGINT', () => this.drain('SIGINT'));
    process.removeAllListeners('disconnect');
    process.on('disconnect', () => this.drain('primary gone'));
    // With a shared store, every worker is a replica and the store sync already counts siblings.
    if (this.#siblings) {
      this.#timer = setInterval(() => this.#reportCounts(), COUNTS_INTERVAL_MS);
      this.#timer.unref();
    }
  }

  drain(why: string): void {
    if (this.#draining) return;
    this.#draining = true;
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#runtime.logger.info({ why }, 'worker draining');
    armExitBackstop(this.#runtime.shutdownBudgetMs(), this.#runtime.logger);
    this.#runtime
      .drain()
      .then(() => {
        this.#runtime.logger.flush();
        process.exit(0);
      })
      .catch((err: unknown) => {
        this.#runtime.logger.error({ err }, 'worker shutdown failed');
        process.exit(1);
      });
  }

  #onMessage(raw: unknown): void {
    const m = parseToWorker(raw);
    if (m === undefined) return;
    switch (m.t) {
      case 'req':
        this.#answer(m).then(
          (body) => this.#send({ t: 'res', id: m.id, body }),
          (err: unknown) => this.#send({ t: 'res', id: m.id, body: { error: String(err) } }),
        );
        return;
      case 'siblings':
        this.#applySiblings(m.counts);
        return;
      case 'drain':
        this.drain('primary');
        return;
      case 'start':
        return; // already started
    }
  }

  async #answer(m: Request): Promise<unknown> {
    const rt = this.#runtime;
    switch (m.op) {
      case 'reload':
        this.onReloadText(m.text);
        return rt.reload();
      case 'admin':
        return rt.setAdmin(m.pool, m.address, m.verb) ?? null;
      case 'metrics':
        return rt.metrics.registry.getMetricsAsJSON();
      case 'view':
        return {
          pools: rt.poolsJson().pools,
          listeners: rt.listenersJson().listeners,
          samples: rt.historyJson().samples,
          ready: rt.readiness().ready,
        };
    }
  }

  #reportCounts(): void {
    const counts: Counts = [];
    for (const p of this.#runtime.pools.values()) for (const b of p.backends()) counts.push([b.key, b.local]);
    const text = JSON.stringify(counts);
    if (text === this.#lastCounts) return; // nothing moved: spare the IPC channel
    this.#lastCounts = text;
    this.#send({ t: 'counts', counts });
  }

  #applySiblings(counts: Counts): void {
    const byKey = new Map(counts);
    for (const p of this.#runtime.pools.values())
      for (const b of p.backends()) b.siblings = byKey.get(b.key) ?? 0;
  }
}
