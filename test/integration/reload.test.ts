import { writeFileSync } from 'node:fs';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { connect, echoServer, exchange, waitFor } from '../support/net.js';
import type { TestServer } from '../support/net.js';
import type { SluiceProcess } from '../support/process.js';
import { spawnSluice } from '../support/process.js';
import { readMetric } from '../support/runtime.js';

const procs: SluiceProcess[] = [];
const servers: TestServer[] = [];
afterEach(async () => {
  for (const p of procs.splice(0)) p.kill('SIGKILL');
  for (const s of servers.splice(0)) await s.close();
});

async function backend(): Promise<TestServer> {
  const s = await echoServer();
  servers.push(s);
  return s;
}

function config(port: number, backends: string[], extraListener = '', invalid = false): string {
  return `admin: { listen: "127.0.0.1:0" }
log: { level: info, access_log: false }
listeners:
  - { name: main, bind: "127.0.0.1:${port}", pool: p }
${extraListener}
pools:
  - name: p
    algorithm: ${invalid ? 'fastest' : 'least-connections'}
    health: { active: { type: none } }
    backends: [${backends.map((b) => `{ address: "${b}" }`).join(', ')}]
`;
}

async function freePort(): Promise<number> {
  const s = net.createServer().listen(0, '127.0.0.1');
  await new Promise((r) => s.once('listening', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

async function reloads(p: SluiceProcess, result: 'success' | 'failure'): Promise<number> {
  return readMetric(p.adminUrl, 'sluice_config_reloads_total', { result });
}

describe('hot reload', () => {
  it('applies a valid config on SIGHUP and keeps the running one on an invalid config', async () => {
    const a = await backend();
    const b = await backend();
    const port = await freePort();
    const p = await spawnSluice(config(port, [a.address]));
    procs.push(p);
    // Both results are exported from the start (at 0), so a rate over them sees the first one.
    const first = await (await fetch(`${p.adminUrl}/metrics`)).text();
    expect(first).toContain('sluice_config_reloads_total{result="success"} 0\n');
    expect(first).toContain('sluice_config_reloads_total{result="failure"} 0\n');
    writeFileSync(p.configPath, config(port, [a.address, b.address]));
    p.kill('SIGHUP');
    await waitFor(async () => (await reloads(p, 'success')) === 1);
    const pools = (await (await fetch(`${p.adminUrl}/api/v1/pools`)).json()) as {
      pools: { backends: unknown[] }[];
    };
    expect(pools.pools[0]?.backends).toHaveLength(2);

    writeFileSync(p.configPath, config(port, [a.address], '', true));
    p.kill('SIGHUP');
    await waitFor(async () => (await reloads(p, 'failure')) === 1);
    const line = await p.waitForLog((l) => l.msg === 'reload rejected; the running config is kept');
    expect(JSON.stringify(line.errors)).toContain('pools[0].algorithm');
    // Through the API: 400 with the errors.
    const res = await fetch(`${p.adminUrl}/api/v1/reload`, { method: 'POST' });
    expect(res.status).toBe(400);
    expect(JSON.stringify(await res.json())).toContain('pools[0].algorithm');
    expect(await exchange(port, 'still serving')).toBe('still serving');
  });

  it('drops no session and refuses no connection through 20 reloads under traffic', async () => {
    const a = await backend();
    const b = await backend();
    const c = await backend();
    const port = await freePort();
    const extraPort = await freePort();
    const p = await spawnSluice(config(port, [a.address, b.address]));
    procs.push(p);

    // 1,000 streaming sessions, each checking its echo.
    const sessions: { socket: net.Socket; sent: number; got: number; broken: boolean }[] = [];
    for (let i = 0; i < 1000; i++) {
      const socket = await connect(port);
      const st = { socket, sent: 0, got: 0, broken: false };
      socket.on('data', (d: Buffer) => (st.got += d.length));
      socket.on('error', () => (st.broken = true));
      socket.on('close', () => (st.broken = true));
      sessions.push(st);
    }
    let stop = false;
    const pump = (async () => {
      while (!stop) {
        for (const st of sessions) {
          st.socket.write('0123456789');
          st.sent += 10;
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    // New connections on the unchanged listener all along.
    let refused = 0;
    let served = 0;
    const churn = (async () => {
      while (!stop) {
        try {
          if ((await exchange(port, 'x')) === 'x') served++;
          else refused++;
        } catch {
          refused++;
        }
      }
    })();

    const variants = [
      config(port, [a.address, b.address, c.address]),
      config(port, [a.address, b.address], `  - { name: extra, bind: "127.0.0.1:${extraPort}", pool: p }`),
      config(port, [a.address, b.address], '', true),
      config(port, [b.address, c.address]),
      config(port, [a.address, b.address]),
    ];
    for (let i = 0; i < 20; i++) {
      const text = variants[i % variants.length] ?? '';
      writeFileSync(p.configPath, text);
      const before = (await reloads(p, 'success')) + (await reloads(p, 'failure'));
      p.kill('SIGHUP');
      await waitFor(
        async () => (await reloads(p, 'success')) + (await reloads(p, 'failure')) > before,
        5000,
        `reload ${i}`,
      );
      await new Promise((r) => setTimeout(r, 100));
    }
    stop = true;
    await pump;
    await churn;
    // Let the last echoes arrive.
    await waitFor(() => sessions.every((st) => st.got === st.sent || st.broken), 10_000, 'echoes');
    expect(sessions.filter((st) => st.broken)).toHaveLength(0);
    expect(sessions.every((st) => st.got === st.sent)).toBe(true);
    expect(refused).toBe(0);
    expect(served).toBeGreaterThan(20);
    expect(await reloads(p, 'success')).toBe(16);
    expect(await reloads(p, 'failure')).toBe(4);
    for (const st of sessions) st.socket.destroy();
  }, 120_000);

  it('switches relay between splice and stream for new sessions; open ones go on', async () => {
    const a = await backend();
    const port = await freePort();
    const withRelay = (relay: string): string => `relay: ${relay}\n${config(port, [a.address])}`;
    const p = await spawnSluice(withRelay('splice'));
    procs.push(p);
    const spliced = (): Promise<number> =>
      readMetric(p.adminUrl, 'sluice_spliced_sessions_total', { listener: 'main' });
    // A session opened on the splice relay, kept open across both reloads.
    const open = await connect(port);
    let echoed = '';
    open.on('data', (d: Buffer) => (echoed += d.toString()));
    open.write('one;');
    await waitFor(() => echoed === 'one;');
    // Counted once the session is known to be relaying: at the latest on the next sweeper tick.
    await waitFor(async () => (await spliced()) === 1);

    writeFileSync(p.configPath, withRelay('stream'));
    p.kill('SIGHUP');
    await waitFor(async () => (await reloads(p, 'success')) === 1);
    // Accepted by the relay (listeners keep accepting the way they started), relayed by streams.
    expect(await exchange(port, 'through streams')).toBe('through streams');
    expect(await spliced()).toBe(1);

    writeFileSync(p.configPath, withRelay('splice'));
    p.kill('SIGHUP');
    await waitFor(async () => (await reloads(p, 'success')) === 2);
    expect(await exchange(port, 'through the relay')).toBe('through the relay');
    await waitFor(async () => (await spliced()) === 2);

    open.write('two;');
    await waitFor(() => echoed === 'one;two;');
    open.destroy();
  });
});
