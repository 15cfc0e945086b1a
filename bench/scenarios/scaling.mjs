// 6. Scaling to two cores: sluice `workers: 2` against HAProxy `nbthread 2` (and nginx
// `worker_processes 2`), with the one-process numbers of the same session beside them. sluice's
// multi-worker mode is detected, not assumed: it is skipped, with the reason, when `workers: 2`
// fails to start, does not bind, or runs as a single process.
import {
  startHaproxy,
  startHttpBackend,
  startIperfServer,
  startNginxStream,
  startSluice,
} from '../lib/peers.mjs';
import { iperf, withCpu } from '../lib/load.mjs';
import { ERRORS, table } from '../lib/report.mjs';
import { sleep } from '../lib/sys.mjs';
import { measureConnRate } from './connrate.mjs';
import { cpuPer, measured, newSamples, rotate, startPeers, stopAll, warmUp } from './common.mjs';

export const boundable = true;
/** With --pin: CPUs 0-1 for each proxy (threads, workers), the load on the others (needs 3+). */
export const pinCpus = 2;
export const id = 'scaling';
export const title = 'Scaling to 2 cores (connection rate and 4-stream throughput)';
export const what =
  'Connection rate as in the connection-rate scenario, and iperf3 -P 4 as in the throughput scenario, with the proxies allowed two cores: HAProxy `nbthread 2`, nginx `worker_processes 2`, sluice `workers: 2`. On a 2-core machine the load generator and backend compete for the same cores, so expect well under 2×. "busiest worker %" = the share of a run\'s new connections taken by the worker that took most (50 % is an even spread; from `sluice_worker_connections_total`). "errors" = wrk and iperf3 errors, summed over all runs.';

const LABELS = [
  'haproxy 1 thread',
  'haproxy 2 threads',
  'nginx 2 workers',
  'sluice 1 process',
  'sluice workers: 2',
];

async function sluiceTwoWorkers(dir, routes) {
  const p = await startSluice(dir, routes, { workers: 2, name: 'sluice-workers2' });
  const n = p.processes();
  if (n < 2) {
    await p.stop();
    throw new Error(
      `skipped: \`workers: 2\` started and answered /readyz, but sluice runs as ${n} process (no worker processes under PID ${p.pid}), so it would measure one core`,
    );
  }
  // Each worker's accepted connections (the primary's sluice_worker_connections_total).
  p.workerCounts = async () => {
    const text = await (await fetch(`${p.admin}/metrics`)).text();
    const counts = [];
    for (const m of text.matchAll(
      /^sluice_worker_connections_total\{listener="http",worker="(\d+)"\} (\S+)$/gm,
    ))
      counts[Number(m[1]) - 1] = Number(m[2]);
    return counts;
  };
  return p;
}

export async function run({ dir, reps }) {
  const s = newSamples();
  const backend = await startHttpBackend(dir);
  const server = await startIperfServer(dir);
  const routes = [
    { name: 'http', upstreams: [backend.port.close] },
    { name: 'iperf', upstreams: [server.port.iperf] },
  ];
  const peers = await startPeers(s, [
    ['haproxy 1 thread', () => startHaproxy(dir, routes, { name: 'haproxy-t1' })],
    ['haproxy 2 threads', () => startHaproxy(dir, routes, { threads: 2, name: 'haproxy-t2' })],
    ['nginx 2 workers', () => startNginxStream(dir, routes, { workers: 2, name: 'nginx-w2' })],
    ['sluice 1 process', () => startSluice(dir, routes, { name: 'sluice-w1' })],
    ['sluice workers: 2', () => sluiceTwoWorkers(dir, routes)],
  ]);
  try {
    await warmUp(
      peers.map((p) => p.port.http),
      'close',
    );
    await sleep(1000);
    for (let rep = 0; rep < reps; rep++) {
      for (const p of rotate(peers, rep)) {
        await measureConnRate(s, rep, p.label, p.pid, p.port.http, p.workerCounts);
        await sleep(1000);
        const r = await withCpu(p.pid, () => iperf(p.port.iperf, { streams: 4 }));
        const values = { gbps: r.bps / 1e9, ...cpuPer('cpuGB', r.cpu, r.bytes / 1e9) };
        measured(s, rep, p.label, '-P 4', r, values, { gbps: values.gbps, cpu_s_per_GB: values.cpuGB });
        await sleep(500);
      }
    }
  } finally {
    await stopAll([...peers, backend, server]);
  }
  const metrics = [
    { key: 'cps', label: 'conn/s', digits: 0 },
    { key: 'cpu', label: 'CPU-ms/1k conn', digits: 1 },
    { key: 'share', label: 'busiest worker %', digits: 1 },
    { key: 'gbps', label: '-P4 Gbit/s' },
    { key: 'cpuGB', label: '-P4 CPU-s/GB' },
    ERRORS,
  ];
  const ratios = [
    { num: 'sluice workers: 2', den: 'haproxy 2 threads' },
    { num: 'sluice workers: 2', den: 'sluice 1 process' },
    { num: 'haproxy 2 threads', den: 'haproxy 1 thread' },
  ];
  return [table(s, LABELS, metrics, ratios)];
}
