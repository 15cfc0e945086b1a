// UDP load: a connected socket sends 64-byte datagrams to 127.0.0.1:PORT in batches of 64 per
// setImmediate for SECONDS, then prints {"sent", "seconds", "errors", "code"}: sends that failed
// (ECONNREFUSED once nothing listens on the port, ENOBUFS, …) and the first failure's code.
import dgram from 'node:dgram';

const [portArg, secondsArg] = process.argv.slice(2);
const seconds = Number(secondsArg);
const payload = Buffer.alloc(64, 0x61);
const sock = dgram.createSocket({ type: 'udp4', sendBufferSize: 4 << 20 });
let sent = 0;
let errors = 0;
let code;
const done = (err) => {
  if (!err) return sent++;
  errors++;
  code ??= err.code;
};

sock.connect(Number(portArg), '127.0.0.1', () => {
  const start = performance.now();
  const end = start + seconds * 1000;
  const batch = () => {
    for (let i = 0; i < 64; i++) sock.send(payload, done);
    if (performance.now() < end) setImmediate(batch);
    else
      setTimeout(() => {
        process.stdout.write(
          `${JSON.stringify({ sent, errors, code, seconds: (performance.now() - start) / 1000 })}\n`,
        );
        sock.close();
      }, 100);
  };
  batch();
});
