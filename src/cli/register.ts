import type { Command } from 'commander';
import { formatHostPort, parseDuration, parseHostPort } from '../config/values.js';
import type { RedisConfig } from '../state/redis-connect.js';
import { parseRedisUrl } from '../state/redis-connect.js';
import type { StateStore } from '../state/store.js';
import { createLogger } from '../telemetry/logger.js';
import type { Logger } from '../telemetry/logger.js';
import { EXIT_USAGE } from '../util/exit.js';

/** Shortest registration ttl: renewals every ttl/3 must outrun Redis round trips comfortably. */
const MIN_TTL_MS = 1000;
/** Each call to Redis gives up after this; the loop then tries again. */
const COMMAND_TIMEOUT_MS = 500;
/** A failing Redis is logged at most this often. */
const LOG_EVERY_MS = 30_000;

/** A command-line mistake: one line on stderr, exit 64. */
export class UsageError extends Error {
  readonly exitCode = EXIT_USAGE;
}

export interface RegisterArgs {
  readonly pool: string;
  readonly address: string;
  readonly ttlMs: number;
  readonly redis: RedisConfig;
}

const POOL_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;

/** Checks the arguments of `sluice register`; throws UsageError naming the bad one. */
export function parseRegisterArgs(
  pool: string,
  address: string,
  opts: { redis: string; ttl: string; keyPrefix: string },
): RegisterArgs {
  if (!POOL_NAME.test(pool)) throw new UsageError(`pool "${pool}": expected a pool name as in the config`);
  const hp = parseHostPort(address);
  if (!hp.ok) throw new UsageError(`address "${address}": ${hp.error}`);
  const ttl = parseDuration(/^\d+$/.test(opts.ttl) ? Number(opts.ttl) : opts.ttl);
  if (!ttl.ok) throw new UsageError(`--ttl ${opts.ttl}: ${ttl.error}`);
  if (ttl.value < MIN_TTL_MS) throw new UsageError(`--ttl ${opts.ttl}: must be at least 1s`);
  if (opts.keyPrefix === '') throw new UsageError('--key-prefix: must not be empty');
  try {
    parseRedisUrl(opts.redis);
  } catch (err) {
    throw new UsageError(`--redis: ${err instanceof Error ? err.message : String(err)}`);
  }
  return {
    pool,
    address: formatHostPort(hp.value.host, hp.value.port),
    ttlMs: ttl.value,
    redis: { url: opts.redis, key_prefix: opts.keyPrefix, command_timeout: COMMAND_TIMEOUT_MS },
  };
}

/**
 * Keeps `address` registered in `pool` until `stop` resolves: registers at once, then every
 * ttl/3 (so two renewals may fail before the registration lapses), retrying every second while
 * Redis is unreachable. Then deregisters (best effort, bounded by the command timeout).
 */
export async function keepRegistered(
  args: RegisterArgs,
  store: StateStore,
  logger: Logger,
  stop: Promise<void>,
): Promise<void> {
  const every = Math.max(1, Math.floor(args.ttlMs / 3));
  const log = logger.child({ pool: args.pool, backend: args.address });
  let registered = false;
  let failing = false;
  let lastLog = -Infinity;
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  const beat = (): void => {
    store.register(args.pool, args.address, args.ttlMs).then(
      () => {
        if (!registered) log.info({ ttl_ms: args.ttlMs }, 'registered');
        else if (failing) log.info('registration renewed again');
        registered = true;
        failing = false;
        lastLog = -Infinity;
        if (!stopped) timer = setTimeout(beat, every);
      },
      (err: unknown) => {
        failing = true;
        if (performance.now() - lastLog >= LOG_EVERY_MS) {
          lastLog = performance.now();
          log.warn(
            { error: err instanceof Error ? err.message : String(err) },
            'registration failed; retrying',
          );
        }
        if (!stopped) timer = setTimeout(beat, Math.min(every, 1000));
      },
    );
  };
  beat();
  await stop;
  stopped = true;
  clearTimeout(timer);
  await store.deregister(args.pool, args.address).then(
    () => log.info('deregistered'),
    (err: unknown) =>
      log.warn({ error: err instanceof Error ? err.message : String(err) }, 'deregister failed'),
  );
}

/** Resolves on the first SIGTERM or SIGINT. */
function untilSignal(): Promise<void> {
  return new Promise((resolve) => {
    const on = (): void => {
      process.off('SIGTERM', on);
      process.off('SIGINT', on);
      resolve();
    };
    process.on('SIGTERM', on);
    process.on('SIGINT', on);
  });
}

/** Adds `sluice register POOL ADDRESS --redis URL [--ttl 10s] [--key-prefix sluice]`. */
export function addRegisterCommand(program: Command): void {
  program
    .command('register <pool> <address>')
    .description('keep ADDRESS registered in POOL (registry discovery) until SIGTERM or SIGINT')
    .requiredOption('--redis <url>', 'Redis URL: redis://[user:password@]host:port/db or rediss://…')
    .option('--ttl <duration>', 'registration lifetime, renewed every third of it', '10s')
    .option('--key-prefix <prefix>', 'key prefix shared with the replicas (state.redis.key_prefix)', 'sluice')
    .action(
      async (pool: string, address: string, opts: { redis: string; ttl: string; keyPrefix: string }) => {
        let args: RegisterArgs;
        try {
          args = parseRegisterArgs(pool, address, opts);
        } catch (err) {
          if (!(err instanceof UsageError)) throw err;
          process.stderr.write(`sluice register: ${err.message}\n`);
          process.exit(EXIT_USAGE);
        }
        const logger = createLogger('info');
        const { RedisStore } = await import('../state/redis.js');
        const store = new RedisStore({ config: args.redis, logger: logger.child({ component: 'state' }) });
        const stop = untilSignal();
        await store.start();
        await keepRegistered(args, store, logger, stop);
        await store.close();
        logger.flush();
        process.exit(0);
      },
    );
}
