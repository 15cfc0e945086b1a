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
import { ERRORS, table } from '../lib/report.mjs';
import { bound, freePort, sleep } from '../lib/sys.mjs';
import { cpuPer, measured, newSamples, rotate, startPeers, stopAll } from './common.mjs';

export const SECONDS = 4;
/** Offered loads of the zero-loss search, datagrams per second, and the length of each step. */
export const STEPS = [15_000, 30_000, 45_000, 60_000, 75_000, 90_000];
export const STEP_SECONDS = 2;

export const id = 'udp';
export const title = 'UDP datagrams per second (64-byte datagrams)';
export const what = `A Node blaster (one connected socket, 64 B datagrams) through the proxy to a Node sink that counts. Saturated: the blaster as fast as it can for ${SECONDS} s (batches of 64 per setImmediate); kpps = datagrams received by the sink per second; "sent" = the blaster's rate; lost % = datagrams sent but not received (the blaster overdrives on purpose, so some are lost even without a proxy). Zero-loss kpps: the highest of ${STEPS.map((r) => r / 1000).join(', ')} kpps offered (paced, ${STEP_SECONDS} s each, stepped up until a step loses a datagram twice) that arrived whole. CPU-s/M = proxy CPU per million datagrams received at saturation; "errors" = the blaster's failed sends, summed over all runs. node-dgram is the minimal Node forwarder (one listening socket, a connected socket per client); sluice-stream is sluice with \`relay: stream\`.`;

const LABELS = ['direct', 'nginx', 'sluice', 'node-dgram', 'sluice-stream'];

/**
 * One blast through `port`: datagrams sent and received, and as errors the blaster's failed sends.
 * Datagrams sent but never received are loss, not errors: the blaster overdrives on purpose (even
 * without a proxy the sink misses some), and the figure is what the sink received. `shape`:
 * blast.mjs's SHAPE (`quic`), or undefined for plain datagrams.
 */
export async function blast(sink, port, seconds, rate, shape) {
  sink.send('?');
  const { count: c0 } = await sink.next();
  const args = [port, seconds];
  if (rate !== undefined || shape !== undefined) args.push(rate ?? 0);
  if (shape !== undefined) args.push(shape);
  const b = helper('blast.mjs', args);
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

/**
 * The highest step delivered with no datagram lost and no send error; 0 when the first loses.
 * A step gets a second try: on two shared, noisy cores one stall of the proxy's process loses
 * datagrams at any rate, and that is not the rate it can carry.
 */
export async function zeroLossRate(sink, port, shape) {
  let best = 0;
  for (const rate of STEPS) {
    let clean;
    for (let attempt = 0; attempt < 2 && clean === undefined; attempt++) {
      const r = await blast(sink, port, STEP_SECONDS, rate, shape);
      if (r.lost === 0 && r.errors === 0) clean = r.received / r.seconds;
      await sleep(200);
    }
    if (clean === undefined) break;
    best = clean;
  }
  return best;
}

/** The figures of one blast: rates in thousands of datagrams per second, loss in % of those sent. */
export function figures(r) {
  return {
    kpps: r.received / r.seconds / 1000,
    sent: r.sent / r.seconds / 1000,
    lost: r.sent > 0 ? (100 * r.lost) / r.sent : undefined,
    ...cpuPer('cpu', r.cpu, r.received / 1e6),
  };
}

/** The columns of a UDP table: saturated and zero-loss rates, loss, CPU, errors. */
export const UDP_METRICS = [
  { key: 'kpps', label: 'received kpps, saturated', digits: 1 },
  { key: 'sent', label: 'sent kpps', digits: 1, ratio: false },
  { key: 'lost', label: 'lost %', digits: 1, ratio: false },
  { key: 'clean', label: 'zero-loss kpps', digits: 1 },
  { key: 'cpu', label: 'CPU-s/M datagrams', digits: 2 },
  ERRORS,
];

/**
 * One saturated run and one zero-loss search through peer `p`'s UDP port, recorded under its
 * label; `shape` as for blast(). Shared with the quic scenario.
 */
export async function measureUdp(s, rep, p, sink, shape = undefined) {
  const r = await withCpu(p.pid, () => blast(sink, p.port.udp, SECONDS, undefined, shape));
  await sleep(500);
  const values = { ...figures(r), clean: (await zeroLossRate(sink, p.port.udp, shape)) / 1000 };
  measured(s, rep, p.label, 'udp', r, values, {
    kpps: values.kpps,
    sent_kpps: values.sent,
    lost: r.lost,
    lost_pct: values.lost,
    zero_loss_kpps: values.clean,
    cpu_s_per_M: values.cpu,
  });
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
        await measureUdp(s, rep, p, sink);
        await sleep(500);
      }
    }
  } finally {
    await stopAll([...peers, sink]);
  }
  return [
    table(s, LABELS, UDP_METRICS, [
      { num: 'sluice', den: 'nginx' },
      { num: 'sluice-stream', den: 'node-dgram' },
    ]),
  ];
}
