import { accessSync, constants, readFileSync, writeFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { answer, closedPort, connect, nameServer, waitFor } from '../support/net.js';
import type { TestServer } from '../support/net.js';
import { exclusiveWatches, runCli, spawnSluice, tempFile, tryKill } from '../support/process.js';
import type { SluiceProcess } from '../support/process.js';

const open: { procs: SluiceProcess[]; servers: TestServer[] } = { procs: [], servers: [] };

afterEach(async () => {
  for (const p of open.procs.splice(0)) {
    p.kill('SIGKILL');
    for (const pid of workerPids(p)) tryKill(pid);
  }
  for (const s of open.servers.splice(0)) await s.close();
});

/** PIDs of the workers the primary started (from its log). */
function workerPids(p: SluiceProcess): number[] {
  return p.logs.filter((l) => l.msg === 'worker started').map((l) => Number(l.worker_pid));
}

/** Polls `check` every 50 ms until it returns a value, for at most `ms`. */
async function until<T>(
  what: string,
  check: () => T | undefined | Promise<T | undefined>,
  ms = 15_000,
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function ready(p: SluiceProcess): Promise<void> {
  await until('/readyz 200', async () =>
    (await fetch(`${p.adminUrl}/readyz`)).status === 200 ? true : undefined,
  );
}

function metric(text: string, line: string): number | undefined {
  const hit = text.split('\n').find((l) => l.startsWith(`${line} `));
  return hit === undefined ? undefined : Number(hit.slice(line.length + 1));
}

async function start(workers = 2): Promise<{ p: SluiceProcess; port: number; path: string }> {
  const backend = await nameServer('b1');
  open.servers.push(backend);
  const port = await closedPort();
  const yaml = (weight: number): string => `
admin: { listen: 127.0.0.1:0 }
workers: ${workers}
shutdown: { drain_timeout: 5s }
listeners:
  - { name: web, bind: 127.0.0.1:${port}, pool: p }
pools:
  - name: p
    algorithm: least-connections
    health: { active: { type: none } }
    backends: [ { address: ${backend.address}, weight: ${weight} } ]
`;
  const p = await spawnSluice(yaml(1));
  open.procs.push(p);
  await ready(p);
  const path = p.child.spawnargs.at(-1) ?? '';
  expect(readFileSync(path, 'utf8')).toContain('workers:');
  writeFileSync(`${path}.next`, yaml(2));
  return { p, port, path };
}

/** Linux >= 5.14: a closing reuseport listener hands its queued connections to another. */
const MIGRATE_REQ = '/proc/sys/net/ipv4/tcp_migrate_req';

function canSetMigrateReq(): boolean {
  try {
    accessSync(MIGRATE_REQ, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * Stops one live worker, opens `n` connections at once (the kernel completes every handshake;
 * those hashed to the stopped worker wait in its accept queue), kills it and returns how many
 * exchanges failed, with the pid it killed.
 */
async function killWithQueue(
  p: SluiceProcess,
  port: number,
  n = 40,
): Promise<{ failed: number; victim: number }> {
  const victim = workerPids(p).find((pid) => tryKill(pid, 0)) ?? 0;
  expect(tryKill(victim, 'SIGSTOP')).toBe(true);
  const exchanges = Array.from({ length: n }, () => answer(port));
  // The other worker answers its share meanwhile; the stopped one's share stays queued.
  await new Promise((r) => setTimeout(r, 500));
  expect(tryKill(victim, 'SIGKILL')).toBe(true);
  const answers = await Promise.all(exchanges);
  return { failed: answers.filter((a) => a !== 'b1').length, victim };
}

describe('workers: 2', () => {
  it('two worker processes serve one port and /metrics sums them', async () => {
    const { p, port } = await start();
    const pids = workerPids(p);
    expect(new Set(pids).size).toBe(2);
    expect(pids).not.toContain(p.child.pid);
    // Both bound the same address (a worker's log line may still be on its way through the pipe).
    const boundBy = (): Set<unknown> =>
      new Set(
        p.logs
          .filter((l) => l.msg === 'listener bound' && l.address === `127.0.0.1:${port}`)
          .map((l) => l.pid),
      );
    await waitFor(() => boundBy().size === 2, 5000, 'both workers logged listener bound');
    expect(boundBy()).toEqual(new Set(pids));
    // Each worker's socket of the reuseport group is its own: nothing to wake one of.
    for (const pid of pids) expect(exclusiveWatches(pid)).toBe(0);
    // Connections from many source ports reach both workers (the kernel hashes the 4-tuple).
    let made = 0;
    await until('sessions on both workers', async () => {
      expect(await answer(port)).toBe('b1');
      made++;
      const seen = new Set(p.logs.filter((l) => l.msg === 'session').map((l) => l.pid));
      return seen.size === 2 || made >= 200 ? seen : undefined;
    });
    expect(new Set(p.logs.filter((l) => l.msg === 'session').map((l) => l.pid))).toEqual(new Set(pids));
    const total = await until('metrics to add up', async () => {
      const text = await (await fetch(`${p.adminUrl}/metrics`)).text();
      const n = metric(text, 'sluice_listener_connections_total{listener="web"}');
      return n === made ? n : undefined;
    });
    expect(total).toBe(made);
    const text = await (await fetch(`${p.adminUrl}/metrics`)).text();
    expect(metric(text, 'sluice_workers_ready')).toBe(2);
    // Each worker's own share, labelled by worker: both took some, and they add up to the total.
    const share = [1, 2].map((w) =>
      metric(text, `sluice_worker_connections_total{listener="web",worker="${w}"}`),
    );
    expect(share.every((n) => (n ?? 0) > 0)).toBe(true);
    expect((share[0] ?? 0) + (share[1] ?? 0)).toBe(made);
  });

  it('pools merge the workers: held sessions are summed', async () => {
    const { p, port } = await start();
    const held = await Promise.all(Array.from({ length: 8 }, () => connect(port)));
    const local = await until('8 local connections', async () => {
      const body = (await (await fetch(`${p.adminUrl}/api/v1/pools`)).json()) as {
        pools: { backends: { connections: { local: number } }[] }[];
      };
      const n = body.pools[0]?.backends[0]?.connections.local;
      return n === 8 ? n : undefined;
    });
    expect(local).toBe(8);
    for (const s of held) s.destroy();
  });

  it('restarts a killed worker and the port keeps serving', async () => {
    const { p, port } = await start();
    const [victim, survivor] = workerPids(p);
    expect(tryKill(victim ?? 0)).toBe(true);
    await p.waitForLog((l) => l.msg === 'worker exited' && l.signal === 'SIGKILL');
    // Between the crash and the restart the other worker has the port alone.
    for (let i = 0; i < 10; i++) expect(await answer(port)).toBe('b1');
    const restarted = await p.waitForLog((l) => l.msg === 'worker ready', 15_000);
    expect(restarted.worker_pid).not.toBe(victim);
    expect(tryKill(survivor ?? 0, 0)).toBe(true);
    await ready(p);
    for (let i = 0; i < 10; i++) expect(await answer(port)).toBe('b1');
  });

  // Needs root (CI runs as root): the setting is the network namespace's own.
  it.skipIf(!canSetMigrateReq())(
    "a killed worker's queued connections are served by the other with net.ipv4.tcp_migrate_req = 1",
    async () => {
      const before = readFileSync(MIGRATE_REQ, 'utf8').trim();
      try {
        writeFileSync(MIGRATE_REQ, '0');
        const { p, port } = await start();
        const warned = p.logs.find((l) => l.sysctl === 'net.ipv4.tcp_migrate_req');
        expect(warned?.level).toBe('warn');
        expect(String(warned?.msg)).toMatch(/tcp_migrate_req is 0: a worker that exits resets/);
        // The kernel's default: the connections waiting at the killed worker are reset.
        const reset = await killWithQueue(p, port);
        expect(reset.failed).toBeGreaterThan(0);
        await p.waitForLog(
          (l) => l.msg === 'worker ready' && l.worker_pid !== undefined && l.worker_pid !== reset.victim,
          15_000,
        );
        await ready(p);
        // Migrated: the other worker accepts them and every exchange completes.
        writeFileSync(MIGRATE_REQ, '1');
        const migrated = await killWithQueue(p, port);
        expect(migrated.failed).toBe(0);
      } finally {
        writeFileSync(MIGRATE_REQ, before);
      }
    },
  );

  it('SIGHUP reloads every worker; an invalid file is rejected once by the primary', async () => {
    const { p, path } = await start();
    writeFileSync(path, readFileSync(`${path}.next`, 'utf8'));
    p.kill('SIGHUP');
    const primaryDone = await p.waitForLog((l) => l.msg === 'config reloaded' && l.role === 'primary');
    expect(primaryDone.workers).toBe(2);
    const byWorker = p.logs.filter((l) => l.msg === 'config reloaded' && typeof l.worker === 'number');
    expect(new Set(byWorker.map((l) => l.pid))).toEqual(new Set(workerPids(p)));

    writeFileSync(path, 'listeners: [ {');
    p.kill('SIGHUP');
    await p.waitForLog(
      (l) => l.msg === 'reload rejected; the running config is kept' && l.role === 'primary',
    );
    const res = await fetch(`${p.adminUrl}/api/v1/reload`, { method: 'POST' });
    expect(res.status).toBe(400);
    const text = await (await fetch(`${p.adminUrl}/metrics`)).text();
    expect(metric(text, 'sluice_config_reloads_total{result="success"}')).toBe(1);
    expect(metric(text, 'sluice_config_reloads_total{result="failure"}')).toBe(2);
  });

  it('SIGTERM drains every worker and the primary exits 0', async () => {
    const { p, port } = await start();
    const pids = workerPids(p);
    const s = await connect(port);
    p.kill('SIGTERM');
    await until('/readyz 503', async () =>
      (await fetch(`${p.adminUrl}/readyz`)).status === 503 ? true : undefined,
    );
    s.end();
    expect(await p.exited).toBe(0);
    for (const pid of pids) await until(`worker ${pid} gone`, () => (tryKill(pid, 0) ? undefined : true));
    expect(p.logs.filter((l) => l.msg === 'worker draining')).toHaveLength(2);
  });

  it('rejects a listener on port 0 with exit 78 naming the key', async () => {
    const path = tempFile(
      'sluice.yaml',
      `workers: 2
listeners: [ { name: web, bind: 127.0.0.1:0, pool: p } ]
pools: [ { name: p, backends: [ { address: 127.0.0.1:9 } ] } ]
`,
    );
    const r = await runCli(['validate', '-c', path]);
    expect(r.code).toBe(78);
    expect(r.stderr).toContain('listeners[0].bind: port 0 cannot be shared');
  });

  it('fails with one line when a port is already in use', async () => {
    const busy = await nameServer('other');
    open.servers.push(busy);
    const path = tempFile(
      'sluice.yaml',
      `workers: 2
admin: { listen: 127.0.0.1:0 }
listeners: [ { name: web, bind: 127.0.0.1:${busy.port}, pool: p } ]
pools: [ { name: p, backends: [ { address: 127.0.0.1:9 } ] } ]
`,
    );
    const r = await runCli(['run', '-c', path]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe(`sluice: listener "web": 127.0.0.1:${busy.port} already in use`);
  });
});
