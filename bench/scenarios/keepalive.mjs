// 3. Keep-alive requests per second and latency: wrk over 50 persistent connections, so the proxy
// only relays small request/response pairs. Primary metrics: req/s, p50/p99, CPU per request.
import { startHttpBackend } from '../lib/peers.mjs';
import { withCpu, wrk } from '../lib/load.mjs';
import { table } from '../lib/report.mjs';
import { sleep } from '../lib/sys.mjs';
import {
  newSamples,
  progress,
  rotate,
  startPeers,
  stopAll,
  warmUp,
  tcpPeers,
  TCP_ROWS,
  TCP_RATIOS,
} from './common.mjs';

export const id = 'keepalive';
export const title = 'Keep-alive requests per second and latency (wrk --latency)';
export const what =
  'wrk -t1 -c50 -d4s --latency through each proxy to nginx (`keepalive_timeout 120s; return 200 "ok";`). p50/p99 are wrk\'s per-request latency at 50 connections (they include queueing); p99 varies 2–3× between runs here. CPU-ms/1k req = proxy CPU per 1,000 requests.';

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
        if (r.error) {
          s.note(p.label, r.error);
          progress(rep, p.label, 'req/s', { error: r.error });
          continue;
        }
        const cpuPer1k = r.cpu === undefined ? undefined : (r.cpu * 1000) / (r.requests / 1000);
        s.add(p.label, 'rps', r.rps);
        s.add(p.label, 'p50', r.p50);
        s.add(p.label, 'p99', r.p99);
        s.add(p.label, 'cpu', cpuPer1k);
        s.add(p.label, 'err', r.errors + r.non2xx);
        progress(rep, p.label, 'req/s', {
          rps: r.rps,
          p50_ms: r.p50,
          p99_ms: r.p99,
          cpu_ms_per_1k: cpuPer1k,
          errors: r.errors,
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
    { key: 'err', label: 'errors', digits: 0 },
  ];
  return [table(s, TCP_ROWS, metrics, TCP_RATIOS)];
}
