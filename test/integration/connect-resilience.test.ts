import { describe, expect, it } from 'vitest';
import type { TcpListener } from '../../src/listener/tcp.js';
import type { TestServer } from '../support/net.js';
import { closedPort, connect, exchange, nameServer, readAll, startServer, waitFor } from '../support/net.js';
import type { TestRuntime } from '../support/runtime.js';
import { testScope } from '../support/scope.js';

/**
 * A connect that fails or is slow must not turn into an outage: the only backend of a pool is
 * never ejected by passive health, a failed connect is retried on it after a turn-around, and a
 * connect the kernel completed is never failed by a deadline that the busy loop checked first.
 * Every case on both relays.
 */

const scope = testScope();
const server = (p: Promise<TestServer>): Promise<TestServer> => scope.server(p);

async function poolState(rt: TestRuntime, address: string): Promise<string> {
  const body = (await (await fetch(`${rt.adminUrl}/api/v1/pools`)).json()) as {
    pools: { backends: { address: string; state: string }[] }[];
  };
  return body.pools[0]?.backends.find((b) => b.address === address)?.state ?? 'missing';
}

/** Busy-waits: the event loop runs nothing else meanwhile (a loop stalled by other work). */
function block(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end);
}

describe.each(['splice', 'stream'] as const)('connect resilience (relay: %s)', (relay) => {
  const lb = (yaml: string): Promise<TestRuntime> => scope.lb(`relay: ${relay}\n${yaml}`);

  it('never ejects the only backend of a pool on connect failures, and serves as soon as it answers', async () => {
    const port = await closedPort();
    const rt = await lb(`listeners: [{ name: t, bind: "127.0.0.1:0", pool: p, timeouts: { connect: 1s } }]
pools:
  - name: p
    connect_retries: 0
    health: { active: { type: none }, passive: { consecutive_failures: 2, ejection: 30s } }
    backends: [{ address: "127.0.0.1:${port}" }]
`);
    for (let i = 0; i < 6; i++) expect(await exchange(rt.port('t'), '')).toBe('');
    expect(await rt.metric('sluice_upstream_connect_failures_total', { pool: 'p' })).toBe(6);
    expect(await rt.metric('sluice_backend_ejections_total', { pool: 'p' })).toBe(0);
    expect(await poolState(rt, `127.0.0.1:${port}`)).toBe('up');
    expect(
      rt.logs.find('backend kept in despite consecutive failures: it is the last ready backend of the pool'),
    ).toHaveLength(1);
    // The backend comes back: the very next client is served (no ejection to sit out).
    await server(startServer((s) => s.end('back'), '127.0.0.1', { allowHalfOpen: true }, port));
    expect(await exchange(rt.port('t'), '')).toBe('back');
  });

  it('retries the only backend after a turn-around: one that starts listening meanwhile serves the session', async () => {
    const port = await closedPort();
    const rt = await lb(`listeners: [{ name: t, bind: "127.0.0.1:0", pool: p, timeouts: { connect: 2s } }]
pools:
  - name: p
    connect_retries: 2
    health: { active: { type: none } }
    backends: [{ address: "127.0.0.1:${port}" }]
`);
    const s = await connect(rt.port('t'));
    const reply = readAll(s);
    s.end();
    // Refused once; the retry comes min(timeouts.connect, 1 s) later, by which time it listens.
    await waitFor(
      async () => (await rt.metric('sluice_upstream_connect_failures_total', { pool: 'p' })) >= 1,
    );
    await server(startServer((s) => s.end('late'), '127.0.0.1', { allowHalfOpen: true }, port));
    expect((await reply).toString()).toBe('late');
    await waitFor(() => rt.logs.find('session').length === 1);
    expect(rt.logs.find('session')[0]).toMatchObject({ attempts: 2, reason: 'downstream_closed' });
  });

  it('brings every held connection to a backend: none waits in sluice', async () => {
    // Backends that accept and hold, as `socat TCP-LISTEN:P,fork SYSTEM:'sleep 300'` would.
    const holders = [await server(startServer(() => undefined)), await server(startServer(() => undefined))];
    const rt = await lb(`listeners: [{ name: t, bind: "127.0.0.1:0", pool: p }]
pools:
  - name: p
    algorithm: least-connections
    health: { active: { type: none } }
    backends: [${holders.map((h) => `{ address: "${h.address}" }`).join(', ')}]
`);
    const clients = await Promise.all(Array.from({ length: 20 }, () => connect(rt.port('t'))));
    try {
      // A session that waited in sluice (an accept not drained, a connect not issued, an event
      // lost) would never get there.
      await waitFor(
        () => holders.reduce((n, h) => n + h.accepted, 0) === 20,
        15_000,
        '20 held at the backends',
      );
      expect(holders.map((h) => h.accepted)).toEqual([10, 10]);
    } finally {
      for (const c of clients) c.destroy();
    }
  });

  it('does not fail a connect that completed while the loop was busy past timeouts.connect', async () => {
    const backend = await server(nameServer('B'));
    const rt = await lb(`listeners: [{ name: t, bind: "127.0.0.1:0", pool: p, timeouts: { connect: 300ms } }]
pools:
  - name: p
    connect_retries: 0
    health: { active: { type: none } }
    backends: [{ address: "${backend.address}" }]
`);
    const listener = rt.runtime.listeners.get('t') as TcpListener;
    const s = await connect(rt.port('t'));
    const reply = readAll(s);
    s.end();
    // As soon as the session is connecting, stall the loop for longer than the connect timeout:
    // the kernel completes the connect meanwhile, but the sweeper's deadline check runs first.
    await new Promise<void>((resolve) => {
      const poll = (): void => {
        if (listener.openCount > 0) {
          block(800);
          resolve();
        } else setImmediate(poll);
      };
      setImmediate(poll);
    });
    expect((await reply).toString()).toBe('B');
    expect(await rt.metric('sluice_upstream_connect_failures_total', { pool: 'p' })).toBe(0);
  });
});

describe('pool panic mode', () => {
  /** Two serving backends whose active check always fails (they never send what it expects). */
  async function failingChecks(panic: number): Promise<{ rt: TestRuntime; a: TestServer; b: TestServer }> {
    const a = await server(startServer((s) => s.end('A')));
    const b = await server(startServer((s) => s.end('B')));
    const rt = await scope.lb(`listeners: [{ name: t, bind: "127.0.0.1:0", pool: p }]
pools:
  - name: p
    health:
      active: { type: send-expect, send: "ping", expect: "pong", interval: 100ms, timeout: 100ms, rise: 1, fall: 1 }
      panic_threshold: ${panic}
    backends: [{ address: "${a.address}" }, { address: "${b.address}" }]
`);
    await waitFor(
      async () => (await poolState(rt, a.address)) === 'down' && (await poolState(rt, b.address)) === 'down',
    );
    return { rt, a, b };
  }

  it('keeps serving over every backend when too few are ready, counted and logged once', async () => {
    const { rt } = await failingChecks(50);
    const replies = new Set<string>();
    for (let i = 0; i < 6; i++) replies.add(await exchange(rt.port('t'), ''));
    expect([...replies].sort()).toEqual(['A', 'B']);
    expect(await rt.metric('sluice_pool_panic', { pool: 'p' })).toBe(1);
    expect(await rt.metric('sluice_pool_panics_total', { pool: 'p' })).toBe(1);
    expect(rt.logs.find('pool in panic: too few backends ready, balancing over all of them')).toHaveLength(1);
    const api = (await (await fetch(`${rt.adminUrl}/api/v1/pools`)).json()) as {
      pools: { panic: boolean }[];
    };
    expect(api.pools[0]?.panic).toBe(true);
    expect(await rt.metric('sluice_listener_rejected_total', { listener: 't', reason: 'no_backend' })).toBe(
      0,
    );
  });

  it('refuses with no_backend when panic_threshold is 0', async () => {
    const { rt } = await failingChecks(0);
    expect(await exchange(rt.port('t'), '')).toBe('');
    expect(await rt.metric('sluice_listener_rejected_total', { listener: 't', reason: 'no_backend' })).toBe(
      1,
    );
    expect(await rt.metric('sluice_pool_panic', { pool: 'p' })).toBe(0);
  });
});
