import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { createSocket } from 'node:dgram';
import type { Socket as UdpSocket } from 'node:dgram';
import { readdirSync } from 'node:fs';
import { createServer } from 'node:net';
import type { AddressInfo, Server, Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import type { ActiveHealthConfig } from '../../src/config/schema.js';
import { compileExpect, decodeEscapes } from '../../src/config/probe-settings.js';
import {
  REPLY_CAP,
  classifyError,
  createProbe,
  parseStatusLine,
  statusMatches,
} from '../../src/health/probe.js';
import type { Probe, ProbeFailure, ProbeOptions, ProbeResult, ProbeTarget } from '../../src/health/probe.js';

/** Probe timeout: outcomes are asserted, never durations. */
const TIMEOUT = 200;

function config(overrides: Partial<ActiveHealthConfig>): ActiveHealthConfig {
  return {
    type: 'tcp',
    interval: 2000,
    timeout: TIMEOUT,
    rise: 2,
    fall: 3,
    jitter: 10,
    path: '/',
    expect_status: '2xx',
    ...overrides,
  };
}

function probeOf(overrides: Partial<ActiveHealthConfig>, options: ProbeOptions = {}): Probe {
  const built = createProbe(config(overrides), options);
  if (!built.ok) throw new Error(built.error);
  if (!built.value) throw new Error('no probe');
  return built.value;
}

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

interface TcpBackend {
  port: number;
  /** Bytes each accepted connection sent, in order of acceptance. */
  received: Buffer[];
  sockets: Set<Socket>;
}

/** A TCP backend on host:0; `onConnection` decides how it behaves. */
async function tcpBackend(host: string, onConnection: (s: Socket) => void = () => {}): Promise<TcpBackend> {
  const received: Buffer[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((s) => {
    sockets.add(s);
    const index = received.push(Buffer.alloc(0)) - 1;
    s.on('error', () => {});
    s.on('close', () => sockets.delete(s));
    s.on('data', (d: Buffer) => (received[index] = Buffer.concat([received[index] ?? Buffer.alloc(0), d])));
    onConnection(s);
  });
  server.on('error', () => {});
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  cleanups.push(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return { port: (server.address() as AddressInfo).port, received, sockets };
}

/** A port with nothing listening (a listener opened and closed). */
async function closedTcpPort(host: string): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  const port = (server.address() as AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** A UDP backend; `reply` answers each datagram (undefined: stay silent). */
async function udpBackend(host: string, reply: (msg: Buffer) => Buffer | undefined): Promise<number> {
  const socket: UdpSocket = createSocket(host.includes(':') ? 'udp6' : 'udp4');
  socket.on('error', () => {});
  socket.on('message', (msg, from) => {
    const out = reply(msg);
    if (out) socket.send(out, from.port, from.address);
  });
  await new Promise<void>((resolve) => socket.bind(0, host, resolve));
  cleanups.push(() => new Promise<void>((resolve) => socket.close(() => resolve())));
  return socket.address().port;
}

async function closedUdpPort(host: string): Promise<number> {
  const socket = createSocket(host.includes(':') ? 'udp6' : 'udp4');
  await new Promise<void>((resolve) => socket.bind(0, host, resolve));
  const port = socket.address().port;
  await new Promise<void>((resolve) => socket.close(() => resolve()));
  return port;
}

const PASS: ProbeResult = { ok: true };
const failed = (reason: ProbeFailure): ProbeResult => ({ ok: false, reason });
const HTTP_OK = 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok';

describe.each(['127.0.0.1', '::1'])('probes on %s', (host) => {
  const at = (port: number): ProbeTarget => ({ host, port });

  describe('tcp', () => {
    it('passes when the backend accepts', async () => {
      const b = await tcpBackend(host);
      expect(await probeOf({})(at(b.port))).toEqual(PASS);
    });

    it('fails with refused when nothing listens', async () => {
      expect(await probeOf({})(at(await closedTcpPort(host)))).toEqual(failed('refused'));
    });

    it('writes the preamble first and whole', async () => {
      const b = await tcpBackend(host);
      const preamble = Buffer.from('PROXY UNKNOWN\r\n');
      expect(await probeOf({}, { preamble })(at(b.port))).toEqual(PASS);
      await expect.poll(() => b.received[0]?.toString()).toBe('PROXY UNKNOWN\r\n');
    });

    it('uses the configured port instead of the backend port', async () => {
      const b = await tcpBackend(host);
      const closed = await closedTcpPort(host);
      expect(await probeOf({ port: b.port })(at(closed))).toEqual(PASS);
    });
  });

  describe('send-expect', () => {
    const pingPong = (s: Socket): void => {
      s.on('data', (d: Buffer) => {
        if (d.toString().includes('PING\r\n')) s.write('+PONG\r\n');
      });
    };

    it('passes on a substring match', async () => {
      const b = await tcpBackend(host, pingPong);
      const probe = probeOf({ type: 'send-expect', send: 'PING\\r\\n', expect: '+PONG' });
      expect(await probe(at(b.port))).toEqual(PASS);
    });

    it('passes on a regex match', async () => {
      const b = await tcpBackend(host, pingPong);
      const probe = probeOf({ type: 'send-expect', send: 'PING\\r\\n', expect: '/^\\+pong\\r$/im' });
      expect(await probe(at(b.port))).toEqual(PASS);
    });

    it('passes when the reply arrives in pieces', async () => {
      const b = await tcpBackend(host, (s) => {
        s.write('+PO');
        setTimeout(() => s.write('NG\r\n'), 30);
      });
      expect(await probeOf({ type: 'send-expect', expect: '+PONG' })(at(b.port))).toEqual(PASS);
    });

    it('sends the preamble, then the send bytes', async () => {
      const b = await tcpBackend(host, pingPong);
      const preamble = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00]);
      const probe = probeOf({ type: 'send-expect', send: 'PING\\r\\n', expect: 'PONG' }, { preamble });
      expect(await probe(at(b.port))).toEqual(PASS);
      expect(b.received[0]).toEqual(Buffer.concat([preamble, Buffer.from('PING\r\n')]));
    });

    it('fails with unexpected_reply on a wrong reply and close', async () => {
      const b = await tcpBackend(host, (s) => s.end('-ERR\r\n'));
      expect(await probeOf({ type: 'send-expect', expect: '+PONG' })(at(b.port))).toEqual(
        failed('unexpected_reply'),
      );
    });

    it('fails with unexpected_reply on a wrong reply held open', async () => {
      const b = await tcpBackend(host, (s) => s.write('-ERR\r\n'));
      expect(await probeOf({ type: 'send-expect', expect: '+PONG' })(at(b.port))).toEqual(
        failed('unexpected_reply'),
      );
    });

    it('fails with unexpected_reply once the reply cap is read without a match', async () => {
      const b = await tcpBackend(host, (s) => s.write(Buffer.alloc(REPLY_CAP + 1024, 'a')));
      const probe = probeOf({ type: 'send-expect', expect: 'b', timeout: 5000 });
      expect(await probe(at(b.port))).toEqual(failed('unexpected_reply'));
    });

    it('fails with timeout when the backend never answers', async () => {
      const b = await tcpBackend(host);
      expect(await probeOf({ type: 'send-expect', send: 'PING', expect: 'PONG' })(at(b.port))).toEqual(
        failed('timeout'),
      );
    });

    it('fails with closed when the backend closes without a byte', async () => {
      const b = await tcpBackend(host, (s) => s.end());
      expect(await probeOf({ type: 'send-expect', expect: 'x' })(at(b.port))).toEqual(failed('closed'));
    });

    it('fails with reset when the backend resets', async () => {
      const b = await tcpBackend(host, (s) => s.resetAndDestroy());
      expect(await probeOf({ type: 'send-expect', expect: 'x' })(at(b.port))).toEqual(failed('reset'));
    });
  });

  describe('http', () => {
    const answer = (text: string) => (s: Socket) => {
      s.on('data', (d: Buffer) => {
        if (d.includes('\r\n\r\n')) s.end(text);
      });
    };

    it('passes on a 2xx and sends a well-formed request', async () => {
      const b = await tcpBackend(host, answer(HTTP_OK));
      expect(await probeOf({ type: 'http', path: '/healthz' })(at(b.port))).toEqual(PASS);
      const head = b.received[0]?.toString('latin1') ?? '';
      const hostHeader = host.includes(':') ? `[${host}]:${b.port}` : `${host}:${b.port}`;
      expect(head.split('\r\n')).toEqual([
        'GET /healthz HTTP/1.1',
        `Host: ${hostHeader}`,
        'Connection: close',
        'User-Agent: sluice-health',
        'Accept: */*',
        '',
        '',
      ]);
    });

    it('uses the configured Host', async () => {
      const b = await tcpBackend(host, answer(HTTP_OK));
      expect(await probeOf({ type: 'http', host: 'app.internal' })(at(b.port))).toEqual(PASS);
      expect(b.received[0]?.toString()).toContain('\r\nHost: app.internal\r\n');
    });

    it('fails with bad_status on a status outside the class', async () => {
      const b = await tcpBackend(host, answer('HTTP/1.1 503 Service Unavailable\r\n\r\n'));
      expect(await probeOf({ type: 'http' })(at(b.port))).toEqual(failed('bad_status'));
    });

    it('matches an exact expect_status', async () => {
      const b = await tcpBackend(host, answer('HTTP/1.0 204\r\n\r\n'));
      expect(await probeOf({ type: 'http', expect_status: 204 })(at(b.port))).toEqual(PASS);
      expect(await probeOf({ type: 'http', expect_status: 200 })(at(b.port))).toEqual(failed('bad_status'));
    });

    it('fails with unexpected_reply on a reply that is not HTTP', async () => {
      const b = await tcpBackend(host, answer('SSH-2.0-OpenSSH\r\n'));
      expect(await probeOf({ type: 'http' })(at(b.port))).toEqual(failed('unexpected_reply'));
    });

    it('fails with timeout when the backend never answers', async () => {
      const b = await tcpBackend(host);
      expect(await probeOf({ type: 'http' })(at(b.port))).toEqual(failed('timeout'));
    });

    it('fails with refused when nothing listens', async () => {
      expect(await probeOf({ type: 'http' })(at(await closedTcpPort(host)))).toEqual(failed('refused'));
    });
  });

  describe('udp', () => {
    it('passes on a matching reply', async () => {
      const port = await udpBackend(host, (m) => (m.toString() === 'ping' ? Buffer.from('pong') : undefined));
      expect(await probeOf({ type: 'udp', send: 'ping', expect: 'pong' })(at(port))).toEqual(PASS);
    });

    it('passes on any reply without expect, sending an empty datagram by default', async () => {
      const seen: Buffer[] = [];
      const port = await udpBackend(host, (m) => {
        seen.push(m);
        return Buffer.from('x');
      });
      expect(await probeOf({ type: 'udp' })(at(port))).toEqual(PASS);
      expect(seen).toEqual([Buffer.alloc(0)]);
    });

    it('fails with unexpected_reply on a wrong reply', async () => {
      const port = await udpBackend(host, () => Buffer.from('nope'));
      expect(await probeOf({ type: 'udp', send: 'ping', expect: '/^pong$/' })(at(port))).toEqual(
        failed('unexpected_reply'),
      );
    });

    it('fails with refused on ICMP port unreachable', async () => {
      expect(await probeOf({ type: 'udp', send: 'ping' })(at(await closedUdpPort(host)))).toEqual(
        failed('refused'),
      );
    });

    it('fails with timeout when the backend stays silent', async () => {
      const port = await udpBackend(host, () => undefined);
      expect(await probeOf({ type: 'udp', send: 'ping' })(at(port))).toEqual(failed('timeout'));
    });
  });
});

describe('probe parsing helpers', () => {
  it('decodes escapes and rejects unknown ones', () => {
    const r = decodeEscapes('a\\r\\n\\t\\\\\\x00\\xfFé');
    expect(r).toEqual({ ok: true, value: Buffer.from([0x61, 13, 10, 9, 0x5c, 0, 0xff, 0xc3, 0xa9]) });
    expect(decodeEscapes('\\q').ok).toBe(false);
    expect(decodeEscapes('\\x4').ok).toBe(false);
    expect(decodeEscapes('trailing\\').ok).toBe(false);
  });

  it('compiles expect as regex, substring or any reply', () => {
    const run = (expect: string | undefined, reply: Buffer): boolean => {
      const m = compileExpect(expect);
      if (!m.ok) throw new Error(m.error);
      return m.value(reply);
    };
    expect(run('/^\\+OK/', Buffer.from('+OK ready'))).toBe(true);
    expect(run('/\\xff\\x00/', Buffer.from([1, 0xff, 0]))).toBe(true);
    expect(run('\\x00\\x01', Buffer.from([9, 0, 1]))).toBe(true);
    expect(run('/usr/bin', Buffer.from('at /usr/bin/x'))).toBe(true);
    expect(run(undefined, Buffer.alloc(0))).toBe(false);
    expect(run(undefined, Buffer.from('x'))).toBe(true);
    expect(compileExpect('/(/').ok).toBe(false);
    expect(compileExpect('/a/g').ok).toBe(false);
  });

  it('parses HTTP status lines incrementally', () => {
    expect(parseStatusLine(Buffer.from('HTTP/1.1 200 OK\r\n'))).toBe(200);
    expect(parseStatusLine(Buffer.from('HTTP/1.0 404\r\n'))).toBe(404);
    expect(parseStatusLine(Buffer.from('HTTP/1.1 20'))).toBe('need-more');
    expect(parseStatusLine(Buffer.from('HTTP/2 200\r\n'))).toBe('invalid');
    expect(parseStatusLine(Buffer.from('HTTP/1.1 999 x\r\n'))).toBe('invalid');
    expect(parseStatusLine(Buffer.alloc(5000, 'a'))).toBe('invalid');
  });

  it('matches status classes and exact codes', () => {
    expect(statusMatches(204, '2xx')).toBe(true);
    expect(statusMatches(302, '2xx')).toBe(false);
    expect(statusMatches(503, 503)).toBe(true);
  });

  it('classifies errors by code only', () => {
    expect(classifyError(Object.assign(new Error('x'), { code: 'ECONNREFUSED' }))).toBe('refused');
    expect(classifyError(Object.assign(new Error('x'), { code: 'EHOSTUNREACH' }))).toBe('unreachable');
    expect(classifyError(new Error('connect ECONNREFUSED'))).toBe('error');
  });

  it('rejects unsafe config and builds nothing for type none', () => {
    expect(createProbe(config({ type: 'http', path: '/a b' })).ok).toBe(false);
    expect(createProbe(config({ type: 'http', host: 'a\r\nX: y' })).ok).toBe(false);
    expect(createProbe(config({ type: 'send-expect', send: '\\z' })).ok).toBe(false);
    expect(createProbe(config({ type: 'udp', expect: '/[/' })).ok).toBe(false);
    expect(createProbe(config({ type: 'none' }))).toEqual({ ok: true, value: undefined });
  });

  it('resolves (never rejects) on a bad port', async () => {
    for (const type of ['tcp', 'udp'] as const) {
      const r = await probeOf({ type })({ host: '127.0.0.1', port: 70000 });
      expect(r.ok).toBe(false);
    }
  });
});

function openDescriptors(): number {
  return readdirSync('/proc/self/fd').length;
}

/** A listener with a one-slot backlog in a stopped process: its accept queue fills, then SYNs are dropped. */
async function stoppedListener(): Promise<{ port: number; child: ChildProcess }> {
  const script =
    "const s=require('net').createServer();" +
    "s.listen({port:0,host:'127.0.0.1',backlog:1},()=>console.log(s.address().port))";
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'ignore'] });
  const port = await new Promise<number>((resolve, reject) => {
    child.once('error', reject);
    child.stdout?.once('data', (d: Buffer) => resolve(Number(d.toString().trim())));
  });
  if (child.pid === undefined) throw new Error('no child pid');
  process.kill(child.pid, 'SIGSTOP');
  cleanups.push(async () => {
    const exited = new Promise((resolve) => child.once('exit', resolve));
    if (child.pid !== undefined) process.kill(child.pid, 'SIGKILL');
    await exited;
  });
  return { port, child };
}

describe('descriptor hygiene', () => {
  it('1,000 probes on every path leave no open descriptor', async () => {
    const host = '127.0.0.1';
    const hold = await tcpBackend(host);
    const stopped = await stoppedListener();
    const refusedTcp = await closedTcpPort(host);
    const silentUdp = await udpBackend(host, () => undefined);
    const refusedUdp = await closedUdpPort(host);
    const short = { timeout: 100 };
    const cases: [Probe, number, ProbeResult['ok'] | 'any'][] = [
      [probeOf({ ...short, type: 'send-expect', send: 'PING', expect: 'PONG' }), hold.port, false],
      [probeOf({ ...short, type: 'http' }), hold.port, false],
      [probeOf({ ...short }), hold.port, true],
      [probeOf({ ...short }, { preamble: Buffer.from('PROXY UNKNOWN\r\n') }), hold.port, true],
      [probeOf({ ...short, type: 'send-expect', expect: 'x' }), stopped.port, false],
      [probeOf({ ...short }), stopped.port, 'any'],
      [probeOf({ ...short }), refusedTcp, false],
      [probeOf({ ...short, type: 'udp' }), silentUdp, false],
      [probeOf({ ...short, type: 'udp' }), refusedUdp, false],
    ];
    const round = async (n: number): Promise<void> => {
      const results = await Promise.all(
        Array.from({ length: n }, async (_, i) => {
          const c = cases[i % cases.length];
          if (!c) return false;
          const [probe, port, want] = c;
          const r = await probe({ host, port });
          return want === 'any' || r.ok === want;
        }),
      );
      expect(results.every(Boolean)).toBe(true);
    };
    // Warm up once so lazily opened runtime descriptors are in the baseline.
    await round(cases.length);
    for (const s of hold.sockets) s.destroy();
    await expect.poll(() => hold.sockets.size).toBe(0);
    const before = openDescriptors();
    for (let i = 0; i < 10; i++) await round(100);
    // Our own backend's accepted sockets are not the probes' to close.
    for (const s of hold.sockets) s.destroy();
    await expect.poll(() => hold.sockets.size).toBe(0);
    await expect.poll(openDescriptors, { timeout: 2000 }).toBeLessThanOrEqual(before);
  });
});
