import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { answer, closedPort, nameServer, waitFor } from '../support/net.js';
import type { TestServer } from '../support/net.js';
import { exclusiveWatches, spawnSluice, tryKill } from '../support/process.js';
import type { SluiceProcess } from '../support/process.js';

/** Holds listening sockets as a systemd .socket unit does and starts sluice on them (sd_listen_fds). */
const HOLDER = fileURLToPath(new URL('../support/socket-holder.py', import.meta.url));

/** What spawnSluice puts in front of node to run sluice on sockets held on these loopback ports. */
function held(...ports: number[]): string[] {
  return ['python3', HOLDER, ...ports.map((p) => `127.0.0.1:${p}`), '--'];
}

const open: { procs: SluiceProcess[]; servers: TestServer[] } = { procs: [], servers: [] };

afterEach(async () => {
  for (const p of open.procs.splice(0)) {
    p.kill('SIGTERM'); // the holder kills what it started; workers run in their own group
    for (const l of p.logs.filter((x) => x.msg === 'worker started')) tryKill(Number(l.worker_pid));
  }
  for (const s of open.servers.splice(0)) await s.close();
});

function yaml(port: number, backend: string, workers = 1, relay = 'auto'): string {
  return `
admin: { listen: 127.0.0.1:0 }
workers: ${workers}
relay: ${relay}
shutdown: { drain_timeout: 2s }
listeners:
  - { name: web, bind: 127.0.0.1:${port}, pool: p }
pools:
  - name: p
    health: { active: { type: none } }
    backends: [ { address: ${backend} } ]
`;
}

async function backend(): Promise<TestServer> {
  const b = await nameServer('b1');
  open.servers.push(b);
  return b;
}

describe('socket activation (sockets passed by systemd)', () => {
  it.each(['splice', 'stream'])(
    'adopts the passed socket, and a restart refuses no connection: they wait in its backlog (relay: %s)',
    async (relay) => {
      const b = await backend();
      const port = await closedPort();
      const p = await spawnSluice(yaml(port, b.address, 1, relay), 15_000, held(port));
      open.procs.push(p);
      const bound = p.logs.find((l) => l.msg === 'listener bound' && l.listener === 'web');
      expect(bound?.socket).toBe('systemd');
      expect(bound?.address).toBe(`127.0.0.1:${port}`);
      expect(await answer(port)).toBe('b1');

      // Stop it; with no sluice running, clients connect anyway (the socket is the holder's).
      const first = Number(bound?.pid);
      process.kill(first, 'SIGTERM');
      await p.waitForLog((l) => l.msg === 'stopped' && l.pid === first);
      const during = Array.from({ length: 20 }, () => answer(port));
      await new Promise((r) => setTimeout(r, 300));
      p.child.kill('SIGUSR1'); // the holder starts sluice again on the same socket
      const second = await p.waitForLog((l) => l.msg === 'sluice ready' && l.pid !== first, 15_000);
      expect(second.pid).not.toBe(first);
      expect(await Promise.all(during)).toEqual(new Array<string>(20).fill('b1'));
      expect(await answer(port)).toBe('b1');
      expect(second.relay).toBe(relay);
    },
  );

  // systemd's own implementation of the protocol (LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES), where installed.
  const activate = spawnSync('systemd-socket-activate', ['--version']);
  it.skipIf(activate.error !== undefined)('adopts a socket passed by systemd-socket-activate', async () => {
    const b = await backend();
    const port = await closedPort();
    // It starts the service at the first connection, which then waits in the backlog for sluice.
    const first = (async () => {
      for (let i = 0; i < 100; i++) {
        const reply = await answer(port);
        if (reply !== undefined) return reply;
        await new Promise((r) => setTimeout(r, 50)); // refused: not listening yet
      }
      return undefined;
    })();
    const p = await spawnSluice(yaml(port, b.address), 15_000, [
      'systemd-socket-activate',
      '--listen',
      `127.0.0.1:${port}`,
      '--fdname',
      'web',
    ]);
    open.procs.push(p);
    const bound = p.logs.find((l) => l.msg === 'listener bound' && l.listener === 'web');
    expect(bound?.socket).toBe('systemd');
    expect(await first).toBe('b1');
    expect(await answer(port)).toBe('b1');
  });

  it('warns about a passed socket that no listener names, and serves the others', async () => {
    const b = await backend();
    const port = await closedPort();
    const spare = await closedPort();
    const p = await spawnSluice(yaml(port, b.address), 15_000, held(port, spare));
    open.procs.push(p);
    const warned = await p.waitForLog((l) => l.level === 'warn' && typeof l.socket === 'string');
    expect(warned.socket).toBe(`tcp 127.0.0.1:${spare} (descriptor 4)`);
    expect(String(warned.msg)).toMatch(/no TCP listener binds/);
    expect(await answer(port)).toBe('b1');
  });

  it.each(['splice', 'stream'])(
    'workers: 2 share the passed socket, and a killed worker leaves no queued connection behind (relay: %s)',
    async (relay) => {
      const b = await backend();
      const port = await closedPort();
      const p = await spawnSluice(yaml(port, b.address, 2, relay), 20_000, held(port));
      open.procs.push(p);
      const adopted = (): number[] => [
        ...new Set(
          p.logs
            .filter((l) => l.msg === 'listener bound' && l.socket === 'systemd')
            .map((l) => Number(l.pid)),
        ),
      ];
      await waitFor(() => adopted().length === 2, 5000, 'both workers adopted the socket');
      // The splice relay watches the shared socket so that a connection wakes one worker.
      if (relay === 'splice') for (const pid of adopted()) expect(exclusiveWatches(pid)).toBe(1);
      // One queue for both: nothing for a reuseport group to lose, so no warning about it.
      expect(p.logs.some((l) => l.sysctl === 'net.ipv4.tcp_migrate_req')).toBe(false);
      const [victim = 0] = adopted();
      process.kill(victim, 'SIGSTOP');
      const exchanges = Array.from({ length: 40 }, () => answer(port));
      await new Promise((r) => setTimeout(r, 500));
      process.kill(victim, 'SIGKILL');
      expect(await Promise.all(exchanges)).toEqual(new Array<string>(40).fill('b1'));
    },
  );
});
