import net from 'node:net';
import { once } from 'node:events';

/** A TCP server on a loopback port 0 with its handler; `close` also destroys open sockets. */
export interface TestServer {
  readonly port: number;
  readonly host: string;
  readonly address: string;
  readonly sockets: Set<net.Socket>;
  accepted: number;
  close(): Promise<void>;
}

export async function startServer(
  onSocket: (s: net.Socket) => void,
  host = '127.0.0.1',
  opts: net.ServerOpts = { allowHalfOpen: true },
  port = 0,
): Promise<TestServer> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer(opts);
  const result: TestServer = {
    port: 0,
    host,
    address: '',
    sockets,
    accepted: 0,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
  server.on('connection', (s) => {
    result.accepted++;
    sockets.add(s);
    s.on('error', () => undefined);
    s.on('close', () => sockets.delete(s));
    onSocket(s);
  });
  server.listen(port, host);
  await once(server, 'listening');
  const a = server.address() as net.AddressInfo;
  return Object.assign(result, {
    port: a.port,
    address: host.includes(':') ? `[${host}]:${a.port}` : `${host}:${a.port}`,
  });
}

/** Echoes every byte and relays FIN (a half-close-aware echo). */
export function echoServer(host = '127.0.0.1'): Promise<TestServer> {
  return startServer((s) => s.pipe(s), host);
}

/** Replies with a fixed text then closes. */
export function nameServer(name: string, host = '127.0.0.1'): Promise<TestServer> {
  return startServer((s) => s.end(name), host);
}

/** A port with nothing listening (bound then closed). */
export async function closedPort(host = '127.0.0.1'): Promise<number> {
  const s = net.createServer();
  s.listen(0, host);
  await once(s, 'listening');
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

export async function connect(port: number, host = '127.0.0.1', localAddress?: string): Promise<net.Socket> {
  const s = net.connect({ port, host, allowHalfOpen: true, ...(localAddress ? { localAddress } : {}) });
  await once(s, 'connect');
  return s;
}

/** Reads everything until the peer's FIN (or close); resolves with the bytes. */
export function readAll(s: net.Socket): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('end', () => resolve(Buffer.concat(chunks)));
    s.on('close', () => resolve(Buffer.concat(chunks)));
    s.on('error', reject);
  });
}

/** Resolves once the socket is closed, whether by FIN or by reset, with the bytes read. */
export function untilClosed(s: net.Socket): Promise<{ data: Buffer; reset: boolean }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let reset = false;
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('error', () => (reset = true));
    s.on('close', () => resolve({ data: Buffer.concat(chunks), reset }));
    s.resume();
  });
}

/** Connects, half-closes at once and returns what the peer sends, or undefined when the connection fails. */
export async function answer(port: number, host = '127.0.0.1'): Promise<string | undefined> {
  try {
    const s = await connect(port, host);
    s.end();
    return (await readAll(s)).toString();
  } catch {
    return undefined;
  }
}

/** Sends `text`, half-closes, and returns the whole reply. */
export async function exchange(port: number, text: string | Buffer, host = '127.0.0.1'): Promise<string> {
  const s = await connect(port, host);
  const reply = readAll(s);
  s.end(text);
  return (await reply).toString();
}

/** Polls `fn` until it returns a truthy value, or throws after `timeoutMs`. */
export async function waitFor<T>(
  fn: () => T | Promise<T>,
  timeoutMs = 5000,
  what = 'condition',
): Promise<NonNullable<T>> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * Opens `n` client connections to `port` and keeps them open (the sessions stay counted); `defer`
 * (a test scope's) destroys them at the end of the test.
 */
export async function holdOpen(
  port: number,
  n: number,
  defer: (fn: () => Promise<void>) => void,
): Promise<net.Socket[]> {
  const out: net.Socket[] = [];
  for (let i = 0; i < n; i++) {
    const s = await connect(port);
    s.on('error', () => undefined);
    out.push(s);
  }
  defer(() => Promise.resolve(out.forEach((s) => s.destroy())));
  return out;
}
