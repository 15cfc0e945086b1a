// `npm start`: two small demo backends on 127.0.0.1:9001 and :9002, and sluice in front of them
// on 127.0.0.1:8080 (examples/demo.yaml). Try: `curl -s http://127.0.0.1:8080/` a few times, or
// `printf hi | nc -q1 127.0.0.1 8080`; the admin API and status page are on 127.0.0.1:9090.
import { spawn } from 'node:child_process';
import net from 'node:net';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));

function backend(name, port) {
  const server = net.createServer((socket) => {
    socket.on('error', () => {});
    // Answer HTTP requests and raw bytes alike, with the backend's name.
    socket.once('data', (first) => {
      const body = `hello from ${name} (you sent ${first.length} bytes)\n`;
      if (/^[A-Z]+ \S+ HTTP\/1\.[01]\r\n/.test(first.toString('latin1'))) {
        socket.end(
          `HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`,
        );
      } else {
        socket.end(body);
      }
    });
  });
  server.on('error', (err) => {
    console.error(`demo backend ${name}: ${err.message}`);
    process.exit(1);
  });
  server.listen(port, '127.0.0.1');
  return server;
}

const backends = [backend('backend-1', 9001), backend('backend-2', 9002)];
const sluice = spawn(process.execPath, [`${root}bin/sluice`, 'run', '-c', `${root}examples/demo.yaml`], {
  stdio: 'inherit',
});
console.error(
  'demo: backends on 127.0.0.1:9001 and :9002; sluice on 127.0.0.1:8080; status page http://127.0.0.1:9090/',
);

for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(signal, () => sluice.kill(signal));
sluice.on('exit', (code) => {
  for (const b of backends) b.close();
  process.exit(code ?? 0);
});
