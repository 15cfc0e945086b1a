import dgram from 'node:dgram';
import { once } from 'node:events';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { connect, startServer } from '../support/net.js';
import type { TestServer } from '../support/net.js';
import type { SluiceProcess } from '../support/process.js';
import { spawnSluice } from '../support/process.js';

/**
 * A shutdown ends by `shutdown.drain_timeout` whatever is still open, on both relays: here a
 * TCP session and UDP flows on one port (a TCP and a UDP listener sharing it, as iperf3's
 * control connection and data do) keep sending through the whole drain.
 */

const DRAIN_MS = 2_000;
/** What a drain may take beyond its timeout: a sweeper tick, the close itself, a busy machine. */
const MARGIN_MS = 3_000;
const UDP_CLIENTS = 4;

const cleanup: (() => void | Promise<void>)[] = [];
afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn();
});

/** A port free for both TCP and UDP on 127.0.0.1. */
async function freeDualPort(): Promise<number> {
  for (;;) {
    const server = net.createServer().listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as net.AddressInfo).port;
    const udp = dgram.createSocket('udp4');
    const ok = await new Promise<boolean>((resolve) => {
      udp.once('error', () => resolve(false));
      udp.bind(port, '127.0.0.1', () => resolve(true));
    });
    if (ok) udp.close();
    server.close();
    if (ok) return port;
  }
}

/** Backends on one port: a TCP echo server and a UDP echo socket. */
async function echoPair(): Promise<{ tcp: TestServer; address: string }> {
  const tcp = await startServer((s) => s.pipe(s));
  cleanup.push(() => tcp.close());
  const udp = dgram.createSocket('udp4');
  udp.on('error', () => undefined);
  udp.on('message', (msg, rinfo) => udp.send(msg, rinfo.port, rinfo.address));
  udp.bind(tcp.port, '127.0.0.1');
  await once(udp, 'listening');
  cleanup.push(() => void udp.close());
  return { tcp, address: tcp.address };
}

/** Clients that send without pause until stopped: one TCP session, UDP flows from several ports. */
async function busyClients(port: number): Promise<{ udpReplies: () => number; stop: () => void }> {
  const session = await connect(port);
  session.on('error', () => undefined);
  session.on('data', () => undefined);
  const chunk = Buffer.alloc(16 * 1024, 0x74);
  const flows: dgram.Socket[] = [];
  let replies = 0;
  for (let i = 0; i < UDP_CLIENTS; i++) {
    const s = dgram.createSocket('udp4');
    s.on('error', () => undefined);
    s.on('message', () => replies++);
    s.connect(port, '127.0.0.1');
    await once(s, 'connect');
    flows.push(s);
  }
  const payload = Buffer.alloc(64, 0x75);
  const timer = setInterval(() => {
    if (!session.destroyed && session.writableLength < 1 << 20) session.write(chunk);
    for (const s of flows) for (let k = 0; k < 16; k++) s.send(payload);
  }, 5);
  let stopped = false;
  const stop = (): void => {
    if (stopped) return;
    stopped = true;
    clearInterval(timer);
    session.destroy();
    for (const s of flows) s.close();
  };
  cleanup.push(stop);
  return { udpReplies: () => replies, stop };
}

function config(relay: string, port: number, backend: string): string {
  return `admin: { listen: "127.0.0.1:0" }
log: { level: info }
relay: ${relay}
shutdown: { drain_timeout: ${DRAIN_MS}ms }
listeners:
  - { name: control, protocol: tcp, bind: "127.0.0.1:${port}", pool: p }
  - { name: data, protocol: udp, bind: "127.0.0.1:${port}", pool: p }
pools:
  - { name: p, health: { active: { type: none } }, backends: [{ address: "${backend}" }] }
`;
}

describe.each(['splice', 'stream'] as const)('drain with relay: %s', (relay) => {
  let proc: SluiceProcess | undefined;
  afterEach(() => proc?.kill('SIGKILL'));

  it('ends busy TCP sessions and UDP flows at drain_timeout and exits 0', async () => {
    const backend = await echoPair();
    const port = await freeDualPort();
    proc = await spawnSluice(config(relay, port, backend.address));
    const clients = await busyClients(port);
    await expect.poll(() => clients.udpReplies(), { timeout: 5_000 }).toBeGreaterThan(0);

    const signalled = performance.now();
    proc.kill('SIGTERM');
    await proc.waitForLog((l) => l.msg === 'draining');
    // Open flows keep working while the process drains.
    const before = clients.udpReplies();
    await expect.poll(() => clients.udpReplies(), { timeout: DRAIN_MS }).toBeGreaterThan(before);

    const code = await Promise.race([
      proc.exited,
      new Promise<string>((resolve) => setTimeout(() => resolve('still running'), DRAIN_MS + MARGIN_MS)),
    ]);
    const took = performance.now() - signalled;
    clients.stop();
    expect({ code, withinDeadline: took < DRAIN_MS + MARGIN_MS }).toEqual({ code: 0, withinDeadline: true });
    expect(proc.logs.some((l) => l.msg === 'drain deadline passed; closing the remaining sessions')).toBe(
      true,
    );
    expect(proc.logs.filter((l) => l.msg === 'flow' && l.reason === 'shutdown')).toHaveLength(UDP_CLIENTS);
    expect(proc.logs.some((l) => l.msg === 'session' && l.reason === 'shutdown')).toBe(true);
  });

  it('exits as soon as it has stopped: nothing keeps the process alive after the drain', async () => {
    const backend = await echoPair();
    const port = await freeDualPort();
    proc = await spawnSluice(config(relay, port, backend.address));
    const clients = await busyClients(port);
    await expect.poll(() => clients.udpReplies(), { timeout: 5_000 }).toBeGreaterThan(0);
    clients.stop();
    const p = proc;
    let stoppedAt = 0;
    p.child.stdout?.on('data', (d: Buffer) => {
      if (stoppedAt === 0 && d.toString().includes('"msg":"stopped"')) stoppedAt = performance.now();
    });
    p.kill('SIGTERM');
    expect(await p.exited).toBe(0);
    const after = performance.now() - stoppedAt;
    // The exit follows the last log line: process teardown only (tens of ms), not a second or more.
    expect({ logged: stoppedAt > 0, promptly: after < 1_000 }).toEqual({ logged: true, promptly: true });
  });
});
