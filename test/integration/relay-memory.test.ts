import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import type { TestServer } from '../support/net.js';
import { startServer, waitFor } from '../support/net.js';
import type { SluiceProcess } from '../support/process.js';
import { spawnSluice, tempFile } from '../support/process.js';

/**
 * Memory of a forked `sluice run` while clients push into a backend that never reads, on each
 * relay. The process runs with --expose-gc and collects on SIGUSR2 (a hook loaded with --import),
 * so what is measured is what sluice holds, not the garbage of the bytes it relayed before the
 * flow stalled (V8 collects that only once some 64 MiB of it has piled up, process-wide).
 */

const N = 50;
const KiB = 1024;
const MiB = 1024 * KiB;

const open: { procs: SluiceProcess[]; servers: TestServer[]; clients: net.Socket[] } = {
  procs: [],
  servers: [],
  clients: [],
};
afterEach(async () => {
  for (const c of open.clients.splice(0)) c.destroy();
  for (const p of open.procs.splice(0)) p.kill('SIGKILL');
  for (const s of open.servers.splice(0)) await s.close();
});

/** One /metrics sample, process-wide (0 when absent). */
async function sample(adminUrl: string, name: string): Promise<number> {
  const text = await (await fetch(`${adminUrl}/metrics`)).text();
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
  return Number(m?.[1] ?? 0);
}

/**
 * Collects garbage in the sluice process, then reads its external (Buffer) memory and RSS; three
 * times, keeping the least of each. Garbage only adds, and on a busy machine the collection may
 * not have run by the time a sample is read, so the least is what sluice holds.
 */
async function collected(p: SluiceProcess): Promise<{ external: number; rss: number }> {
  let external = Infinity;
  let rss = Infinity;
  for (let i = 0; i < 3; i++) {
    p.child.kill('SIGUSR2');
    await new Promise((r) => setTimeout(r, 300)); // the signal's handler runs on a later loop turn
    external = Math.min(external, await sample(p.adminUrl, 'sluice_nodejs_external_memory_bytes'));
    rss = Math.min(rss, await sample(p.adminUrl, 'sluice_process_resident_memory_bytes'));
  }
  return { external, rss };
}

/** Clients that write 64 KiB chunks for as long as the socket takes them. */
function pushers(port: number): net.Socket[] {
  const chunk = Buffer.alloc(64 * KiB, 0x62);
  return Array.from({ length: N }, () => {
    const c = net.connect({ port, host: '127.0.0.1' });
    c.on('error', () => undefined);
    const pump = (): void => {
      while (!c.destroyed && c.write(chunk));
    };
    c.on('connect', pump);
    c.on('drain', pump);
    open.clients.push(c);
    return c;
  });
}

/** Resolves once what the clients handed to their kernel stops growing (the flow has stalled). */
async function stalled(clients: readonly net.Socket[]): Promise<void> {
  let high = -1;
  let flat = 0;
  await waitFor(
    async () => {
      const sent = clients.reduce((n, c) => n + c.bytesWritten - c.writableLength, 0);
      flat = sent > high ? 0 : flat + 1;
      high = Math.max(high, sent);
      await new Promise((r) => setTimeout(r, 250));
      return flat >= 3;
    },
    30_000,
    'the clients to stall',
  );
}

describe.each(['stream', 'splice'] as const)(
  'memory under a backend that never reads (relay: %s)',
  (relay) => {
    it(`holds less than 2 × (16 + 64) KiB per stalled session (${N} sessions)`, async () => {
      const backend = await startServer((s) => s.pause());
      open.servers.push(backend);
      const hook = tempFile('gc-on-signal.mjs', "process.on('SIGUSR2', () => globalThis.gc());\n");
      const p = await spawnSluice(
        `admin: { listen: "127.0.0.1:0" }
log: { level: info, access_log: false }
relay: ${relay}
listeners: [{ name: t, bind: "127.0.0.1:0", pool: p }]
pools: [{ name: p, health: { active: { type: none } }, backends: [{ address: "${backend.address}" }] }]
`,
        15_000,
        [],
        ['--expose-gc', '--import', hook],
      );
      open.procs.push(p);
      const before = await collected(p);
      const clients = pushers(p.ports.get('t') ?? 0);
      await stalled(clients);
      const after = await collected(p);
      const sent = clients.reduce((n, c) => n + c.bytesWritten - c.writableLength, 0);
      // What the clients pushed went on to the kernel's buffers, not to sluice's.
      expect(sent).toBeGreaterThan(N * MiB);
      // The bound is 160 KiB per session in Buffers (none with the splice relay); the margin is
      // for the sockets' own native memory.
      expect((after.external - before.external) / N).toBeLessThan(256 * KiB);
      // RSS keeps the pages of the relayed bytes' garbage (the allocator does not give them back):
      // a wide margin, which an unbounded relay (megabytes per session) would still cross.
      expect(after.rss - before.rss).toBeLessThan(N * MiB + 128 * MiB);
    });
  },
);
