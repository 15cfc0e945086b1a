// 5. UDP datagrams per second: a Node blaster (connected socket, 64-byte datagrams) through the
// proxy to a Node sink that counts. Compared with nginx `stream { listen … udp; }` (HAProxy has
// no UDP proxying), and sluice's `relay: stream` with the minimal Node dgram forwarder
// (bench/helpers/udp-forward.mjs), the yardstick for what Node itself allows. Two measures per
// peer and repetition: at saturation (the blaster as fast as it can for 4 s: what gets through,
// with the loss beside it) and the zero-loss rate (paced offered loads, stepped up until one
// loses a datagram). sluice is skipped, with the reason, when it rejects a `protocol: udp`
// listener or forwards nothing through it.
import { direct, helper, startNginxStream, startSluice, startUdpForwarder } from '../lib/peers.mjs';
import { withCpu } from '../lib/load.mjs';
import { table } from '../lib/report.mjs';
import { bound, freePort, sleep } from '../lib/sys.mjs';
import { newSamples, progress, rotate, startPeers, stopAll } from './common.mjs';

const SECONDS = 4;
/** Offered loads of the zero-loss search, datagrams per second, and the length of each step. */
const STEPS = [15_000, 30_000, 45_000, 60_000, 75_000, 90_000];
const STEP_SECONDS = 2;

export const id = 'udp';
export const title = 'UDP datagrams per second (64-byte datagrams)';
export const what = `A Node blaster (one connected socket, 64 B datagrams) through the proxy to a Node sink that counts. Saturated: the blaster as fast as it can for ${SECONDS} s (batches of 64 per setImmediate); received kpps = datagrams the sink counted per second, "lost" = the share of those sent that never arrived (any received kpps with loss or blaster errors is marked lossy). Zero-loss kpps: the highest of ${STEPS.map((r) => r / 1000).join(', ')} kpps offered (paced, ${STEP_SECONDS} s each, stepped up until a step loses a datagram twice) that arrived whole. CPU-s/M = proxy CPU per million datagrams received at saturation. node-dgram is the minimal Node forwarder (one listening socket, a connected socket per client); sluice-stream is sluice with \`relay: stream\`.`;

const LABELS = ['direct', 'nginx', 'sluice', 'node-dgram', 'sluice-stream'];

/** Sends for `seconds` (at `rate` datagrams/s, or flat out) and counts what the sink received. */
async function blast(sink, port, seconds, rate) {
  sink.send('?');
  const { count: c0 } = await sink.next();
  const b = helper('blast.mjs', rate === undefined ? [port, seconds] : [port, seconds, rate]);
  const r = await b.next((seconds + 10) * 1000);
  await b.stop();
  await sleep(300); // datagrams still in the proxy's buffers
  sink.send('?');
  const { count: c1 } = await sink.next();
  const received = c1 - c0;
  return {
    received,
    sent: r.sent,
    errors: r.errors,
    lost: Math.max(0, r.sent - received),
    seconds: r.seconds,
  };
}

/**
 * The highest step delivered with no datagram lost and no send error; 0 when the first loses.
 * A step gets a second try: on two shared, noisy cores one stall of the proxy's process loses
 * datagrams at any rate, and that is not the rate it can carry.
 */
async function zeroLossRate(sink, port) {
  let best = 0;
  for (const rate of STEPS) {
    let clean;
    for (let attempt = 0; attempt < 2 && clean === undefined; attempt++) {
      const r = await blast(sink, port, STEP_SECONDS, rate);
      if (r.lost === 0 && r.errors === 0) clean = r.received / r.seconds;
      await sleep(200);
    }
    if (clean === undefined) break;
    best = clean;
  }
  return best;
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
    ['node-dgram', () => startUdpForwarder(routes)],
    ['sluice-stream', () => startSluice(dir, routes, { name: 'sluice-stream-udp', relay: 'stream' })],
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
        const lostPct = r.sent > 0 ? (100 * r.lost) / r.sent : 0;
        const cpuPerM = r.cpu === undefined ? undefined : r.cpu / (r.received / 1e6);
        await sleep(500);
        const clean = (await zeroLossRate(sink, p.port.udp)) / 1000;
        s.add(p.label, 'kpps', kpps);
        s.add(p.label, 'sent', r.sent / r.seconds / 1000);
        s.add(p.label, 'lost', lostPct);
        s.add(p.label, 'errors', r.errors);
        s.add(p.label, 'clean', clean);
        s.add(p.label, 'cpu', cpuPerM);
        progress(rep, p.label, 'udp', {
          kpps,
          sent_kpps: r.sent / r.seconds / 1000,
          lost_pct: lostPct,
          errors: r.errors,
          zero_loss_kpps: clean,
          cpu_s_per_M: cpuPerM,
        });
        await sleep(500);
      }
    }
  } finally {
    await stopAll([...peers, sink]);
  }
  /** Saturated figures lose datagrams by construction; say so beside each one that did. */
  const lossy = (peer) =>
    s.values(peer, 'lost').some((x) => x > 0) || s.values(peer, 'errors').some((x) => x > 0);
  const metrics = [
    {
      key: 'kpps',
      label: 'received kpps, saturated',
      digits: 1,
      flag: (p) => (lossy(p) ? 'lossy' : undefined),
    },
    { key: 'sent', label: 'sent kpps', digits: 1, ratio: false },
    { key: 'lost', label: 'lost %', digits: 1, ratio: false },
    { key: 'errors', label: 'send errors', digits: 0, ratio: false },
    { key: 'clean', label: 'zero-loss kpps', digits: 1 },
    { key: 'cpu', label: 'CPU-s/M datagrams', digits: 2 },
  ];
  return [
    table(s, LABELS, metrics, [
      { num: 'sluice', den: 'nginx' },
      { num: 'sluice-stream', den: 'node-dgram' },
    ]),
  ];
}
