import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { parseConfigText, readConfigText } from '../config/load.js';
import type { Config } from '../config/schema.js';
import { ConfigError } from '../config/validate.js';
import type { ConfigProblem } from '../config/validate.js';

/**
 * Multi-core mode: `workers: N | auto` runs N worker processes that each bind every listener
 * with SO_REUSEPORT, so the kernel spreads new connections (TCP) and flows (UDP, by 4-tuple hash)
 * over them, under a primary process that owns the admin port. See docs/workers.md.
 *
 * Why not node:cluster: its default round-robin passes every accepted socket from the primary to
 * a worker over IPC, one more process and message on every connection's path. SCHED_NONE
 * cluster only shares one listen socket, which
 * the kernel balances worse than a reusePort group. Plain processes also keep the worker's
 * code path identical to the single-process one.
 */

/** The number of worker processes `workers` asks for on this host. */
export function workerCount(workers: Config['workers']): number {
  return workers === 'auto' ? Math.max(1, availableParallelism()) : workers;
}

/**
 * Problems with a config that only show in multi-worker mode: a listener on port 0 would get a
 * different port in each worker, so nothing would share it. Empty when `workers` resolves to 1.
 */
export function workerConfigProblems(cfg: Config): ConfigProblem[] {
  if (workerCount(cfg.workers) <= 1) return [];
  const problems: ConfigProblem[] = [];
  cfg.listeners.forEach((l, i) => {
    if (l.bind.port === 0)
      problems.push({
        path: `listeners[${i}].bind`,
        message: 'port 0 cannot be shared by several workers; name a port or set workers: 1',
      });
  });
  return problems;
}

/** Platforms where libuv honours UV_TCP_REUSEPORT / UV_UDP_REUSEPORT with kernel load balancing. */
const REUSEPORT_PLATFORMS: ReadonlySet<string> = new Set(['linux', 'freebsd', 'sunos', 'aix']);

/**
 * Why this runtime cannot run several workers, or undefined when it can. `reusePort` on
 * `net.Server#listen` and `dgram.createSocket` arrived in Node 22.12 and 23.1; older versions
 * ignore the option and the second worker fails with EADDRINUSE.
 */
export function reusePortUnsupported(
  version: string = process.versions.node,
  platform: string = process.platform,
): string | undefined {
  const [major = 0, minor = 0] = version.split('.').map(Number);
  const versionOk = major > 23 || (major === 23 && minor >= 1) || (major === 22 && minor >= 12);
  if (versionOk && REUSEPORT_PLATFORMS.has(platform)) return undefined;
  return `needs SO_REUSEPORT (Node >= 22.12 on Linux or FreeBSD); this is Node ${version} on ${platform}`;
}

/** Linux (>= 5.14): whether a closing reuseport listener hands its queued connections to another. */
const MIGRATE_REQ = '/proc/sys/net/ipv4/tcp_migrate_req';

/**
 * What happens to the connections queued at a worker that exits, when it is worth a warning: the
 * kernel completes handshakes into each worker's own accept queue, and when that worker's
 * listening socket closes (a crash, a kill) the connections waiting there are reset, unless
 * `net.ipv4.tcp_migrate_req` is 1, which moves them to another socket of the reuseport group.
 * Undefined when the sysctl is 1, on other platforms, and when no listener is TCP (UDP
 * datagrams queued at a worker are lost with it either way, as datagrams may be).
 */
export function queuedResetWarning(
  cfg: Config,
  read: () => string = () => readFileSync(MIGRATE_REQ, 'utf8'),
  platform: string = process.platform,
): string | undefined {
  if (platform !== 'linux' || !cfg.listeners.some((l) => l.protocol === 'tcp')) return undefined;
  let value: string;
  try {
    value = read().trim();
  } catch {
    return 'this kernel has no net.ipv4.tcp_migrate_req (Linux < 5.14): a worker that exits resets the connections waiting in its accept queue';
  }
  if (value !== '0') return undefined;
  return 'net.ipv4.tcp_migrate_req is 0: a worker that exits resets the connections waiting in its accept queue; set it to 1 (sysctl and /etc/sysctl.d) so the kernel hands them to the other workers';
}

/** Share of a host-wide limit for one of `n` workers: 0 (off) stays 0, otherwise at least 1. */
function share(limit: number, n: number): number {
  return limit === 0 ? 0 : Math.max(1, Math.ceil(limit / n));
}

/**
 * The config one of `n` workers runs: per-listener limits are the host's, so each worker
 * enforces its share of them. The kernel hashes connections over the workers, so the host-wide
 * totals hold approximately (a worker may refuse a little early when its share is used up while
 * another's is not; rounding up lets the total exceed the limit by at most n - 1).
 *
 * Cluster-scoped limits (`max_connections_scope`, `max_connections_per_backend_scope: cluster`)
 * count every process that shares the state store. With Redis each worker is a replica of its
 * own there, so they keep the whole limit and the workers take grants from it like any replica.
 * With the memory store each worker's store is its own: the host is the whole fleet, and each
 * worker takes its share as above (for a pool's cap too, which is otherwise per process).
 */
export function workerShare(cfg: Config, n: number): Config {
  if (n <= 1) return cfg;
  const split = (limit: number, scope: 'local' | 'cluster'): number =>
    scope === 'cluster' && cfg.state.store === 'redis' ? limit : share(limit, n);
  return {
    ...cfg,
    listeners: cfg.listeners.map((l) => ({
      ...l,
      limits: {
        ...l.limits,
        max_connections: split(l.limits.max_connections, l.limits.max_connections_scope),
        per_source_connections: share(l.limits.per_source_connections, n),
        per_source_rate: share(l.limits.per_source_rate, n),
      },
      udp: { ...l.udp, max_flows: share(l.udp.max_flows, n) },
    })),
    pools: cfg.pools.map((p) =>
      p.max_connections_per_backend_scope === 'cluster' && cfg.state.store === 'memory'
        ? { ...p, max_connections_per_backend: share(p.max_connections_per_backend, n) }
        : p,
    ),
  };
}

/**
 * Reads and checks the config file the workers will run (the primary reads it once for all of
 * them): its text and config, or the problems to report, each as one line.
 */
export async function readWorkerConfig(
  path: string,
): Promise<{ text: string; cfg: Config } | { errors: string[] }> {
  try {
    const text = await readConfigText(path);
    const cfg = parseConfigText(text);
    const problems = workerConfigProblems(cfg);
    if (problems.length > 0) throw new ConfigError(problems);
    return { text, cfg };
  } catch (err) {
    if (err instanceof ConfigError) return { errors: err.problems.map((p) => `${p.path}: ${p.message}`) };
    throw err;
  }
}
