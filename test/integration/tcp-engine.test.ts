import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import { describe, expect, it } from 'vitest';
import type { TestServer } from '../support/net.js';
import {
  closedPort,
  connect,
  echoServer,
  exchange,
  nameServer,
  readAll,
  startServer,
  untilClosed,
  waitFor,
} from '../support/net.js';
import type { TestRuntime } from '../support/runtime.js';
import { testScope } from '../support/scope.js';
import type { TcpListener } from '../../src/listener/tcp.js';

const scope = testScope();

const server = (p: Promise<TestServer>): Promise<TestServer> => scope.server(p);

function poolYaml(addresses: string[], extra = ''): string {
  return `pools:
  - name: p
    connect_retries: 2
    health: { active: { type: none } }
    backends: [${addresses.map((a) => `{ address: "${a}" }`).join(', ')}]
${extra}`;
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

// Every case runs with both relays: the splice relay (kernel) and Node streams.
describe.each(['splice', 'stream'] as const)('TCP engine (relay: %s)', (relay) => {
  const lb = (yaml: string): Promise<TestRuntime> => scope.lb(`relay: ${relay}\n${yaml}`);

  it('balances sessions round-robin over the pool', async () => {
    const a = await server(nameServer('A'));
    const b = await server(nameServer('B'));
    const rt = await lb(
      `listeners: [{ name: t, bind: "127.0.0.1:0", pool: p }]\n${poolYaml([a.address, b.address])}`,
    );
    const replies: string[] = [];
    for (let i = 0; i < 6; i++) replies.push(await exchange(rt.port('t'), ''));
    expect(replies.filter((r) => r === 'A')).toHaveLength(3);
    expect(replies.filter((r) => r === 'B')).toHaveLength(3);
    await waitFor(() => rt.logs.find('session').length === 6, 2000, 'access lines');
    const line = rt.logs.find('session')[0] ?? {};
    expect(line).toMatchObject({
      listener: 't',
      pool: 'p',
      bytes_out: 1,
      reason: expect.any(String) as string,
    });
    expect(String(line.client)).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(typeof line.duration_ms).toBe('number');
    expect(await rt.metric('sluice_listener_connections_total', { listener: 't' })).toBe(6);
  });

  it.each([
    ['127.0.0.1', 50 * 1024 * 1024],
    ['::1', 8 * 1024 * 1024],
  ])('relays %s byte-exact in both directions at once (%i bytes)', async (host, size) => {
    const echo = await server(echoServer(host));
    const bind = host.includes(':') ? `[${host}]:0` : `${host}:0`;
    const rt = await lb(`listeners: [{ name: t, bind: "${bind}", pool: p }]\n${poolYaml([echo.address])}`);
    const payload = randomBytes(size);
    const s = await connect(rt.port('t'), host);
    const reply = readAll(s);
    s.end(payload);
    const got = await reply;
    expect(got.length).toBe(size);
    expect(sha(got)).toBe(sha(payload));
    await waitFor(
      async () =>
        (await rt.metric('sluice_bytes_total', { listener: 't', direction: 'downstream' })) === size,
    );
    expect(await rt.metric('sluice_bytes_total', { listener: 't', direction: 'upstream' })).toBe(size);
  });

  it('relays the client half-close: the backend replies after the FIN and the reply arrives whole', async () => {
    const reply = randomBytes(3 * 1024 * 1024);
    const backend = await server(
      startServer((s) => {
        const got: Buffer[] = [];
        s.on('data', (c: Buffer) => got.push(c));
        s.on('end', () => s.end(Buffer.concat([Buffer.from(`${Buffer.concat(got).length}:`), reply])));
      }),
    );
    const rt = await lb(
      `listeners: [{ name: t, bind: "127.0.0.1:0", pool: p }]\n${poolYaml([backend.address])}`,
    );
    const s = await connect(rt.port('t'));
    const all = readAll(s);
    s.end('request body');
    const got = await all;
    expect(got.subarray(0, 3).toString()).toBe('12:');
    expect(sha(got.subarray(3))).toBe(sha(reply));
  });

  it('relays the backend half-close: the client keeps sending after the backend FIN', async () => {
    let received: Buffer | undefined;
    const backend = await server(
      startServer((s) => {
        readAll(s)
          .then((b) => (received = b))
          .catch(() => undefined);
        s.end('bye');
      }),
    );
    const rt = await lb(
      `listeners: [{ name: t, bind: "127.0.0.1:0", pool: p }]\n${poolYaml([backend.address])}`,
    );
    const s = await connect(rt.port('t'));
    const fromBackend = await readAll(s);
    expect(fromBackend.toString()).toBe('bye');
    s.end('still talking after your FIN');
    const got = await waitFor(() => received);
    expect(got.toString()).toBe('still talking after your FIN');
  });

  it('writes access lines at log level warn: access_log alone decides', async () => {
    const echo = await server(echoServer());
    const rt = await lb(
      `log: { level: warn, access_log: true }\nlisteners: [{ name: t, bind: "127.0.0.1:0", pool: p }]\n${poolYaml([echo.address])}`,
    );
    expect(await exchange(rt.port('t'), 'hello')).toBe('hello');
    await waitFor(() => rt.logs.find('session').length === 1, 2000, 'the access line');
    expect(rt.logs.find('session')[0]).toMatchObject({
      level: 'info',
      listener: 't',
      bytes_in: 5,
      bytes_out: 5,
    });
    // The other info lines (listener bound, sluice ready) still follow log.level.
    expect(rt.logs.lines.filter((l) => l.level === 'info' && l.msg !== 'session')).toEqual([]);
  });

  it('retries a refused backend on another one before any byte is sent', async () => {
    const dead = await closedPort();
    const live = await server(nameServer('L'));
    const rt = await lb(
      `listeners: [{ name: t, bind: "127.0.0.1:0", pool: p }]\n${poolYaml([`127.0.0.1:${dead}`, live.address])}`,
    );
    for (let i = 0; i < 6; i++) expect(await exchange(rt.port('t'), 'x')).toBe('L');
    expect(
      await rt.metric('sluice_upstream_connect_failures_total', { pool: 'p', backend: `127.0.0.1:${dead}` }),
    ).toBeGreaterThan(0);
    expect(await rt.metric('sluice_listener_rejected_total', { listener: 't', reason: 'no_backend' })).toBe(
      0,
    );
  });

  it('closes the client promptly and counts it when every backend is down', async () => {
    const d1 = await closedPort();
    const d2 = await closedPort();
    const rt = await lb(
      `listeners: [{ name: t, bind: "127.0.0.1:0", pool: p }]\n${poolYaml([`127.0.0.1:${d1}`, `127.0.0.1:${d2}`])}`,
    );
    const s = await connect(rt.port('t'));
    s.write('hello');
    const got = await untilClosed(s);
    expect(got.data.length).toBe(0);
    expect(await rt.metric('sluice_listener_rejected_total', { listener: 't', reason: 'no_backend' })).toBe(
      1,
    );
    await waitFor(() => rt.logs.find('session').length === 1);
    // 1 + connect_retries (2) attempts: both backends, then one of them again after the turn-around.
    expect(rt.logs.find('session')[0]).toMatchObject({
      reason: 'connect_failed',
      attempts: 3,
      error: 'ECONNREFUSED',
    });
  });

  it('keeps buffered bytes bounded when the backend never reads', async () => {
    const backend = await server(startServer((s) => s.pause()));
    const rt = await lb(
      `listeners: [{ name: t, bind: "127.0.0.1:0", pool: p }]\n${poolYaml([backend.address])}`,
    );
    const s = await connect(rt.port('t'));
    s.on('error', () => undefined);
    const chunk = Buffer.alloc(64 * 1024, 1);
    // Write far more than kernel and proxy buffers can hold, then wait until the flow stalls.
    // With autotuning the kernel alone can hold about 20 MiB on this path (two send buffers of
    // up to 4 MiB, two receive buffers of up to 6 MiB): 64 MiB leaves the client stuck for sure.
    for (let i = 0; i < 1024; i++) s.write(chunk);
    // Stalled: what the client handed to the kernel has not grown past its high point for three
    // samples in a row (it wobbles by one 64 KiB write while a write is in flight).
    let high = -1;
    let flat = 0;
    await waitFor(
      async () => {
        const cur = s.bytesWritten - s.writableLength;
        flat = cur > high ? 0 : flat + 1;
        high = Math.max(high, cur);
        await new Promise((r) => setTimeout(r, 200));
        return flat >= 3 && s.writableLength > 0;
      },
      20_000,
      'the client to stall',
    );
    const listener = rt.runtime.listeners.get('t') as TcpListener;
    const [session] = [...listener.sessions];
    expect(session).toBeDefined();
    const buffered = session?.buffered ?? 0;
    // Per direction less than the writer's high-water mark (16 KiB) plus the read (up to 64 KiB)
    // whose write said "wait", and less than the paused reader's mark plus the one read it takes
    // after the pause: 2 × (16 + 64) KiB, whatever the client sent (it has queued far more than
    // that on its side). The splice relay holds nothing here (its buffers are the kernel's).
    expect(buffered).toBeLessThanOrEqual(2 * (16 + 64) * 1024);
    expect(s.writableLength).toBeGreaterThan(5 * 1024 * 1024);
    s.destroy();
  });

  it('carries established sessions on the configured relay and leaves nothing behind', async () => {
    const echo = await server(echoServer());
    const rt = await lb(
      `listeners: [{ name: t, bind: "127.0.0.1:0", pool: p }]\n${poolYaml([echo.address])}`,
    );
    const payload = randomBytes(300 * 1024);
    const replies = await Promise.all(
      Array.from({ length: 20 }, async () => {
        const s = await connect(rt.port('t'));
        const reply = readAll(s);
        s.end(payload);
        return reply;
      }),
    );
    for (const r of replies) expect(sha(r)).toBe(sha(payload));
    await waitFor(() => rt.logs.find('session').length === 20, 5000, 'access lines');
    for (const line of rt.logs.find('session'))
      expect(line).toMatchObject({
        reason: 'downstream_closed',
        bytes_in: payload.length,
        bytes_out: payload.length,
      });
    expect(await rt.metric('sluice_spliced_sessions_total', { listener: 't' })).toBe(
      relay === 'splice' ? 20 : 0,
    );
    expect(await rt.metric('sluice_splice_relays')).toBe(0);
    expect(await rt.metric('sluice_bytes_total', { listener: 't', direction: 'upstream' })).toBe(
      20 * payload.length,
    );
  });

  it('closes an idle session and says why', async () => {
    const echo = await server(echoServer());
    const rt = await lb(
      `listeners: [{ name: t, bind: "127.0.0.1:0", pool: p, timeouts: { idle: 300ms } }]\n${poolYaml([echo.address])}`,
    );
    const s = await connect(rt.port('t'));
    s.write('ping');
    const closed = readAll(s);
    expect((await closed).toString()).toBe('ping');
    await waitFor(() => rt.logs.find('session').length === 1);
    expect(rt.logs.find('session')[0]).toMatchObject({ reason: 'idle_timeout', bytes_in: 4, bytes_out: 4 });
    await waitFor(() => echo.sockets.size === 0, 2000, 'backend connection closed');
  });

  it('closes a half-closed session that goes quiet at timeouts.half_closed', async () => {
    // The backend reads the client's FIN but never closes its own half and never answers.
    const backend = await server(startServer((s) => s.resume()));
    const rt = await lb(
      `listeners: [{ name: t, bind: "127.0.0.1:0", pool: p, timeouts: { idle: 60s, half_closed: 300ms } }]\n${poolYaml([backend.address])}`,
    );
    const s = await connect(rt.port('t'));
    const closed = untilClosed(s);
    s.end('request');
    await closed;
    await waitFor(() => rt.logs.find('session').length === 1);
    expect(rt.logs.find('session')[0]).toMatchObject({ reason: 'half_closed_timeout', bytes_in: 7 });
    // sluice has let go of both sockets (the silent backend learns of it on its next write).
    expect((rt.runtime.listeners.get('t') as TcpListener).sessions.size).toBe(0);
  });

  it('refuses a connection over max_connections while the admin API still answers', async () => {
    const echo = await server(echoServer());
    const rt = await lb(
      `listeners: [{ name: t, bind: "127.0.0.1:0", pool: p, limits: { max_connections: 2 } }]\n${poolYaml([echo.address])}`,
    );
    const a = await connect(rt.port('t'));
    const b = await connect(rt.port('t'));
    const c = net.connect({ port: rt.port('t'), host: '127.0.0.1' });
    expect((await untilClosed(c)).data.length).toBe(0);
    expect(
      await rt.metric('sluice_listener_rejected_total', { listener: 't', reason: 'max_connections' }),
    ).toBe(1);
    a.destroy();
    b.destroy();
    expect((await fetch(`${rt.adminUrl}/healthz`)).status).toBe(200);
  });

  it('answers the pools API with state, health and connection counts', async () => {
    const echo = await server(echoServer());
    const rt = await lb(
      `listeners: [{ name: t, bind: "127.0.0.1:0", pool: p }]\n${poolYaml([echo.address])}`,
    );
    const s = await connect(rt.port('t'));
    s.write('x');
    await waitFor(() => echo.sockets.size === 1);
    const body = (await (await fetch(`${rt.adminUrl}/api/v1/pools`)).json()) as {
      pools: {
        name: string;
        backends: { address: string; state: string; connections: { local: number } }[];
      }[];
    };
    expect(body.pools[0]?.name).toBe('p');
    expect(body.pools[0]?.backends[0]).toMatchObject({
      address: echo.address,
      state: 'up',
      connections: { local: 1 },
    });
    s.destroy();
    expect((await fetch(`${rt.adminUrl}/readyz`)).status).toBe(200);
    expect((await fetch(`${rt.adminUrl}/api/v1/pools`, { method: 'DELETE' })).status).toBe(405);
  });

  it('survives a client reset mid-stream without touching other sessions', async () => {
    const echo = await server(echoServer());
    const rt = await lb(
      `listeners: [{ name: t, bind: "127.0.0.1:0", pool: p }]\n${poolYaml([echo.address])}`,
    );
    const victim = await connect(rt.port('t'));
    victim.write(Buffer.alloc(1024 * 1024));
    victim.resetAndDestroy();
    expect(await exchange(rt.port('t'), 'still fine')).toBe('still fine');
    await waitFor(() => echo.sockets.size === 0, 5000, 'the upstream of the reset session to close');
  });

  it('rejects a client outside the ACL before contacting a backend', async () => {
    const echo = await server(echoServer());
    const rt = await lb(
      `listeners: [{ name: t, bind: "127.0.0.1:0", pool: p, access: { allow: ["127.0.0.0/8"], deny: ["127.0.0.9/32"] } }]\n${poolYaml([echo.address])}`,
    );
    const denied = net.connect({ port: rt.port('t'), host: '127.0.0.1', localAddress: '127.0.0.9' });
    expect((await untilClosed(denied)).data.length).toBe(0);
    expect(echo.accepted).toBe(0);
    expect(await rt.metric('sluice_listener_rejected_total', { listener: 't', reason: 'acl' })).toBe(1);
    expect(await exchange(rt.port('t'), 'ok')).toBe('ok');
  });
});
