// 5. UDP datagrams per second: a Node blaster (connected socket, 64-byte datagrams, batches of 64
// per setImmediate, 4 s) through the proxy to a Node sink that counts. Compared with nginx
// `stream { listen … udp; }`; HAProxy has no UDP proxying. sluice is skipped, with the reason,
// when it rejects a `protocol: udp` listener or forwards nothing through it.
import { direct, helper, startNginxStream, startSluice } from '../lib/peers.mjs';
import { withCpu } from '../lib/load.mjs';
import { table } from '../lib/report.mjs';
import { bound, freePort, sleep } from '../lib/sys.mjs';
import { newSamples, progress, rotate, startPeers, stopAll } from './common.mjs';

const SECONDS = 4;

export const id = 'udp';
export const title = 'UDP datagrams per second (64-byte datagrams)';
export const what = `A Node blaster (one connected socket, 64 B datagrams, batches of 64 per setImmediate, ${SECONDS} s) through the proxy to a Node sink that counts. kpps = datagrams received by the sink per second; "sent" = the blaster's rate; CPU-s/M = proxy CPU per million datagrams received.`;

const LABELS = ['direct', 'nginx', 'sluice'];

async function blast(sink, port, seconds) {
  sink.send('?');
  const { count: c0 } = await sink.next();
  const b = helper('blast.mjs', [port, seconds]);
  const r = await b.next((seconds + 10) * 1000);
  await b.stop();
  await sleep(300); // datagrams still in the proxy's buffers
  sink.send('?');
  const { count: c1 } = await sink.next();
  return { received: c1 - c0, sent: r.sent, seconds: r.seconds };
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
        const kpps = r.received / r.seconds / 1000;
        const cpuPerM = r.cpu === undefined ? undefined : r.cpu / (r.received / 1e6);
        s.add(p.label, 'kpps', kpps);
        s.add(p.label, 'sent', r.sent / r.seconds / 1000);
        s.add(p.label, 'cpu', cpuPerM);
        progress(rep, p.label, 'udp', { kpps, sent_kpps: r.sent / r.seconds / 1000, cpu_s_per_M: cpuPerM });
        await sleep(500);
      }
    }
  } finally {
    await stopAll([...peers, sink]);
  }
  const metrics = [
    { key: 'kpps', label: 'received kpps', digits: 1 },
    { key: 'sent', label: 'sent kpps', digits: 1 },
    { key: 'cpu', label: 'CPU-s/M datagrams', digits: 2 },
  ];
  return [table(s, LABELS, metrics, [{ num: 'sluice', den: 'nginx' }])];
}
