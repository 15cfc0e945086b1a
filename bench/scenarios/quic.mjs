// 8. QUIC-aware UDP: the UDP scenario's blaster sending QUIC-shaped 64-byte datagrams (one
// connection: a long header first, short headers after) through sluice with `quic` on the
// listener, beside the same traffic through a plain UDP listener and nginx `stream` UDP in the
// same run. Routing by connection ID decides a flow's backend once, on the first datagram of a
// client address; what follows is the plain flow path, so the target is sluice's own plain rate.
import { helper, startNginxStream, startSluice } from '../lib/peers.mjs';
import { table } from '../lib/report.mjs';
import { freePort, sleep } from '../lib/sys.mjs';
import { newSamples, rotate, startPeers, stopAll } from './common.mjs';
import { SECONDS, STEPS, STEP_SECONDS, UDP_METRICS, measureUdp } from './udp.mjs';

export const id = 'quic';
export const title = 'QUIC-aware UDP: datagrams per second (64-byte QUIC packets)';
export const what = `The UDP scenario's blaster and sink, the blaster sending QUIC-shaped 64 B datagrams of one connection (a v1 long header first, then short headers with its 8-octet connection ID). sluice-quic: a UDP listener with \`quic: { enabled: true }\` (the flow routed by the connection ID's hash, maglev); sluice: the same listener without \`quic\`; nginx: \`stream { listen … udp; }\`; the -stream rows are sluice with \`relay: stream\`. Saturated: as fast as the blaster can for ${SECONDS} s; zero-loss: the highest of ${STEPS.map((r) => r / 1000).join(', ')} kpps offered (${STEP_SECONDS} s each) that arrived whole. CPU-s/M = proxy CPU per million datagrams received at saturation.`;

const LABELS = ['nginx', 'sluice', 'sluice-quic', 'sluice-stream', 'sluice-quic-stream'];
const SHAPE = 'quic';

export async function run({ dir, reps }) {
  const s = newSamples();
  const sinkPort = await freePort();
  const sink = helper('sink.mjs', ['udp', sinkPort]);
  await sink.next(10000);
  const plain = [{ name: 'udp', proto: 'udp', upstreams: [sinkPort], algorithm: 'maglev' }];
  const quic = [{ ...plain[0], quic: { enabled: true } }];
  const peers = await startPeers(s, [
    ['nginx', () => startNginxStream(dir, plain)],
    ['sluice', () => startSluice(dir, plain, { name: 'sluice-plain-udp' })],
    ['sluice-quic', () => startSluice(dir, quic, { name: 'sluice-quic' })],
    ['sluice-stream', () => startSluice(dir, plain, { name: 'sluice-plain-udp-stream', relay: 'stream' })],
    ['sluice-quic-stream', () => startSluice(dir, quic, { name: 'sluice-quic-stream', relay: 'stream' })],
  ]);
  try {
    for (let rep = 0; rep < reps; rep++) {
      for (const p of rotate(peers, rep)) {
        await measureUdp(s, rep, p, sink, SHAPE);
        await sleep(500);
      }
    }
  } finally {
    await stopAll([...peers, sink]);
  }
  return [
    table(s, LABELS, UDP_METRICS, [
      { num: 'sluice-quic', den: 'sluice' },
      { num: 'sluice-quic', den: 'nginx' },
      { num: 'sluice-quic-stream', den: 'sluice-stream' },
    ]),
  ];
}
