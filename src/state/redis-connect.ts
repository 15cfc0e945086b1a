import { isIP } from 'node:net';
import type { ConnectionOptions } from 'node:tls';
import { Cluster, Redis } from 'ioredis';
import type { RedisOptions } from 'ioredis';
import type { Config } from '../config/schema.js';
import type { Random } from '../util/clock.js';

/** The `state.redis` section of the configuration. */
export type RedisConfig = Config['state']['redis'];

/**
 * The part of an ioredis client (standalone, Sentinel or Cluster) that the store uses. Replies
 * arrive as `unknown` and are parsed by the caller.
 */
export interface RedisClient {
  readonly status: string;
  call(command: string, ...args: (string | number)[]): Promise<unknown>;
  connect(): Promise<void>;
  disconnect(reconnect?: boolean): void;
  quit(): Promise<unknown>;
  on(event: string, listener: (...args: unknown[]) => void): unknown;
}

/** What the URL carries besides the address: credentials, database, TLS. */
interface UrlParts {
  readonly host: string;
  readonly port: number;
  readonly username?: string;
  readonly password?: string;
  readonly db: number;
  readonly tls?: ConnectionOptions;
}

/**
 * ioredis options without `replyMapping`, whose `| undefined` the constructors refuse under
 * exactOptionalPropertyTypes; we keep its default (legacy reply shapes).
 */
type Options = Omit<RedisOptions, 'replyMapping'>;

/** Backoff bounds of the reconnect loop. */
export interface Backoff {
  readonly baseMs: number;
  readonly maxMs: number;
}

/**
 * Parses `redis://[user[:password]@]host[:port][/db]` or `rediss://…` (TLS). Throws an Error
 * naming the config path when the URL cannot be used.
 */
export function parseRedisUrl(url: string): UrlParts {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new Error(`state.redis.url: expected redis://host:port/db or rediss://…, got "${url}"`);
  }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') {
    throw new Error(`state.redis.url: scheme must be redis or rediss, got "${u.protocol}"`);
  }
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1') || '127.0.0.1';
  const dbText = u.pathname.replace(/^\//, '');
  const db = dbText === '' ? 0 : Number(dbText);
  if (!Number.isInteger(db) || db < 0)
    throw new Error(`state.redis.url: database must be a number, got "${dbText}"`);
  const parts: { -readonly [K in keyof UrlParts]: UrlParts[K] } = {
    host,
    port: u.port ? Number(u.port) : 6379,
    db,
  };
  if (u.username) parts.username = decodeURIComponent(u.username);
  if (u.password) parts.password = decodeURIComponent(u.password);
  // SNI takes host names only (RFC 6066); an IP literal gets no servername.
  if (u.protocol === 'rediss:') parts.tls = isIP(host) ? {} : { servername: host };
  return parts;
}

/**
 * Capped exponential backoff with "equal jitter": half the step is fixed so reconnects never spin,
 * half is random so a fleet of replicas does not reconnect in lockstep after a Redis restart.
 * Never returns null: the store reconnects for as long as it lives.
 */
export function backoff(b: Backoff, random: Random): (attempt: number) => number {
  return (attempt) => {
    const step = Math.min(b.maxMs, b.baseMs * 2 ** Math.min(30, Math.max(0, attempt - 1)));
    return Math.round(step / 2 + (random() * step) / 2);
  };
}

/**
 * Options shared by every mode. Nothing may wait on a dead Redis: commands fail at once while
 * disconnected (no offline queue), in-flight commands fail when the connection drops (no retry:
 * the next heartbeat supersedes them), and a reply slower than `command_timeout` fails the command
 * and, through socketTimeout, destroys the connection so a black-holed server is noticed.
 */
function commonOptions(cfg: RedisConfig, url: UrlParts): Options {
  const timeout = cfg.command_timeout;
  const opts: Options = {
    db: url.db,
    lazyConnect: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    commandTimeout: timeout,
    socketTimeout: timeout,
    connectTimeout: Math.min(10_000, Math.max(1000, 4 * timeout)),
    keepAlive: 10_000,
    // RESP2: the same reply shapes on every server, proxy and managed service we may meet.
    protocol: 2,
    connectionName: 'sluice',
  };
  if (url.username !== undefined) opts.username = url.username;
  if (url.password !== undefined) opts.password = url.password;
  if (url.tls) opts.tls = url.tls;
  return opts;
}

/** How often a Cluster client reads the slot map. */
const SLOTS_REFRESH_MS = 1000;

/** Builds an unconnected client for the configured mode: Cluster (`nodes`), Sentinel or standalone. */
export function createClient(cfg: RedisConfig, b: Backoff, random: Random): RedisClient {
  const url = parseRedisUrl(cfg.url);
  const common = commonOptions(cfg, url);
  const retry = backoff(b, random);
  if (cfg.nodes) {
    const { db: _db, ...redisOptions } = common; // Cluster has only database 0.
    return new Cluster(
      cfg.nodes.map((n) => ({ host: n.host, port: n.port })),
      {
        lazyConnect: true,
        enableOfflineQueue: false,
        clusterRetryStrategy: retry,
        // Ask the Cluster for its slot map every second (one CLUSTER SLOTS): after a failover the
        // client finds the promoted replica within that, not only when an error happens to
        // make it look (which took up to 12 s in the failover test).
        slotsRefreshInterval: SLOTS_REFRESH_MS,
        slotsRefreshTimeout: Math.min(SLOTS_REFRESH_MS, Math.max(100, cfg.command_timeout)),
        redisOptions,
      },
    );
  }
  if (cfg.sentinels) {
    return new Redis({
      ...common,
      retryStrategy: retry,
      sentinels: cfg.sentinels.map((s) => ({ host: s.host, port: s.port })),
      name: cfg.name ?? 'mymaster',
      role: 'master',
      sentinelCommandTimeout: cfg.command_timeout,
      enableTLSForSentinelMode: url.tls !== undefined,
    });
  }
  return new Redis({ ...common, host: url.host, port: url.port, retryStrategy: retry });
}
