// A backend that swallows everything: `sink.mjs tcp PORT` accepts and reads TCP connections,
// `sink.mjs udp PORT` counts datagrams. Prints {"port"} once listening; answers every stdin
// line with {"count", "conns"} (datagrams received so far, open TCP connections).
import dgram from 'node:dgram';
import net from 'node:net';
import readline from 'node:readline';

const [mode, portArg] = process.argv.slice(2);
const port = Number(portArg);
let count = 0;
let conns = 0;
const say = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);

if (mode === 'tcp') {
  const server = net.createServer((s) => {
    conns++;
    s.on('data', () => undefined);
    s.on('error', () => undefined);
    s.on('close', () => conns--);
  });
  server.listen({ host: '127.0.0.1', port, backlog: 4096 }, () => say({ port }));
} else {
  const sock = dgram.createSocket({ type: 'udp4', recvBufferSize: 8 << 20 });
  sock.on('message', () => count++);
  sock.bind(port, '127.0.0.1', () => say({ port }));
}

readline.createInterface({ input: process.stdin }).on('line', () => say({ count, conns }));
process.stdin.on('end', () => process.exit(0));
