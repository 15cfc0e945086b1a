// 3. Keep-alive requests per second and latency: wrk over 50 persistent connections, so the proxy
// only relays small request/response pairs. Primary metrics: req/s, p50/p99, CPU per request.
import { startHttpBackend } from '../lib/peers.mjs';
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
export const id = 'keepalive';
export const title = 'Keep-alive requests per second and latency (wrk --latency)';
export const what =
  'wrk -t1 -c50 -d4s --latency through each proxy to nginx (`keepalive_timeout 120s; return 200 "ok";`). p50/p99 are wrk\'s per-request latency at 50 connections (they include queueing); p99 varies 2–3× between runs here. CPU-ms/1k req = proxy CPU per 1,000 requests. "errors" = wrk socket errors + non-2xx, summed over all runs.';

export async function run({ dir, reps }) {
  const s = newSamples();
  const backend = await startHttpBackend(dir);
  const routes = [{ name: 'http', upstreams: [backend.port.keepalive] }];
  const peers = await startPeers(s, tcpPeers(dir, routes));
  try {
    await warmUp(
      peers.map((p) => p.port.http),
      'keepalive',
    );
    for (let rep = 0; rep < reps; rep++) {
      for (const p of rotate(peers, rep)) {
        const r = await withCpu(p.pid, () => wrk(p.port.http));
        // CPU-ms per 1,000 requests = CPU-s per 1,000,000.
        const values = { rps: r.rps, p50: r.p50, p99: r.p99, ...cpuPer('cpu', r.cpu, r.requests / 1e6) };
        measured(s, rep, p.label, 'req/s', r, values, {
          rps: r.rps,
          p50_ms: r.p50,
          p99_ms: r.p99,
          cpu_ms_per_1k: values.cpu,
        });
        await sleep(500);
      }
    }
  } finally {
    await stopAll([...peers, backend]);
  }
  const metrics = [
    { key: 'rps', label: 'req/s', digits: 0 },
    { key: 'p50', label: 'p50 ms', digits: 2 },
    { key: 'p99', label: 'p99 ms', digits: 2 },
    { key: 'cpu', label: 'CPU-ms/1k req', digits: 2 },
    ERRORS,
  ];
  return [table(s, TCP_ROWS, metrics, TCP_RATIOS)];
}
