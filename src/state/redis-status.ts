import type { Logger } from '../telemetry/logger.js';
import type { Clock } from '../util/clock.js';

/**
 * Redis error replies that mean "this server cannot serve us now" rather than "this command is
 * wrong". READONLY (we talk to a replica after a failover) and MASTERDOWN also call for a new
 * connection, so that Sentinel or DNS can point us at the new primary.
 */
const UNAVAILABLE = new Set([
  'READONLY',
  'LOADING',
  'OOM',
  'MASTERDOWN',
  'CLUSTERDOWN',
  'TRYAGAIN',
  'BUSY',
  'MISCONF',
  'NOREPLICAS',
]);
const RECONNECT = new Set(['READONLY', 'MASTERDOWN']);

/** How one failed call is read. */
export interface Verdict {
  /** The store cannot serve requests now. */
  readonly down: boolean;
  /** Drop the connection and connect again (failover). */
  readonly reconnect: boolean;
  /** Short cause for logs: the Redis error code, or the client's message. */
  readonly reason: string;
}

/** The first word of a Redis error reply (`READONLY`, `LOADING`, …), or undefined for other errors. */
export function replyCode(err: unknown): string | undefined {
  if (!(err instanceof Error) || err.name !== 'ReplyError') return undefined;
  const word = /^[A-Z]+/.exec(err.message);
  return word?.[0];
}

/**
 * Error replies are classified by their Redis code; anything else (timeout, closed connection,
 * writes refused while disconnected, socket errors) is a transport failure and means down.
 */
export function classify(err: unknown): Verdict {
  const code = replyCode(err);
  if (code !== undefined)
    return { down: UNAVAILABLE.has(code), reconnect: RECONNECT.has(code), reason: code };
  const message = err instanceof Error ? err.message : String(err);
  return { down: true, reconnect: false, reason: message.slice(0, 200) };
}

const ERROR_LOG_INTERVAL_MS = 10_000;

/**
 * Up/down bookkeeping of one Redis connection. Listeners and the log hear of each change once;
 * errors are logged at most once per 10 s (with a count of the ones left out) so that a Redis
 * outage under a 1 s heartbeat cannot flood the log.
 */
export class StoreStatus {
  readonly #logger: Logger;
  readonly #clock: Clock;
  readonly #listeners: ((up: boolean) => void)[] = [];
  #up = false;
  #lastErrorLog = -Infinity;
  #suppressed = 0;

  constructor(logger: Logger, clock: Clock) {
    this.#logger = logger;
    this.#clock = clock;
  }

  get up(): boolean {
    return this.#up;
  }

  onChange(listener: (up: boolean) => void): void {
    this.#listeners.push(listener);
  }

  /** Records the new state; does nothing when it did not change. */
  set(up: boolean, reason: string): void {
    if (up === this.#up) return;
    this.#up = up;
    if (up) this.#logger.info({ store: 'redis' }, 'state store up');
    else this.#logger.warn({ store: 'redis', reason }, 'state store down');
    this.#notify(up);
  }

  #notify(up: boolean): void {
    for (const listener of this.#listeners) {
      try {
        listener(up);
      } catch (err) {
        // One broken listener must not keep the others from hearing of the change.
        this.error('status listener', err);
      }
    }
  }

  /** The store was closed on purpose: down, told to listeners, and logged as news, not as a fault. */
  close(): void {
    if (!this.#up) return;
    this.#logger.info({ store: 'redis' }, 'state store closed');
    this.#up = false;
    this.#notify(false);
  }

  /** Logs an error line unless one was logged in the last 10 s; those are counted instead. */
  error(context: string, err: unknown): void {
    const now = this.#clock.now();
    if (now - this.#lastErrorLog < ERROR_LOG_INTERVAL_MS) {
      this.#suppressed++;
      return;
    }
    const message = err instanceof Error ? err.message : String(err);
    this.#logger.error(
      { store: 'redis', context, err: message.slice(0, 300), suppressed: this.#suppressed },
      'state store error',
    );
    this.#lastErrorLog = now;
    this.#suppressed = 0;
  }
}
