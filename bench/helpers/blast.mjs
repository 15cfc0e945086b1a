// UDP load: a connected socket sends 64-byte datagrams to 127.0.0.1:PORT for SECONDS, then
// prints {"sent", "seconds", "errors", "code"}: sends that failed (ECONNREFUSED once nothing
// listens on the port, ENOBUFS, …) and the first failure's code. Without RATE (or with 0) it
// sends as fast as it can (batches of 64 per setImmediate); with RATE (datagrams per second) it
// paces itself. SHAPE `quic` makes the datagrams QUIC packets of one connection: a long header
// first (a v1 Initial's invariant fields, 8-octet connection IDs), then short headers.
import dgram from 'node:dgram';

const [portArg, secondsArg, rateArg, shape] = process.argv.slice(2);
const seconds = Number(secondsArg);
const rate = rateArg === undefined ? 0 : Number(rateArg);
const payload = Buffer.alloc(64, 0x61);
const dcid = Buffer.from('5c1d1ce0c0ffee00', 'hex');
if (shape === 'quic') {
  payload[0] = 0x40; // short header, then the DCID
  dcid.copy(payload, 1);
}
const first = Buffer.alloc(64, 0);
first.set([0xc0, 0, 0, 0, 1, dcid.length]);
dcid.copy(first, 6);
first.set([8, 1, 2, 3, 4, 5, 6, 7, 8], 6 + dcid.length);
let handed = 0;
const datagram = () => (shape === 'quic' && handed++ === 0 ? first : payload);
const sock = dgram.createSocket({ type: 'udp4', sendBufferSize: 4 << 20 });
let sent = 0;
let errors = 0;
let code;
const done = (err) => {
  if (!err) return sent++;
  errors++;
  code ??= err.code;
};

/** Datagrams to send now: a batch of 64, or what the pace allows by `now` (at most 64). */
function due(start, now, queued) {
  if (rate <= 0) return 64;
  return Math.min(64, Math.floor(((now - start) / 1000) * rate) - queued);
}

sock.connect(Number(portArg), '127.0.0.1', () => {
  const start = performance.now();
  const end = start + seconds * 1000;
  let queued = 0;
  const batch = () => {
    const now = performance.now();
    const n = due(start, now, queued);
    for (let i = 0; i < n; i++) sock.send(datagram(), done);
    queued += Math.max(0, n);
    if (now >= end) return finish(start);
    // Paced and ahead of schedule: sleep a millisecond rather than spin.
    if (rate > 0 && n <= 0) setTimeout(batch, 1);
    else setImmediate(batch);
  };
  batch();
});

function finish(start) {
  setTimeout(() => {
    process.stdout.write(
      `${JSON.stringify({ sent, errors, code, seconds: (performance.now() - start) / 1000 })}\n`,
    );
    sock.close();
  }, 100);
}
