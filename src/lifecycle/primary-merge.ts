import { AggregatorRegistry } from 'prom-client';
import type { Registry } from 'prom-client';
import type { BackendJson, ListenerJson, PoolJson } from '../admin/api.js';
import type { Sample } from '../telemetry/history.js';
import { isRecord } from './worker-protocol.js';

/**
 * How the primary folds its workers' answers into the host's view. Workers are our own
 * processes, but what crosses IPC is still parsed: a malformed answer is left out, not trusted.
 */

/** One worker's answer to `view`. */
export interface WorkerView {
  pools: PoolJson[];
  listeners: ListenerJson[];
  samples: Sample[];
  ready: boolean;
}

export function parseView(body: unknown): WorkerView | undefined {
  if (!isRecord(body)) return undefined;
  const { pools, listeners, samples, ready } = body;
  if (!Array.isArray(pools) || !Array.isArray(listeners) || !Array.isArray(samples)) return undefined;
  if (!pools.every((p) => isRecord(p) && typeof p.name === 'string' && Array.isArray(p.backends)))
    return undefined;
  if (!listeners.every((l) => isRecord(l) && typeof l.name === 'string' && typeof l.open === 'number'))
    return undefined;
  return {
    pools: pools as PoolJson[],
    listeners: listeners as ListenerJson[],
    samples: samples.filter(
      (s): s is Sample => isRecord(s) && typeof s.t === 'number' && typeof s.connections === 'number',
    ),
    ready: ready === true,
  };
}

export function parseBackend(body: unknown): BackendJson | undefined {
  return isRecord(body) && typeof body.address === 'string' && isRecord(body.connections)
    ? (body as unknown as BackendJson)
    : undefined;
}

const SEVERITY: Record<BackendJson['state'], number> = { up: 0, draining: 1, disabled: 2, down: 3 };

/**
 * Pools of the host: worker 1's view of each backend (health detail, weights), with local
 * connections summed over the workers and the most severe state any worker sees (each worker
 * runs its own health checks, so they can disagree for an interval). `cluster` counts: with the
 * memory store the host is the whole cluster (sum of locals); with a shared store every worker
 * already sees the cluster total, so their views are averaged.
 */
export function mergePools(views: readonly WorkerView[], sharedStore: boolean): PoolJson[] {
  const pools = new Map<string, PoolJson>();
  const seen = new Map<string, number>();
  for (const v of views)
    for (const p of v.pools) {
      let pool = pools.get(p.name);
      if (pool === undefined) {
        pool = { ...p, backends: [] };
        pools.set(p.name, pool);
      }
      // A pool is in panic on the host when it is in panic on any worker.
      pool.panic ||= p.panic === true;
      for (const b of p.backends) {
        const key = `${p.name}/${b.address}`;
        const mine = pool.backends.find((x) => x.address === b.address);
        seen.set(key, (seen.get(key) ?? 0) + 1);
        if (mine === undefined) {
          pool.backends.push({ ...b, connections: { ...b.connections } });
          continue;
        }
        mine.connections.local += b.connections.local;
        mine.connections.cluster += b.connections.cluster;
        if (SEVERITY[b.state] > SEVERITY[mine.state]) mine.state = b.state;
      }
    }
  for (const p of pools.values())
    for (const b of p.backends) {
      const n = seen.get(`${p.name}/${b.address}`) ?? 1;
      b.connections.cluster = sharedStore
        ? Math.round(b.connections.cluster / n)
        : Math.max(b.connections.local, b.connections.cluster);
    }
  return [...pools.values()];
}

/** Listeners of the host: open sessions and flows summed by listener name. */
export function mergeListeners(views: readonly WorkerView[]): ListenerJson[] {
  const out = new Map<string, ListenerJson>();
  for (const v of views)
    for (const l of v.listeners) {
      const mine = out.get(l.name);
      if (mine === undefined) out.set(l.name, { ...l });
      else mine.open += l.open;
    }
  return [...out.values()];
}

/**
 * History of the host: the workers' samples summed, aligned from the newest (they sample on the
 * same period, started within a second of each other). Only the span every worker covers.
 */
export function mergeSamples(views: readonly WorkerView[]): Sample[] {
  const first = views[0];
  if (first === undefined) return [];
  const len = Math.min(...views.map((v) => v.samples.length));
  const out: Sample[] = [];
  for (let i = 0; i < len; i++) {
    let connections = 0;
    let bytes = 0;
    for (const v of views) {
      const s = v.samples[v.samples.length - len + i];
      connections += s?.connections ?? 0;
      bytes += s?.bytes ?? 0;
    }
    const t = first.samples[first.samples.length - len + i]?.t ?? 0;
    out.push({ t, connections, bytes });
  }
  return out;
}

interface MetricJson {
  name: string;
  help?: string;
  type?: string;
  aggregator?: string;
  values: { labels: Record<string, string | number>; value: number }[];
}

function parseMetrics(body: unknown): MetricJson[] | undefined {
  if (!Array.isArray(body)) return undefined;
  const ok = body.every((m) => isRecord(m) && typeof m.name === 'string' && Array.isArray(m.values));
  return ok ? (body as MetricJson[]) : undefined;
}

/** One worker's answer to a question, with the worker's number (1-based). */
export interface WorkerAnswer {
  worker: number;
  body: unknown;
}

/**
 * Aggregators that differ from prom-client's default (sum). A backend is up for the host only
 * if every worker would send to it, and shows every state some worker sees it in; the store is up only if every worker reaches it; reloads
 * are counted once, by the primary (which owns `names`), not once per worker.
 */
const AGGREGATOR: Readonly<Record<string, string>> = {
  sluice_backend_up: 'min',
  sluice_backend_state: 'max',
  sluice_state_store_up: 'min',
};

/**
 * The host's metrics from every worker's `registry.getMetricsAsJSON()`: counters and gauges
 * summed (so sluice_listener_connections_total is the host's total), with the exceptions above,
 * plus each worker's own accepted count (sluice_worker_connections_total{worker,listener}).
 * Metrics named in `ownedByPrimary` are left out for the primary's registry to provide.
 */
export function aggregateMetrics(
  answers: readonly WorkerAnswer[],
  sharedStore: boolean,
  ownedByPrimary: ReadonlySet<string>,
): Registry {
  const arrays: MetricJson[][] = [];
  const perWorker: MetricJson = {
    name: 'sluice_worker_connections_total',
    help: 'Connections accepted, per worker process and listener (how evenly the kernel spreads them)',
    type: 'counter',
    aggregator: 'sum',
    values: [],
  };
  for (const { worker, body } of answers) {
    const metrics = parseMetrics(body);
    if (metrics === undefined) continue;
    const accepted = metrics.find((m) => m.name === 'sluice_listener_connections_total');
    for (const v of accepted?.values ?? [])
      perWorker.values.push({ labels: { ...v.labels, worker }, value: v.value });
    arrays.push(
      metrics
        .filter((m) => !ownedByPrimary.has(m.name))
        .map((m) => {
          const aggregator = AGGREGATOR[m.name] ?? m.aggregator;
          if (m.name !== 'sluice_backend_connections' || !sharedStore)
            return aggregator === undefined ? m : { ...m, aggregator };
          // scope="cluster" is each worker's estimate of the same total: sum the nth parts.
          const n = answers.length;
          return {
            ...m,
            values: m.values.map((v) => (v.labels.scope === 'cluster' ? { ...v, value: v.value / n } : v)),
          };
        }),
    );
  }
  arrays.push([perWorker]);
  return AggregatorRegistry.aggregate(arrays);
}

/** Worker answers to an admin action: the first backend view, with connections summed over all. */
export function mergeAdminAnswers(answers: readonly unknown[]): BackendJson | undefined {
  const found = answers.map(parseBackend).filter((b): b is BackendJson => b !== undefined);
  const first = found[0];
  if (first === undefined) return undefined;
  const sum = (f: (b: BackendJson) => number): number => found.reduce((n, b) => n + f(b), 0);
  return {
    ...first,
    connections: { local: sum((b) => b.connections.local), cluster: sum((b) => b.connections.cluster) },
  };
}

/** Worker answers to a reload (`indexes`: each answer's worker): how many refused, and why. */
export function reloadRefusals(
  answers: readonly unknown[],
  indexes: readonly number[],
): { refused: number; errors: string[] } {
  const errors: string[] = [];
  let refused = 0;
  answers.forEach((a, i) => {
    const ok = typeof a === 'object' && a !== null && 'ok' in a && a.ok === true;
    if (ok) return;
    refused++;
    const errs =
      typeof a === 'object' && a !== null && 'errors' in a && Array.isArray(a.errors)
        ? a.errors
        : ['no answer'];
    for (const e of errs) errors.push(`worker ${indexes[i] ?? '?'}: ${String(e)}`);
  });
  return { refused, errors };
}
