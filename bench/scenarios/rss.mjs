// 4. Memory per idle proxied connection: a client opens N connections through the proxy to a sink
// (50 at a time, 5 bytes each); (ΔVmRSS)/N sampled 2 s after all are open. Each proxy is started
// fresh for each repetition, so a heap grown by an earlier round does not hide the cost.
import { helper, startHaproxy, startNginxStream, startSluice } from '../lib/peers.mjs';
import { ERRORS, table } from '../lib/report.mjs';
import { freePort, rssKiB, sleep } from '../lib/sys.mjs';
import { measured, newSamples, rotate, startPeers } from './common.mjs';

const N = 5000; // one proxied connection is 2 fds in the proxy; the fd limit is 20,000

export const id = 'rss';
export const title = `Memory per idle proxied connection (${N.toLocaleString('en-US')} connections)`;
export const what = `A Node client opens ${N} connections through the proxy to a Node sink (50 at a time, 5 bytes each) and holds them; KB/conn = (VmRSS 2 s after all are open − VmRSS before)/${N}, summed over the proxy's processes. Kernel socket buffers are not in VmRSS. Fresh proxy processes for every repetition. "errors" = connections the client could not open or hold plus held ones that never reached the sink, summed over all runs.`;

const LABELS = ['haproxy', 'nginx', 'sluice', 'sluice-stream'];

/**
 * The errors of one hold: connections the client does not hold (they failed or were closed) and
 * held ones that never reached the sink.
 */
function holdResult(opened, atSink) {
  const errors = N - opened.open + Math.max(0, opened.open - atSink);
  const why = `${opened.open} of ${N} connections held by the client (${opened.failed} failed), ${atSink} at the sink`;
  return { errors, why };
}

export async function run({ dir, reps }) {
  const s = newSamples();
  const sinkPort = await freePort();
  const sink = helper('sink.mjs', ['tcp', sinkPort]);
  await sink.next(10000);
  const routes = [{ name: 'sink', upstreams: [sinkPort] }];
  const starters = {
    haproxy: () => startHaproxy(dir, routes),
    nginx: () => startNginxStream(dir, routes),
    sluice: () => startSluice(dir, routes),
    'sluice-stream': () => startSluice(dir, routes, { relay: 'stream', name: 'sluice-stream' }),
  };
  try {
    for (let rep = 0; rep < reps; rep++) {
      for (const label of rotate(LABELS, rep)) {
        const [p] = await startPeers(s, [[label, starters[label]]]);
        if (!p) continue;
        try {
          await sleep(500);
          const before = rssKiB(p.pid);
          const hold = helper('hold.mjs', [p.port.sink, N]);
          const opened = await hold.next(120000);
          await sleep(2000);
          const after = rssKiB(p.pid);
          sink.send('?');
          const { conns } = await sink.next();
          await hold.stop();
          const kbPerConn = ((after - before) * 1024) / 1000 / opened.open;
          const result = holdResult(opened, conns);
          const values = { kb: kbPerConn, mb: after / 1024 };
          measured(s, rep, label, 'rss', result, values, {
            kb_per_conn: kbPerConn,
            rss_mb: after / 1024,
            open: opened.open,
            at_sink: conns,
          });
        } finally {
          await p.stop();
        }
        await sleep(2000); // let the sink see the closes before the next peer
      }
    }
  } finally {
    await sink.stop();
  }
  const metrics = [
    { key: 'kb', label: 'KB per proxied conn', digits: 1 },
    { key: 'mb', label: `RSS MB with ${N} conns`, digits: 1 },
    ERRORS,
  ];
  return [
    table(s, LABELS, metrics, [
      { num: 'sluice', den: 'haproxy' },
      { num: 'sluice', den: 'nginx' },
      { num: 'sluice-stream', den: 'haproxy' },
    ]),
  ];
}
