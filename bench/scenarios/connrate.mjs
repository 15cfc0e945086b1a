// 2. New connections per second: wrk with `Connection: close` against an nginx HTTP backend with
// keep-alive off, so every request is a new TCP connection through the proxy.
// Primary metric: proxy CPU milliseconds per 1,000 connections.
import { startHttpBackend, startSluice } from '../lib/peers.mjs';
import { withCpu, wrk } from '../lib/load.mjs';
import { ERRORS, table } from '../lib/report.mjs';
import { sleep } from '../lib/sys.mjs';
import {
  cpuPer,
  measured,
  newSamples,
  rotate,
  startPeers,
  stopAll,
  warmUp,
  tcpPeers,
  TCP_ROWS,
  TCP_RATIOS,
} from './common.mjs';

/** With --pin: the CPUs each proxy gets to itself. */
export const pinCpus = 1;
export const boundable = true;
export const id = 'connrate';
export const title = 'New connections per second (wrk, Connection: close)';
export const what = `wrk -t1 -c50 -d4s -H 'Connection: close' through each proxy to nginx (\`keepalive_timeout 0; return 200 "ok";\`); 1 s pause between runs for TIME_WAIT. CPU-ms/1k = proxy CPU per 1,000 connections. "errors" = wrk socket errors + non-2xx, summed over all runs. "sluice (access log)" runs \`log: {level: info, access_log: true}\` with stdout to a file.`;

const LABELS = [...TCP_ROWS, 'sluice (access log)'];

/**
 * One connection-rate run through `port`, recorded under `label`. Shared with other scenarios.
 * With `perWorker` (a function reading each worker's accepted-connection count), the run also
 * records the busiest worker's share of the connections it accepted during the run.
 */
export async function measureConnRate(s, rep, label, pid, port, perWorker = undefined) {
  const before = await perWorker?.();
  const r = await withCpu(pid, () => wrk(port, { close: true }));
  const after = await perWorker?.();
  // CPU-ms per 1,000 connections = CPU-s per 1,000,000.
  const values = { cps: r.rps, ...cpuPer('cpu', r.cpu, r.requests / 1e6) };
  if (before !== undefined && after !== undefined) {
    const took = after.map((n, i) => n - (before[i] ?? 0));
    const total = took.reduce((a, b) => a + b, 0);
    if (total > 0) values.share = (100 * Math.max(...took)) / total;
  }
  const shown = { cps: r.rps, cpu_ms_per_1k: values.cpu, busiest_worker_pct: values.share };
  measured(s, rep, label, 'conn/s', r, values, shown);
}

export async function run({ dir, reps }) {
  const s = newSamples();
  const backend = await startHttpBackend(dir);
  const routes = [{ name: 'http', upstreams: [backend.port.close] }];
  const peers = await startPeers(s, [
    ...tcpPeers(dir, routes),
    ['sluice (access log)', () => startSluice(dir, routes, { accessLog: true, name: 'sluice-accesslog' })],
  ]);
  try {
    await warmUp(
      peers.map((p) => p.port.http),
      'close',
    );
    await sleep(1000);
    for (let rep = 0; rep < reps; rep++) {
      for (const p of rotate(peers, rep)) {
        await measureConnRate(s, rep, p.label, p.pid, p.port.http);
        await sleep(1000);
      }
    }
  } finally {
    await stopAll([...peers, backend]);
  }
  const metrics = [
    { key: 'cps', label: 'conn/s', digits: 0 },
    { key: 'cpu', label: 'CPU-ms/1k conn', digits: 1 },
    ERRORS,
  ];
  const ratios = [...TCP_RATIOS, { num: 'sluice (access log)', den: 'sluice' }];
  return [table(s, LABELS, metrics, ratios)];
}
