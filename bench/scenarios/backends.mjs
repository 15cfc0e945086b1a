// 7. Cost as the work grows: sluice's connection rate with 10, 1,000 and 10,000 backends in one
// pool, for every balancing algorithm. Pick cost should be flat.
//
// Backends on loopback: one nginx HTTP backend listens on 10,000 distinct addresses
// 127.1.X.Y:PORT (each its own `listen` socket; Linux routes all of 127.0.0.0/8 to lo), so every
// backend in a pool is real and answers, without binding anything outside 127.0.0.0/8 and
// without connect failures or retries mixing into the numbers. Health checks are off.
import { startHttpBackend, startSluice } from '../lib/peers.mjs';
import { ERRORS, table } from '../lib/report.mjs';
import { freePort, sleep } from '../lib/sys.mjs';
import { measureConnRate } from './connrate.mjs';
import { newSamples, rotate, startPeers, stopAll, warmUp } from './common.mjs';

const SIZES = [10, 1000, 10000];
const ALGORITHMS = ['round-robin', 'least-connections', 'power-of-two', 'random', 'maglev', 'ring-hash'];

export const id = 'backends';
export const title = 'Cost as the pool grows (10 / 1,000 / 10,000 backends)';
export const what = `Connection rate (wrk -t1 -c50 -d4s, Connection: close) through a sluice process whose pool has N backends: 127.1.X.Y:PORT addresses that are all real listening sockets of one nginx HTTP backend. One sluice process per algorithm, with a pool of each size (the sizes interleave within a repetition); no health checks. The ratio rows compare each size with 10 backends: 1.00× is flat. "errors" = wrk socket errors + non-2xx, summed over all runs.`;

const address = (i, port) => `127.1.${Math.floor(i / 250)}.${(i % 250) + 1}:${port}`;
const label = (algo, n) => `${algo}, ${n.toLocaleString('en-US')}`;

export async function run({ dir, reps }) {
  const s = newSamples();
  const port = await freePort();
  const all = Array.from({ length: Math.max(...SIZES) }, (_, i) => address(i, port));
  const backend = await startHttpBackend(dir, { extra: all, name: 'http-many' });
  const labels = [];
  const started = [];
  try {
    for (const algorithm of ALGORITHMS) {
      const routes = SIZES.map((n) => ({
        name: `${algorithm}-${n}`,
        algorithm,
        upstreams: all.slice(0, n),
        label: label(algorithm, n),
      }));
      labels.push(...routes.map((r) => r.label));
      // One sluice process per algorithm (all of them in one would pass the 1 MiB config cap).
      const [p] = await startPeers(s, [
        [algorithm, () => startSluice(dir, routes, { name: `sluice-${algorithm}` })],
      ]);
      started.push([algorithm, p]);
      if (!p) continue;
      try {
        await warmUp(
          routes.map((r) => p.port[r.name]),
          'close',
        );
        await sleep(1000);
        for (let rep = 0; rep < reps; rep++) {
          for (const r of rotate(routes, rep)) {
            await measureConnRate(s, rep, r.label, p.pid, p.port[r.name]);
            await sleep(1000);
          }
        }
      } finally {
        await stopAll([p]);
      }
    }
  } finally {
    await stopAll([backend]);
  }
  const failed = started.filter(([, p]) => !p).map(([a]) => `${a}: ${s.noteOf(a)}`);
  const notes = failed.map((f) => `**Not measured:** sluice did not start for ${f}`);
  const metrics = [
    { key: 'cps', label: 'conn/s', digits: 0 },
    { key: 'cpu', label: 'CPU-ms/1k conn', digits: 1 },
    ERRORS,
  ];
  const ratios = [];
  for (const a of ALGORITHMS)
    for (const n of SIZES.slice(1)) ratios.push({ num: label(a, n), den: label(a, SIZES[0]) });
  return [...notes, table(s, labels, metrics, ratios, 'sluice pool (algorithm, backends)')];
}
