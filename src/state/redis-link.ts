import type { Logger } from '../telemetry/logger.js';
import type { Clock, Random, Timer } from '../util/clock.js';
import { systemClock } from '../util/clock.js';
import type { Backoff, RedisClient, RedisConfig } from './redis-connect.js';
import { backoff, createClient } from './redis-connect.js';
import type { Script } from './redis-scripts.js';
import { StoreStatus, classify, replyCode } from './redis-status.js';

export interface RedisLinkOptions {
  readonly config: RedisConfig;
  readonly logger: Logger;
  readonly clock?: Clock;
  readonly random: Random;
  /** Reconnect delays: doubling from `baseMs` up to `maxMs`, with jitter. */
  readonly backoff: Backoff;
  /** Builds the client; tests may pass their own. Default: standalone, Sentinel or Cluster per config. */
  readonly createClient?: (config: RedisConfig, backoff: Backoff, random: Random) => RedisClient;
}

/**
 * The Redis store's connection (standalone, Sentinel or Cluster through ioredis): commands and
 * scripts, and whether the store is up. What the calls mean is the store's (redis.ts).
 *
 * Failure behaviour: no call ever waits on an unreachable Redis. While disconnected every call
 * rejects at once; a call in flight rejects within `command_timeout`, and a silent server also
 * has its connection dropped. The client reconnects forever in the background with capped,
 * jittered backoff. Error replies that mean "unavailable" (READONLY, LOADING, OOM, …) mark the
 * store down; READONLY also forces a new connection so that a failover is followed. Every
 * rejection is returned to the caller; nothing is left unhandled.
 */
export class RedisLink {
  readonly #client: RedisClient;
  readonly #status: StoreStatus;
  readonly #clock: Clock;
  readonly #retry: (attempt: number) => number;
  readonly #timeoutMs: number;
  #started = false;
  #closed = false;
  /** When a call last failed in a way that means down (clock time). */
  #lastFailure = -Infinity;
  #revive: Timer | undefined;
  #revives = 0;

  constructor(opts: RedisLinkOptions) {
    this.#clock = opts.clock ?? systemClock;
    this.#retry = backoff(opts.backoff, opts.random);
    this.#timeoutMs = opts.config.command_timeout;
    this.#status = new StoreStatus(opts.logger, this.#clock);
    this.#client = (opts.createClient ?? createClient)(opts.config, opts.backoff, opts.random);
    this.#watch();
  }

  isUp(): boolean {
    return this.#status.up;
  }

  onStatus(listener: (up: boolean) => void): void {
    this.#status.onChange(listener);
  }

  /**
   * Connects, waiting at most `command_timeout` for the first 'ready'. Always resolves: when
   * Redis is down the store reports down and keeps connecting in the background.
   */
  async start(): Promise<void> {
    if (this.#started) return;
    this.#started = true;
    let timer: Timer | undefined;
    const connected = this.#client.connect().catch(() => {
      // Reported through the 'error'/'close' events; the client retries on its own.
    });
    const deadline = new Promise<void>((resolve) => (timer = this.#clock.setTimer(this.#timeoutMs, resolve)));
    await Promise.race([connected, deadline]);
    timer?.cancel();
    // Cluster resolves connect() before it emits 'ready'; callers may rely on isUp() right away.
    if (this.#client.status === 'ready') this.#status.set(true, 'ready');
  }

  /** Says goodbye politely when connected (bounded by `command_timeout`), then drops the connection. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#revive?.cancel();
    this.#status.close(); // first, so the connection's own 'close' is not reported as a fault
    if (this.#client.status === 'ready') await this.#client.quit().catch(() => undefined);
    this.#client.disconnect(false);
  }

  /** Runs a script by its SHA, sending the source once when the server does not know it yet. */
  async run(script: Script, keys: readonly string[], args: readonly (string | number)[]): Promise<unknown> {
    const numKeys = script.keys < 0 ? keys.length : script.keys; // -1: as many as given
    try {
      return await this.#send('EVALSHA', script.sha, numKeys, ...keys, ...args);
    } catch (err) {
      if (replyCode(err) !== 'NOSCRIPT') throw this.#failed(`script ${script.name}`, err);
    }
    try {
      return await this.#send('EVAL', script.lua, numKeys, ...keys, ...args);
    } catch (err) {
      throw this.#failed(`script ${script.name}`, err);
    }
  }

  async call(command: string, ...args: (string | number)[]): Promise<unknown> {
    try {
      return await this.#send(command, ...args);
    } catch (err) {
      throw this.#failed(command, err);
    }
  }

  /** Sends one command; a reply on a ready connection proves the store is up again. */
  async #send(command: string, ...args: (string | number)[]): Promise<unknown> {
    // Before start() or after close() the client must not connect on its own (lazyConnect would).
    if (!this.#started || this.#closed) throw new Error(this.#closed ? 'store closed' : 'store not started');
    const reply = await this.#client.call(command, ...args);
    // A reply proves the store up only when no call has failed for a command timeout: on a
    // Cluster with one primary stalled, the others' replies must not flip it up between the
    // stalled one's timeouts (the metric and the log would flap every heartbeat).
    if (this.#client.status === 'ready' && this.#clock.now() - this.#lastFailure >= this.#timeoutMs)
      this.#status.set(true, 'reply');
    return reply;
  }

  /** Classifies a failed call, updates the status, and returns the error to reject with. */
  #failed(op: string, err: unknown): Error {
    const verdict = classify(err);
    this.#status.error(op, err);
    if (verdict.down) {
      this.#lastFailure = this.#clock.now();
      this.#status.set(false, verdict.reason);
    }
    // After a failover the old primary answers READONLY over a healthy socket: only a new
    // connection lets Sentinel (or DNS) lead us to the new one.
    if (verdict.reconnect && this.#client.status === 'ready') this.#client.disconnect(true);
    return new Error(`redis ${op}: ${verdict.reason}`, { cause: err });
  }

  /** Wires every client event: nothing the client emits may go unhandled. */
  #watch(): void {
    const c = this.#client;
    c.on('ready', () => {
      this.#revives = 0;
      this.#status.set(true, 'ready');
    });
    c.on('error', (err: unknown) => {
      this.#status.error('connection', err);
      if (c.status !== 'ready') this.#status.set(false, classify(err).reason);
    });
    c.on('node error', (err: unknown) => this.#status.error('cluster node', err));
    c.on('close', () => this.#status.set(false, 'connection closed'));
    c.on('reconnecting', () => this.#status.set(false, 'reconnecting'));
    c.on('end', () => {
      this.#status.set(false, 'connection ended');
      this.#reviveLater();
    });
  }

  /**
   * The client stops for good ('end') only when we close it or when its connector gives up (e.g.
   * Sentinel could not name a primary). The store must reconnect for as long as it lives, so it
   * starts the client again after a backoff.
   */
  #reviveLater(): void {
    if (this.#closed || !this.#started || this.#revive) return;
    this.#revive = this.#clock.setTimer(this.#retry(++this.#revives), () => {
      this.#revive = undefined;
      if (this.#closed || this.#client.status !== 'end') return;
      this.#client.connect().catch(() => {
        // Reported through the client's events; 'end' brings us back here.
      });
    });
  }
}
