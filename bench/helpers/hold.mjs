// Opens N idle connections to 127.0.0.1:PORT, 50 at a time, writing 5 bytes on each, then
// prints {"open", "failed"} and holds them until stdin closes or it is killed.
import net from 'node:net';

const [portArg, nArg] = process.argv.slice(2);
const port = Number(portArg);
const n = Number(nArg);
const sockets = [];
let failed = 0;

function open() {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.write('hello');
      sockets.push(s);
      resolve();
    });
    s.once('error', () => {
      failed++;
      resolve();
    });
  });
}

for (let i = 0; i < n; i += 50) {
  await Promise.all(Array.from({ length: Math.min(50, n - i) }, open));
}
// Let the last bytes travel through the proxy before anyone samples memory.
await new Promise((r) => setTimeout(r, 200));
process.stdout.write(`${JSON.stringify({ open: sockets.length, failed })}\n`);
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
