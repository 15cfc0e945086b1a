import { describe, expect, it } from 'vitest';
import type { TestServer } from '../support/net.js';
import { connect, echoServer, exchange, nameServer, readAll, startServer, waitFor } from '../support/net.js';
import type { TestRuntime } from '../support/runtime.js';
import { testScope } from '../support/scope.js';

const scope = testScope();

const lb = (yaml: string): Promise<TestRuntime> => scope.lb(yaml);

const track = (p: Promise<TestServer>): Promise<TestServer> => scope.server(p);

async function poolState(rt: TestRuntime, address: string): Promise<string> {
  const body = (await (await fetch(`${rt.adminUrl}/api/v1/pools`)).json()) as {
    pools: { backends: { address: string; state: string }[] }[];
  };
  return body.pools[0]?.backends.find((b) => b.address === address)?.state ?? 'missing';
}

describe('active health under traffic', () => {
  it('marks a killed backend down, sends nothing to it, and brings it back when it returns', async () => {
    const a = await track(nameServer('A'));
    const b = await nameServer('B');
    const bPort = b.port;
    const rt = await lb(`listeners: [{ name: t, bind: "127.0.0.1:0", pool: p }]
pools:
  - name: p
    connect_retries: 0
    health:
      active: { type: tcp, interval: 200ms, timeout: 100ms, rise: 2, fall: 2, jitter: 0 }
      passive: { consecutive_failures: 0 }
    backends: [{ address: "${a.address}" }, { address: "${b.address}" }]
`);
    expect(await poolState(rt, b.address)).toBe('up');
    await b.close();
    // Down within fall × interval + timeout (plus the first check's offset), polled.
    await waitFor(async () => (await poolState(rt, `127.0.0.1:${bPort}`)) === 'down', 3000, 'B marked down');
    // Once it is down, no client connection fails even without retries.
    for (let i = 0; i < 20; i++) expect(await exchange(rt.port('t'), '')).toBe('A');
    // Bring B back on the same port.
    const again = await track(startServer((s) => s.end('B'), '127.0.0.1', { allowHalfOpen: true }, bPort));
    await waitFor(async () => (await poolState(rt, again.address)) === 'up', 3000, 'B back up');
    const replies = new Set<string>();
    for (let i = 0; i < 10; i++) replies.add(await exchange(rt.port('t'), ''));
    expect(replies).toEqual(new Set(['A', 'B']));
    expect(
      await rt.metric('sluice_health_transitions_total', { pool: 'p', backend: again.address, to: 'down' }),
    ).toBe(1);
    expect(
      await rt.metric('sluice_health_transitions_total', { pool: 'p', backend: again.address, to: 'up' }),
    ).toBe(1);
  });
});

describe('passive health', () => {
  it('ejects a backend after consecutive connect failures', async () => {
    const a = await track(nameServer('A'));
    const rt = await lb(`listeners: [{ name: t, bind: "127.0.0.1:0", pool: p }]
pools:
  - name: p
    connect_retries: 1
    health:
      active: { type: none }
      passive: { consecutive_failures: 2, ejection: 30s, max_ejection_percent: 50 }
    backends: [{ address: "${a.address}" }, { address: "127.0.0.1:1" }]
`);
    for (let i = 0; i < 10; i++) expect(await exchange(rt.port('t'), '')).toBe('A');
    expect(await rt.metric('sluice_backend_ejections_total', { pool: 'p', backend: '127.0.0.1:1' })).toBe(1);
    expect(await poolState(rt, '127.0.0.1:1')).toBe('down');
    // Ejected: no more connect attempts reach it.
    const failures = await rt.metric('sluice_upstream_connect_failures_total', {
      pool: 'p',
      backend: '127.0.0.1:1',
    });
    for (let i = 0; i < 10; i++) await exchange(rt.port('t'), '');
    expect(
      await rt.metric('sluice_upstream_connect_failures_total', { pool: 'p', backend: '127.0.0.1:1' }),
    ).toBe(failures);
  });
});

describe('admin drain', () => {
  it('keeps a drained backend streaming its open session while new sessions avoid it', async () => {
    const a = await track(echoServer());
    const b = await track(nameServer('B'));
    const rt = await lb(`listeners: [{ name: t, bind: "127.0.0.1:0", pool: p }]
pools:
  - name: p
    algorithm: round-robin
    health: { active: { type: none } }
    backends: [{ address: "${a.address}" }, { address: "${b.address}" }]
`);
    // Find a session pinned to the echo backend.
    let s = await connect(rt.port('t'));
    s.on('error', () => undefined);
    while (
      (await new Promise<string>((r) => {
        s.once('data', (d: Buffer) => r(d.toString()));
        s.once('end', () => r('B'));
        s.write('E');
      })) !== 'E'
    ) {
      s.destroy();
      s = await connect(rt.port('t'));
      s.on('error', () => undefined);
    }
    const res = await fetch(`${rt.adminUrl}/api/v1/pools/p/backends/${encodeURIComponent(a.address)}/drain`, {
      method: 'POST',
    });
    expect(res.status).toBe(200);
    expect(((await res.json()) as { state: string }).state).toBe('draining');
    for (let i = 0; i < 6; i++) expect(await exchange(rt.port('t'), '')).toBe('B');
    const rest = readAll(s);
    s.end('still streaming');
    expect((await rest).toString()).toBe('still streaming');
    await fetch(`${rt.adminUrl}/api/v1/pools/p/backends/${encodeURIComponent(a.address)}/enable`, {
      method: 'POST',
    });
    const replies = new Set<string>();
    for (let i = 0; i < 4; i++) replies.add(await exchange(rt.port('t'), 'x'));
    expect(replies).toEqual(new Set(['x', 'B']));
    expect(
      (await fetch(`${rt.adminUrl}/api/v1/pools/p/backends/10.9.9.9:1/drain`, { method: 'POST' })).status,
    ).toBe(404);
  });
});

describe('DNS discovery in a pool', () => {
  it('sends sessions to the addresses a name resolves to, and follows a change', async () => {
    const { TestDnsServer } = await import('../support/dns-server.js');
    const dns = await TestDnsServer.start();
    scope.defer(() => dns.close());
    const first = await track(nameServer('two', '127.0.0.2'));
    const second = await track(
      startServer((s) => s.end('three'), '127.0.0.3', { allowHalfOpen: true }, first.port),
    );
    dns.setRecords('svc.test', 'A', ['127.0.0.2']);
    const rt = await lb(`listeners: [{ name: t, bind: "127.0.0.1:0", pool: p }]
pools:
  - name: p
    health: { active: { type: tcp, interval: 100ms, timeout: 100ms, rise: 1, fall: 1 } }
    discovery: { dns: { name: svc.test, type: A, port: ${first.port}, interval: 200ms, servers: ["127.0.0.1:${dns.port}"] } }
`);
    await waitFor(
      async () => (await poolState(rt, first.address)) === 'up',
      5000,
      'the discovered backend to pass its check',
    );
    expect(await exchange(rt.port('t'), '')).toBe('two');
    dns.setRecords('svc.test', 'A', ['127.0.0.3']);
    await waitFor(
      async () => (await poolState(rt, second.address)) === 'up',
      5000,
      'the new address to be checked',
    );
    await waitFor(
      async () => (await poolState(rt, first.address)) === 'missing',
      5000,
      'the old address to leave',
    );
    for (let i = 0; i < 4; i++) expect(await exchange(rt.port('t'), '')).toBe('three');
  });
});

describe('passive health on resets', () => {
  it('ejects a backend that accepts connections and resets them before answering', async () => {
    const good = await track(nameServer('G'));
    const bad = await track(startServer((s) => s.resetAndDestroy()));
    const rt = await lb(`listeners: [{ name: t, bind: "127.0.0.1:0", pool: p }]
pools:
  - name: p
    algorithm: round-robin
    health:
      active: { type: none }
      passive: { consecutive_failures: 2, ejection: 30s, max_ejection_percent: 50 }
    backends: [{ address: "${good.address}" }, { address: "${bad.address}" }]
`);
    for (let i = 0; i < 6; i++) await exchange(rt.port('t'), 'x').catch(() => '');
    await waitFor(
      async () =>
        (await rt.metric('sluice_backend_ejections_total', { pool: 'p', backend: bad.address })) === 1,
      5000,
      'the resetting backend to be ejected',
    );
    const accepted = bad.accepted;
    for (let i = 0; i < 6; i++) expect(await exchange(rt.port('t'), 'x')).toBe('G');
    expect(bad.accepted).toBe(accepted);
  });
});
