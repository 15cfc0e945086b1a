import { z } from 'zod';
import type { Config } from './schema.js';
import { configSchema } from './schema.js';
import { isPrime } from '../util/prime.js';
import { formatHostPort } from './values.js';
import { isIP } from 'node:net';
import { probeSettingsProblem } from './probe-settings.js';
import { isLoopbackHost } from '../util/cidr.js';
import { quicProblems } from './quic-check.js';

/** One problem in a config file, named by its key path, e.g. `listeners[0].bind`. */
export interface ConfigProblem {
  readonly path: string;
  readonly message: string;
}

export class ConfigError extends Error {
  readonly problems: readonly ConfigProblem[];
  constructor(problems: readonly ConfigProblem[]) {
    super(problems.map((p) => `${p.path}: ${p.message}`).join('\n'));
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else out += out === '' ? String(part) : `.${String(part)}`;
  }
  return out === '' ? '(root)' : out;
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  return typeof v;
}

function issueToProblems(issue: z.core.$ZodIssue, input: unknown): ConfigProblem[] {
  const at = (extra: PropertyKey[] = []): string => formatPath([...issue.path, ...extra]);
  switch (issue.code) {
    case 'unrecognized_keys':
      return issue.keys.map((k) => ({ path: at([k]), message: 'unknown key' }));
    case 'invalid_type': {
      const got = valueAt(input, issue.path);
      if (got === undefined) return [{ path: at(), message: `required (${issue.expected})` }];
      return [{ path: at(), message: `expected ${issue.expected}, got ${describe(got)}` }];
    }
    case 'invalid_value':
      return [
        { path: at(), message: `expected one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}` },
      ];
    case 'too_small':
      return [
        {
          path: at(),
          message:
            issue.origin === 'array'
              ? `needs at least ${issue.minimum as number} item(s)`
              : `must be >= ${issue.minimum as number}`,
        },
      ];
    case 'too_big':
      return [{ path: at(), message: `must be <= ${issue.maximum as number}` }];
    case 'invalid_union':
      return [{ path: at(), message: 'value of the wrong kind' }];
    default:
      return [{ path: at(), message: issue.message }];
  }
}

function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let cur: unknown = input;
  for (const p of path) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[p];
  }
  return cur;
}

function crossCheck(cfg: Config): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  const pools = new Set<string>();
  cfg.pools.forEach((p, i) => {
    if (pools.has(p.name))
      problems.push({ path: `pools[${i}].name`, message: `duplicate pool name "${p.name}"` });
    pools.add(p.name);
    if (p.backends.length === 0 && !p.discovery?.dns && !p.discovery?.registry)
      problems.push({ path: `pools[${i}].backends`, message: 'a pool needs backends or discovery' });
    const seen = new Set<string>();
    p.backends.forEach((b, j) => {
      const a = formatHostPort(b.address.host, b.address.port);
      if (seen.has(a))
        problems.push({ path: `pools[${i}].backends[${j}].address`, message: `duplicate backend ${a}` });
      seen.add(a);
    });
    if (p.algorithm === 'maglev' && !isPrime(p.maglev_table_size))
      problems.push({ path: `pools[${i}].maglev_table_size`, message: 'must be a prime number' });
    const h = p.health.active;
    if ((h.type === 'send-expect' || h.type === 'udp') && h.expect === undefined)
      problems.push({ path: `pools[${i}].health.active.expect`, message: `required for type ${h.type}` });
    if (h.type === 'send-expect' && h.send === undefined)
      problems.push({ path: `pools[${i}].health.active.send`, message: 'required for type send-expect' });
    if (h.timeout > h.interval)
      problems.push({ path: `pools[${i}].health.active.timeout`, message: 'must not exceed interval' });
    if (p.discovery?.dns && p.discovery.dns.type !== 'SRV' && p.discovery.dns.port === undefined)
      problems.push({ path: `pools[${i}].discovery.dns.port`, message: 'required unless type is SRV' });
    p.discovery?.dns?.servers?.forEach((sv, j) => {
      if (isIP(sv.host) === 0)
        problems.push({
          path: `pools[${i}].discovery.dns.servers[${j}]`,
          message: 'must be an IP address, not a name',
        });
    });
    const problem = probeSettingsProblem(h);
    if (problem !== undefined) problems.push({ path: `pools[${i}].health.active`, message: problem });
  });
  const listeners = new Set<string>();
  const binds = new Map<string, number>();
  cfg.listeners.forEach((l, i) => {
    if (listeners.has(l.name))
      problems.push({ path: `listeners[${i}].name`, message: `duplicate listener name "${l.name}"` });
    listeners.add(l.name);
    if (!pools.has(l.pool))
      problems.push({ path: `listeners[${i}].pool`, message: `no pool named "${l.pool}"` });
    l.tls?.routes.forEach((r, j) => {
      if (!pools.has(r.pool))
        problems.push({
          path: `listeners[${i}].tls.routes[${j}].pool`,
          message: `no pool named "${r.pool}"`,
        });
    });
    if (l.tls && l.protocol !== 'tcp')
      problems.push({ path: `listeners[${i}].tls`, message: 'only for tcp listeners' });
    if (l.protocol === 'udp' && l.limits.max_connections_scope === 'cluster')
      problems.push({
        path: `listeners[${i}].limits.max_connections_scope`,
        message: 'only for tcp listeners (udp.max_flows caps the flows of a udp listener)',
      });
    const pool = cfg.pools.find((p) => p.name === l.pool);
    if (l.protocol === 'udp' && pool?.proxy_protocol === 'v1')
      problems.push({
        path: `listeners[${i}].pool`,
        message: `pool "${l.pool}" sends PROXY v1, which has no UDP form; use v2`,
      });
    if (l.bind.port !== 0) {
      const key = `${l.protocol}/${formatHostPort(l.bind.host, l.bind.port)}`;
      const other = binds.get(key);
      if (other !== undefined)
        problems.push({ path: `listeners[${i}].bind`, message: `same address as listeners[${other}]` });
      binds.set(key, i);
    }
  });
  if (cfg.state.store === 'redis' && cfg.state.redis.sentinels && !cfg.state.redis.name)
    problems.push({ path: 'state.redis.name', message: 'required with sentinels' });
  // sluice makes the Cluster hash tags from the prefix ({prefix}, {prefix:pool:<pool>}): a brace
  // in it would make every key hash on part of the prefix, all pools in one slot.
  if (cfg.state.store === 'redis' && cfg.state.redis.nodes && /[{}]/.test(cfg.state.redis.key_prefix))
    problems.push({
      path: 'state.redis.key_prefix',
      message: 'must not contain { or } with nodes (sluice makes the Cluster hash tags itself)',
    });
  problems.push(...quicProblems(cfg));
  const admin = adminProblem(cfg.admin);
  if (admin !== undefined) problems.push(admin);
  return problems;
}

/**
 * The admin API drains backends and reloads the config: an address the network reaches needs
 * the bearer token, unless the operator says otherwise in so many words. Loopback needs none.
 */
function adminProblem(admin: Config['admin']): ConfigProblem | undefined {
  if (admin.token_file !== undefined || admin.allow_unauthenticated_remote) return undefined;
  if (isLoopbackHost(admin.listen.host)) return undefined;
  const where = formatHostPort(admin.listen.host, admin.listen.port);
  return {
    path: 'admin.listen',
    message: `${where} is not loopback: set admin.token_file (or admin.allow_unauthenticated_remote: true to serve it without a token)`,
  };
}

/**
 * What a valid config may not mean what its author expects: `sluice validate` prints these (exit
 * 0) and `sluice run` logs them at start and reload.
 */
export function configWarnings(cfg: Config): ConfigProblem[] {
  const warnings: ConfigProblem[] = [];
  const scoped = (path: string, max: number, what: string): void => {
    if (max === 0) warnings.push({ path, message: `cluster has no effect: ${what} is 0 (no limit)` });
    else if (cfg.state.store === 'memory')
      warnings.push({
        path,
        message:
          "cluster with state.store: memory: no other replica shares the count, so the limit is this host's (split over its workers)",
      });
  };
  cfg.listeners.forEach((l, i) => {
    if (l.protocol === 'tcp' && l.limits.max_connections_scope === 'cluster')
      scoped(`listeners[${i}].limits.max_connections_scope`, l.limits.max_connections, 'max_connections');
  });
  cfg.pools.forEach((p, i) => {
    if (p.max_connections_per_backend_scope === 'cluster')
      scoped(
        `pools[${i}].max_connections_per_backend_scope`,
        p.max_connections_per_backend,
        'max_connections_per_backend',
      );
  });
  return warnings;
}

/** Parses and checks a config object. Throws ConfigError listing every problem found. */
export function validateConfig(input: unknown): Config {
  if (input === null || typeof input !== 'object' || Array.isArray(input))
    throw new ConfigError([{ path: '(root)', message: 'expected a mapping' }]);
  const r = configSchema.safeParse(input);
  if (!r.success) throw new ConfigError(r.error.issues.flatMap((i) => issueToProblems(i, input)));
  const problems = crossCheck(r.data);
  if (problems.length > 0) throw new ConfigError(problems);
  applyUdpHealthDefault(r.data, input);
  return r.data;
}

/**
 * A pool that only UDP listeners use gets no active check unless one is configured: the default
 * TCP connect check means nothing to a UDP service (configure `type: udp` with send/expect).
 */
function applyUdpHealthDefault(cfg: Config, input: unknown): void {
  cfg.pools.forEach((p, i) => {
    const users = cfg.listeners.filter(
      (l) => l.pool === p.name || l.tls?.routes.some((r) => r.pool === p.name),
    );
    const udpOnly = users.length > 0 && users.every((l) => l.protocol === 'udp');
    if (udpOnly && valueAt(input, ['pools', i, 'health', 'active', 'type']) === undefined) {
      p.health.active.type = 'none';
    }
  });
}
