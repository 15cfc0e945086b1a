// 5. UDP datagrams per second: a Node blaster (connected socket, 64-byte datagrams, batches of 64
// per setImmediate, 4 s) through the proxy to a Node sink that counts. Compared with nginx
// `stream { listen … udp; }`; HAProxy has no UDP proxying. sluice is skipped, with the reason,
// when it rejects a `protocol: udp` listener or forwards nothing through it.
import { direct, helper, startNginxStream, startSluice } from '../lib/peers.mjs';
import { withCpu } from '../lib/load.mjs';
import { ERRORS, table } from '../lib/report.mjs';
import { bound, freePort, sleep } from '../lib/sys.mjs';
import { cpuPer, measured, newSamples, rotate, startPeers, stopAll } from './common.mjs';

const SECONDS = 4;

export const id = 'udp';
export const title = 'UDP datagrams per second (64-byte datagrams)';
export const what = `A Node blaster (one connected socket, 64 B datagrams, batches of 64 per setImmediate, ${SECONDS} s) through the proxy to a Node sink that counts. kpps = datagrams received by the sink per second; "sent" = the blaster's rate; lost % = datagrams sent but not received (the blaster overdrives on purpose, so some are lost even without a proxy); CPU-s/M = proxy CPU per million datagrams received; "errors" = the blaster's failed sends, summed over all runs.`;

const LABELS = ['direct', 'nginx', 'sluice'];

/**
 * One blast through `port`: datagrams sent and received, and as errors the blaster's failed sends.
 * Datagrams sent but never received are loss, not errors: the blaster overdrives on purpose (even
 * without a proxy the sink misses some), and the figure is what the sink received.
 */
async function blast(sink, port, seconds) {
  sink.send('?');
  const { count: c0 } = await sink.next();
  const b = helper('blast.mjs', [port, seconds]);
  const r = await b.next((seconds + 10) * 1000);
  await b.stop();
  await sleep(300); // datagrams still in the proxy's buffers
  sink.send('?');
  const { count: c1 } = await sink.next();
  const received = c1 - c0;
  const why = r.errors ? `blaster: ${r.errors} sends failed (first: ${r.code})` : '';
  return {
    received,
    sent: r.sent,
    lost: Math.max(0, r.sent - received),
    seconds: r.seconds,
    errors: r.errors,
    why,
  };
}

/** The figures of one blast: rates in thousands of datagrams per second, loss in % of those sent. */
function figures(r) {
  return {
    kpps: r.received / r.seconds / 1000,
    sent: r.sent / r.seconds / 1000,
    lost: r.sent > 0 ? (100 * r.lost) / r.sent : undefined,
    ...cpuPer('cpu', r.cpu, r.received / 1e6),
  };
}

export async function run({ dir, reps }) {
  const s = newSamples();
  const sinkPort = await freePort();
  const sink = helper('sink.mjs', ['udp', sinkPort]);
  await sink.next(10000);
  const routes = [{ name: 'udp', proto: 'udp', upstreams: [sinkPort] }];
  const started = await startPeers(s, [
    ['direct', async () => direct(routes)],
    ['nginx', () => startNginxStream(dir, routes)],
    ['sluice', () => startSluice(dir, routes, { name: 'sluice-udp' })],
  ]);
  // A short probe first: a listener that binds but forwards nothing is not measured.
  const peers = [];
  for (const p of started) {
    const probe = await blast(sink, p.port.udp, 0.3);
    if (probe.received > 0) peers.push(p);
    else {
      const sockets = `UDP socket on 127.0.0.1:${p.port.udp}: ${bound('udp', p.port.udp) ? 'yes' : 'none'}; TCP listener on that port: ${bound('tcp', p.port.udp) ? 'yes' : 'none'}`;
      s.note(
        p.label,
        `skipped: started with a \`protocol: udp\` listener, but a 0.3 s probe sent ${probe.sent} datagrams to it and the sink received none (${sockets})`,
      );
      console.log(`  ${p.label}: ${s.noteOf(p.label)}`);
      await p.stop();
    }
  }
  try {
    for (let rep = 0; rep < reps; rep++) {
      for (const p of rotate(peers, rep)) {
        const r = await withCpu(p.pid, () => blast(sink, p.port.udp, SECONDS));
        const values = figures(r);
        measured(s, rep, p.label, 'udp', r, values, {
          kpps: values.kpps,
          sent_kpps: values.sent,
          lost: r.lost,
          lost_pct: values.lost,
          cpu_s_per_M: values.cpu,
        });
        await sleep(500);
      }
    }
  } finally {
    await stopAll([...peers, sink]);
  }
  const metrics = [
    { key: 'kpps', label: 'received kpps', digits: 1 },
    { key: 'sent', label: 'sent kpps', digits: 1 },
    { key: 'lost', label: 'lost %', digits: 1 },
    { key: 'cpu', label: 'CPU-s/M datagrams', digits: 2 },
    ERRORS,
  ];
  return [table(s, LABELS, metrics, [{ num: 'sluice', den: 'nginx' }])];
}
