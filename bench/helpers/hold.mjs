// Opens N idle connections to 127.0.0.1:PORT, 50 at a time, writing 5 bytes on each, then
// prints {"open", "failed"} (connections held right now; connections that hit an error, before or
// after connecting) and holds them until stdin closes or it is killed.
import net from 'node:net';

const [portArg, nArg] = process.argv.slice(2);
const port = Number(portArg);
const n = Number(nArg);
const sockets = new Set();
let failed = 0;

function open() {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.write('hello');
      sockets.add(s);
      resolve();
    });
    s.on('error', () => {
      failed++;
      resolve();
    });
    // A connection the proxy closes is no longer held, with or without an error.
    s.on('close', () => sockets.delete(s));
  });
}

for (let i = 0; i < n; i += 50) {
  await Promise.all(Array.from({ length: Math.min(50, n - i) }, open));
}
// Let the last bytes travel through the proxy before anyone samples memory.
await new Promise((r) => setTimeout(r, 200));
process.stdout.write(`${JSON.stringify({ open: sockets.size, failed })}\n`);
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
