// Leaves COUNT sockets in TIME_WAIT: a server on 127.0.0.1:PORT closes every connection first
// (so TIME_WAIT lands on its side, as on a backend with keep-alive off), and clients connect to it
// 50 at a time from source addresses 127.0.0.10–127.0.0.249, so no one address runs out of
// ephemeral ports. Stops after COUNT connections or SECONDS, whichever comes first, and prints
// {"made", "failed", "seconds"}.
import net from 'node:net';

const [portArg, countArg, secondsArg] = process.argv.slice(2);
const port = Number(portArg);
const count = Number(countArg);
const deadline = performance.now() + Number(secondsArg) * 1000;
const SOURCES = 240;
const CONCURRENCY = 50;
let started = 0;
let made = 0;
let failed = 0;

const server = net.createServer((s) => {
  s.on('error', () => undefined);
  s.end();
});

/** One connection that the server closes; resolves when the client side has closed too. */
function once(i) {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port, localAddress: `127.0.0.${10 + (i % SOURCES)}` });
    s.on('error', () => failed++);
    s.on('end', () => made++);
    s.on('close', resolve);
  });
}

async function worker() {
  while (started < count && performance.now() < deadline) await once(started++);
}

const t0 = performance.now();
server.listen({ host: '127.0.0.1', port, backlog: 1024 }, async () => {
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  server.close();
  const seconds = (performance.now() - t0) / 1000;
  process.stdout.write(`${JSON.stringify({ made, failed, seconds })}\n`);
});
