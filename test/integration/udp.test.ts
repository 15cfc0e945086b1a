import dgram from 'node:dgram';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { LogSink } from '../support/log-sink.js';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import type { PoolConfig } from '../../src/config/schema.js';
import { UdpListener } from '../../src/listener/udp.js';
import { parseProxyHeader, type ProxyHeader } from '../../src/protocol/proxy-parse.js';
import { REFUSALS_TO_CLOSE } from '../../src/proxy/flow.js';
import { loadSpliceRelay } from '../../src/relay/binding.js';
import { createLogger } from '../../src/telemetry/logger.js';
import type { LogLevel } from '../../src/telemetry/logger.js';
import { Metrics } from '../../src/telemetry/metrics.js';
import type { Backend } from '../../src/upstream/backend.js';
import { Pool } from '../../src/upstream/pool.js';
import { systemClock } from '../../src/util/clock.js';
import { Sweeper } from '../../src/util/sweeper.js';

/** Real dgram sockets on loopback: test backends, clients, and a UdpListener built in-process. */

const WAIT = { timeout: 5_000, interval: 10 };
const MAX_UDP4_PAYLOAD = 65_507;
/** Binding a source port below 1024 needs root (or CAP_NET_BIND_SERVICE). */
const root = process.getuid?.() === 0;

const cleanup: (() => void | Promise<void>)[] = [];

afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn();
});

// ---- peers ----

interface TestBackend {
  readonly name: string;
  readonly port: number;
  readonly address: string;
  /** Client-side source port (from the PROXY header when there is one, else the flow socket) per datagram. */
  readonly received: { from: number; size: number; header: ProxyHeader | undefined }[];
  readonly socket: dgram.Socket;
}

/** A UDP echo backend; with `proxy` it strips and records a PROXY v2 header from every datagram. */
async function udpBackend(name: string, host = '127.0.0.1', proxy = false): Promise<TestBackend> {
  const socket = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4');
  const received: TestBackend['received'] = [];
  socket.on('error', () => undefined);
  socket.on('message', (msg, rinfo) => {
    let payload = msg;
    let header: ProxyHeader | undefined;
    if (proxy) {
      const r = parseProxyHeader(msg, 4096);
      if (r.kind !== 'done') return;
      header = r.header;
      payload = msg.subarray(r.length);
    }
    received.push({ from: header?.source?.port ?? rinfo.port, size: payload.length, header });
    socket.send(payload, rinfo.port, rinfo.address);
  });
  socket.bind(0, host);
  await once(socket, 'listening');
  cleanup.push(() => void socket.close());
  const port = socket.address().port;
  return {
    name,
    port,
    address: host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`,
    received,
    socket,
  };
}

/** A UDP port with nothing bound (bound, then closed): datagrams to it draw ICMP port unreachable. */
async function closedUdpPort(host = '127.0.0.1'): Promise<number> {
  const s = dgram.createSocket('udp4');
  s.bind(0, host);
  await once(s, 'listening');
  const port = s.address().port;
  s.close();
  return port;
}

interface Client {
  readonly socket: dgram.Socket;
  readonly port: number;
  readonly replies: { data: Buffer; from: string }[];
  send(data: Buffer | string): void;
}

async function client(
  target: { host: string; port: number },
  bindHost = target.host,
  bindPort = 0,
): Promise<Client> {
  const socket = dgram.createSocket(bindHost.includes(':') ? 'udp6' : 'udp4');
  const replies: Client['replies'] = [];
  socket.on('error', () => undefined);
  socket.on('message', (data, rinfo) => replies.push({ data, from: `${rinfo.address}:${rinfo.port}` }));
  socket.bind(bindPort, bindHost);
  await once(socket, 'listening');
  cleanup.push(() => void socket.close());
  return {
    socket,
    port: socket.address().port,
    replies,
    send: (data) =>
      socket.send(typeof data === 'string' ? Buffer.from(data) : data, target.port, target.host),
  };
}

// ---- the listener under test ----

interface Harness {
  readonly listener: UdpListener;
  readonly pool: Pool;
  readonly target: { host: string; port: number };
  readonly lines: Record<string, unknown>[];
  readonly passive: { backend: string; ok: boolean }[];
  metric(name: string, labels: Record<string, string>): Promise<number>;
  flowLines(): Record<string, unknown>[];
}

interface Options {
  host?: string;
  backends: readonly string[];
  udp?: string;
  pool?: string;
  access?: string;
  passive?: (pool: Pool, b: Backend, ok: boolean) => void;
  /** Changes the parsed pool config (to reach states the config validation refuses). */
  patchPool?: (p: PoolConfig) => PoolConfig;
  overload?: { active: boolean };
  /** The process's log.level (flow lines are written whatever it is). */
  logLevel?: LogLevel;
}

async function start(o: Options): Promise<Harness> {
  const host = o.host ?? '127.0.0.1';
  const bind = host.includes(':') ? `"[${host}]:0"` : `${host}:0`;
  const cfg = parseConfigText(`
listeners:
  - name: u
    protocol: udp
    bind: ${bind}
    pool: p
    udp: { ${o.udp ?? 'flow_idle: 10s'} }
    ${o.access !== undefined ? `access: ${o.access}` : ''}
pools:
  - name: p
    ${o.pool ?? ''}
    backends: [${o.backends.map((a) => `{ address: "${a}" }`).join(', ')}]
`);
  const sink = new LogSink();
  const lines = sink.lines;
  const poolCfg = cfg.pools[0];
  const listenerCfg = cfg.listeners[0];
  if (poolCfg === undefined || listenerCfg === undefined) throw new Error('config');
  const pool = new Pool(o.patchPool?.(poolCfg) ?? poolCfg, systemClock, Math.random);
  const metrics = new Metrics(
    { backends: () => [], udpFlows: () => [], storeUp: () => true },
    { defaultMetrics: false },
  );
  const sweeper = new Sweeper(50);
  const passive: Harness['passive'] = [];
  const listener = new UdpListener(listenerCfg, {
    metrics,
    logger: createLogger(o.logLevel ?? 'info', sink),
    sweeper,
    accessLog: true,
    splice: harnessRelay === 'splice' ? spliceRelay() : undefined,
    ...(o.overload !== undefined ? { overload: o.overload } : {}),
    pool: (n) => (n === pool.name ? pool : undefined),
    passive: (p, b, ok) => {
      passive.push({ backend: b.address, ok });
      o.passive?.(p, b, ok);
    },
  });
  await listener.listen();
  cleanup.push(async () => {
    listener.closeAll('shutdown');
    await listener.close();
    sweeper.stop();
    pool.stop();
  });
  const port = Number(listener.boundAddress.slice(listener.boundAddress.lastIndexOf(':') + 1));
  const metric = async (name: string, labels: Record<string, string>): Promise<number> => {
    const values = (await metrics.registry.getSingleMetric(name)?.get())?.values ?? [];
    const hit = values.find((v) => Object.entries(labels).every(([k, want]) => v.labels[k] === want));
    return hit?.value ?? 0;
  };
  const flowLines = (): Record<string, unknown>[] => lines.filter((l) => l.msg === 'flow');
  return { listener, pool, target: { host, port }, lines, passive, metric, flowLines };
}

/** Which relay reads the listener socket in the cases below (each runs with both). */
let harnessRelay: 'splice' | 'stream' = 'stream';

function spliceRelay(): NonNullable<ReturnType<typeof loadSpliceRelay>['relay']> {
  const { relay, error } = loadSpliceRelay();
  if (relay === undefined) throw new Error(`splice relay not available: ${error}`);
  return relay;
}

// ---- tests ----

describe.each(['splice', 'stream'] as const)('relay: %s', (relay) => {
  beforeEach(() => {
    harnessRelay = relay;
  });

  describe('UDP listener: flows', () => {
    it('spreads new flows over both backends and replies from the listener address', async () => {
      const [a, b] = await Promise.all([udpBackend('a'), udpBackend('b')]);
      const h = await start({ backends: [a.address, b.address] });
      // The relay under test reads the socket: the splice relay, or Node's dgram.
      expect(h.listener.native !== undefined).toBe(relay === 'splice');
      const clients = await Promise.all(Array.from({ length: 20 }, () => client(h.target)));
      for (const c of clients) c.send('hello');
      await vi.waitFor(() => expect(clients.every((c) => c.replies.length === 1)).toBe(true), WAIT);
      for (const c of clients) expect(c.replies[0]?.from).toBe(`127.0.0.1:${h.target.port}`);
      expect(a.received.length + b.received.length).toBe(20);
      // Round-robin over two equal backends: an even split.
      expect(a.received.length).toBe(10);
      expect(h.listener.flows).toBe(20);
      expect(await h.metric('sluice_listener_connections_total', { listener: 'u' })).toBe(20);
    });

    it('keeps one source on one backend, and counts datagrams and bytes per direction', async () => {
      const [a, b] = await Promise.all([udpBackend('a'), udpBackend('b')]);
      const h = await start({ backends: [a.address, b.address] });
      const c = await client(h.target);
      for (let i = 0; i < 100; i++) c.send(`d${String(i).padStart(3, '0')}`);
      await vi.waitFor(() => expect(c.replies.length).toBe(100), WAIT);
      expect([a.received.length, b.received.length].sort((x, y) => x - y)).toEqual([0, 100]);
      expect(h.listener.flows).toBe(1);
      for (const direction of ['upstream', 'downstream']) {
        await vi.waitFor(
          async () =>
            expect(await h.metric('sluice_udp_datagrams_total', { listener: 'u', direction })).toBe(100),
          WAIT,
        );
        expect(await h.metric('sluice_bytes_total', { listener: 'u', direction })).toBe(400);
      }
    });

    it('caps replies per client datagram with udp.max_replies_per_datagram, counting the rest as amplification', async () => {
      // A backend that answers every datagram 100 times (an amplifier).
      const amp = dgram.createSocket('udp4');
      amp.on('message', (msg, rinfo) => {
        for (let i = 0; i < 100; i++) amp.send(msg, rinfo.port, rinfo.address);
      });
      amp.bind(0, '127.0.0.1');
      await once(amp, 'listening');
      cleanup.push(() => void amp.close());
      const h = await start({
        backends: [`127.0.0.1:${amp.address().port}`],
        udp: 'flow_idle: 10s, max_replies_per_datagram: 1',
      });
      const c = await client(h.target);
      for (let i = 1; i <= 3; i++) {
        c.send(`q${i}`);
        await vi.waitFor(
          async () =>
            expect(
              await h.metric('sluice_udp_dropped_total', { listener: 'u', reason: 'amplification' }),
            ).toBe(99 * i),
          WAIT,
        );
      }
      expect(c.replies.map((r) => r.data.toString())).toEqual(['q1', 'q2', 'q3']);
    });

    it('relays every reply when max_replies_per_datagram is 0 (the default)', async () => {
      const amp = dgram.createSocket('udp4');
      amp.on('message', (msg, rinfo) => {
        for (let i = 0; i < 100; i++) amp.send(msg, rinfo.port, rinfo.address);
      });
      amp.bind(0, '127.0.0.1');
      await once(amp, 'listening');
      cleanup.push(() => void amp.close());
      const h = await start({ backends: [`127.0.0.1:${amp.address().port}`] });
      const c = await client(h.target);
      c.send('q');
      await vi.waitFor(() => expect(c.replies.length).toBe(100), WAIT);
    });

    it('sizes the receive queue by who reads it: 4 MiB for the splice relay, 512 KiB for Node', async () => {
      const a = await udpBackend('a');
      const h = await start({ backends: [a.address] });
      // The kernel caps the request at net.core.rmem_max and doubles what it grants.
      const rmemMax = Number(readFileSync('/proc/sys/net/core/rmem_max', 'utf8'));
      const asked = relay === 'splice' ? 4 * 1024 * 1024 : 512 * 1024;
      expect(h.listener.downstream.getRecvBufferSize()).toBe(2 * Math.min(asked, rmemMax));
    });

    it('keeps interleaved clients apart: each datagram goes up its own flow, each reply to its own client', async () => {
      const [a, b] = await Promise.all([udpBackend('a'), udpBackend('b')]);
      const h = await start({ backends: [a.address, b.address] });
      const [c1, c2] = await Promise.all([client(h.target), client(h.target)]);
      // Alternate and repeat sources, so a datagram often comes from another client than the last.
      const order = [c1, c2, c2, c1, c2, c1, c1, c2];
      for (const [i, c] of order.entries()) c.send(`${c === c1 ? 'one' : 'two'}-${i}`);
      await vi.waitFor(() => expect(c1.replies.length + c2.replies.length).toBe(order.length), WAIT);
      expect(c1.replies.map((r) => r.data.toString())).toEqual(['one-0', 'one-3', 'one-5', 'one-6']);
      expect(c2.replies.map((r) => r.data.toString())).toEqual(['two-1', 'two-2', 'two-4', 'two-7']);
      // Round-robin: one flow per backend, each backend saw one upstream socket only.
      expect(h.listener.flows).toBe(2);
      for (const backend of [a, b]) expect(new Set(backend.received.map((r) => r.from)).size).toBe(1);
    });

    it('expires a silent flow after flow_idle, logs it, and starts a new one for the next datagram', async () => {
      const a = await udpBackend('a');
      const h = await start({ backends: [a.address], udp: 'flow_idle: 300ms' });
      const c = await client(h.target);
      c.send('one');
      await vi.waitFor(() => expect(c.replies.length).toBe(1), WAIT);
      expect(h.listener.flows).toBe(1);
      await vi.waitFor(() => expect(h.listener.flows).toBe(0), WAIT);
      const [line] = h.flowLines();
      expect(line).toMatchObject({
        listener: 'u',
        pool: 'p',
        client: `127.0.0.1:${c.port}`,
        backend: a.address,
        bytes_in: 3,
        bytes_out: 3,
        datagrams_in: 1,
        datagrams_out: 1,
        reason: 'idle_timeout',
      });
      expect(line?.duration_ms).toBeGreaterThanOrEqual(300);
      expect(h.pool.get(a.address)?.local).toBe(0);
      c.send('two');
      await vi.waitFor(() => expect(c.replies.length).toBe(2), WAIT);
      expect(await h.metric('sluice_listener_connections_total', { listener: 'u' })).toBe(2);
    });

    it('writes flow lines at log level warn: access_log alone decides', async () => {
      const a = await udpBackend('a');
      const h = await start({ backends: [a.address], udp: 'flow_idle: 200ms', logLevel: 'warn' });
      const c = await client(h.target);
      c.send('one');
      await vi.waitFor(() => expect(c.replies.length).toBe(1), WAIT);
      await vi.waitFor(() => expect(h.flowLines()).toHaveLength(1), WAIT);
      expect(h.flowLines()[0]).toMatchObject({
        level: 'info',
        listener: 'u',
        bytes_in: 3,
        reason: 'idle_timeout',
      });
      expect(h.lines.filter((l) => l.level === 'info' && l.msg !== 'flow')).toEqual([]);
    });

    it('caps the table at max_flows: a new client is dropped and counted, the existing flow keeps working', async () => {
      const a = await udpBackend('a');
      const h = await start({ backends: [a.address], udp: 'max_flows: 1' });
      const [first, second] = await Promise.all([client(h.target), client(h.target)]);
      first.send('x');
      await vi.waitFor(() => expect(first.replies.length).toBe(1), WAIT);
      second.send('y');
      await vi.waitFor(
        async () =>
          expect(
            await h.metric('sluice_listener_rejected_total', { listener: 'u', reason: 'flow_limit' }),
          ).toBe(1),
        WAIT,
      );
      first.send('z');
      await vi.waitFor(() => expect(first.replies.length).toBe(2), WAIT);
      expect(second.replies).toEqual([]);
      expect(h.listener.flows).toBe(1);
      expect(a.received).toHaveLength(2);
      expect(new Set(a.received.map((r) => r.from)).size).toBe(1);
    });

    it('counts ECONNREFUSED from a closed backend port, closes the flow after repeated refusals, and re-picks', async () => {
      const dead = await closedUdpPort();
      const live = await udpBackend('live');
      // Only the dead backend at first, so the flow surely lands there; the live one joins later.
      const h = await start({ backends: [`127.0.0.1:${dead}`] });
      const c = await client(h.target);
      for (let i = 1; i <= REFUSALS_TO_CLOSE; i++) {
        c.send(`try${i}`);
        await vi.waitFor(
          async () =>
            expect(
              await h.metric('sluice_udp_dropped_total', { listener: 'u', reason: 'econnrefused' }),
            ).toBe(i),
          WAIT,
        );
      }
      expect(h.listener.flows).toBe(0);
      expect(h.flowLines()).toEqual([
        expect.objectContaining({
          backend: `127.0.0.1:${dead}`,
          reason: 'upstream_error',
          error: 'ECONNREFUSED',
          datagrams_out: 0,
        }),
      ]);
      expect(h.passive).toEqual(
        Array.from({ length: REFUSALS_TO_CLOSE }, () => ({ backend: `127.0.0.1:${dead}`, ok: false })),
      );
      // Passive health would now eject it; stand in for that, and add a live member.
      const deadBackend = h.pool.get(`127.0.0.1:${dead}`);
      if (deadBackend === undefined) throw new Error('dead backend missing');
      deadBackend.ejectedUntil = systemClock.now() + 60_000;
      h.pool.setMembers('test', [{ address: live.address, host: '127.0.0.1', port: live.port, weight: 1 }]);
      c.send('again');
      await vi.waitFor(() => expect(c.replies.map((r) => r.data.toString())).toEqual(['again']), WAIT);
      expect(live.received).toHaveLength(1);
      expect(h.passive.at(-1)).toEqual({ backend: live.address, ok: true });
    });

    it('ends the flows of a backend marked down: the next datagram picks a ready backend', async () => {
      const [a, b] = await Promise.all([udpBackend('a'), udpBackend('b')]);
      const h = await start({ backends: [a.address, b.address] });
      const c1 = await client(h.target);
      c1.send('1');
      await vi.waitFor(() => expect(c1.replies.length).toBe(1), WAIT);
      const [onA, other] = a.received.length === 1 ? [a, b] : [b, a];
      const down = h.pool.get(onA.address);
      if (down === undefined) throw new Error('backend missing');
      down.ejectedUntil = systemClock.now() + 60_000;
      h.pool.rebuild();
      // Its flow ended at once (reason backend_down): the same client's next datagram is a new
      // flow, on the backend still ready.
      expect(h.flowLines().map((l) => l.reason)).toEqual(['backend_down']);
      c1.send('2');
      await vi.waitFor(() => expect(c1.replies.length).toBe(2), WAIT);
      expect(onA.received).toHaveLength(1);
      expect(other.received).toHaveLength(1);
      const c2 = await client(h.target);
      c2.send('3');
      await vi.waitFor(() => expect(c2.replies.length).toBe(1), WAIT);
      expect(other.received).toHaveLength(2);
    });

    it('holds a few datagrams while the upstream socket connects and counts the rest as connecting_overflow', async () => {
      const a = await udpBackend('a');
      // A host name makes connect() wait for a resolver round trip, so a burst arrives while connecting.
      const h = await start({ backends: [`localhost:${a.port}`] });
      const c = await client(h.target);
      for (let i = 0; i < 20; i++) c.send(`b${i}`);
      const overflow = (): Promise<number> =>
        h.metric('sluice_udp_dropped_total', { listener: 'u', reason: 'connecting_overflow' });
      // However the race goes, every datagram is either relayed and answered or counted as dropped.
      await vi.waitFor(async () => expect(c.replies.length + (await overflow())).toBe(20), WAIT);
      expect(c.replies.length).toBeGreaterThanOrEqual(1);
      expect(a.received.length).toBe(c.replies.length);
    });
  });

  describe('UDP listener: sizes, PROXY v2, safety', () => {
    it('forwards 0-byte and 65,507-byte datagrams both ways', async () => {
      const a = await udpBackend('a');
      const h = await start({ backends: [a.address] });
      const c = await client(h.target);
      c.send(Buffer.alloc(0));
      await vi.waitFor(() => expect(c.replies.length).toBe(1), WAIT);
      c.send(Buffer.alloc(MAX_UDP4_PAYLOAD, 7));
      await vi.waitFor(() => expect(c.replies.length).toBe(2), WAIT);
      expect(c.replies.map((r) => r.data.length)).toEqual([0, MAX_UDP4_PAYLOAD]);
      expect(c.replies[1]?.data.every((x) => x === 7)).toBe(true);
      expect(a.received.map((r) => r.size)).toEqual([0, MAX_UDP4_PAYLOAD]);
      await vi.waitFor(
        async () =>
          expect(
            await h.metric('sluice_udp_datagrams_total', { listener: 'u', direction: 'downstream' }),
          ).toBe(2),
        WAIT,
      );
    });

    it('prepends a PROXY v2 DGRAM header to every datagram; a datagram too big with it is dropped as emsgsize', async () => {
      const a = await udpBackend('a', '127.0.0.1', true);
      const h = await start({ backends: [a.address], pool: 'proxy_protocol: v2' });
      const c = await client(h.target);
      const payloads = ['first', 'second', 'third'];
      for (const p of payloads) c.send(p);
      await vi.waitFor(() => expect(c.replies.length).toBe(3), WAIT);
      // The reused [header, payload] list must not mix payloads sent back to back.
      expect(c.replies.map((r) => r.data.toString()).sort()).toEqual([...payloads].sort());
      for (const r of a.received) {
        expect(r.header).toMatchObject({
          version: 2,
          command: 'proxy',
          transport: 'dgram',
          family: 'inet',
          source: { ip: '127.0.0.1', port: c.port },
          destination: { ip: '127.0.0.1', port: h.target.port },
        });
      }
      c.send(Buffer.alloc(MAX_UDP4_PAYLOAD));
      await vi.waitFor(
        async () =>
          expect(await h.metric('sluice_udp_dropped_total', { listener: 'u', reason: 'emsgsize' })).toBe(1),
        WAIT,
      );
      c.send('after');
      await vi.waitFor(() => expect(c.replies.length).toBe(4), WAIT);
      // Byte counters count payload, not the header (reported on the next sweep).
      await vi.waitFor(
        async () =>
          expect(await h.metric('sluice_bytes_total', { listener: 'u', direction: 'upstream' })).toBe(
            'firstsecondthirdafter'.length,
          ),
        WAIT,
      );
    });

    it('sends no header for proxy_protocol v1 and warns once', async () => {
      const a = await udpBackend('a');
      // Config validation refuses v1 on a UDP pool; the listener still guards against it.
      const h = await start({ backends: [a.address], patchPool: (p) => ({ ...p, proxy_protocol: 'v1' }) });
      expect(h.lines.filter((l) => l.level === 'warn')).toHaveLength(1);
      const c = await client(h.target);
      c.send('plain');
      await vi.waitFor(() => expect(c.replies.map((r) => r.data.toString())).toEqual(['plain']), WAIT);
    });

    it.skipIf(!root)(
      'drops datagrams from its own address and port, and from privileged source ports',
      async () => {
        const a = await udpBackend('a');
        const h = await start({ backends: [a.address] });
        h.listener.downstream.send('self', h.target.port, '127.0.0.1');
        await vi.waitFor(
          async () =>
            expect(await h.metric('sluice_udp_dropped_total', { listener: 'u', reason: 'loop' })).toBe(1),
          WAIT,
        );
        const priv = await privilegedClient(h.target);
        priv.send('from a low port');
        await vi.waitFor(
          async () =>
            expect(
              await h.metric('sluice_udp_dropped_total', { listener: 'u', reason: 'privileged_source' }),
            ).toBe(1),
          WAIT,
        );
        expect(h.listener.flows).toBe(0);
        expect(a.received).toEqual([]);
      },
    );

    it.skipIf(!root)('accepts privileged source ports when drop_privileged_sources is off', async () => {
      const a = await udpBackend('a');
      const h = await start({ backends: [a.address], udp: 'drop_privileged_sources: false' });
      const priv = await privilegedClient(h.target);
      priv.send('ok');
      await vi.waitFor(() => expect(priv.replies.length).toBe(1), WAIT);
    });

    it('refuses a backend that is the listener itself (loop)', async () => {
      // A placeholder member, replaced once the listener's own port is known.
      const h = await start({ backends: ['127.0.0.1:9'] });
      h.pool.setMembers('config', [
        { address: `127.0.0.1:${h.target.port}`, host: '127.0.0.1', port: h.target.port, weight: 1 },
      ]);
      const c = await client(h.target);
      c.send('loop?');
      await vi.waitFor(
        async () =>
          expect(await h.metric('sluice_udp_dropped_total', { listener: 'u', reason: 'loop' })).toBe(1),
        WAIT,
      );
      expect(h.listener.flows).toBe(0);
    });

    it('creates no new flow while the overload guard is on, and keeps live flows', async () => {
      const a = await udpBackend('a');
      const overload = { active: false };
      const h = await start({ backends: [a.address], overload });
      const old = await client(h.target, '127.0.0.1');
      old.send('before');
      await vi.waitFor(() => expect(old.replies.length).toBe(1), WAIT);
      overload.active = true;
      const fresh = await client(h.target, '127.0.0.1');
      fresh.send('refused');
      old.send('still flowing');
      await vi.waitFor(() => expect(old.replies.length).toBe(2), WAIT);
      await vi.waitFor(
        async () =>
          expect(
            await h.metric('sluice_listener_rejected_total', { listener: 'u', reason: 'overload' }),
          ).toBe(1),
        WAIT,
      );
      expect(fresh.replies).toHaveLength(0);
      expect(h.listener.flows).toBe(1);
    });

    it('applies the ACL before creating a flow', async () => {
      const a = await udpBackend('a');
      const h = await start({ backends: [a.address], access: '{ deny: [127.0.0.9] }' });
      const denied = await client(h.target, '127.0.0.9');
      const allowed = await client(h.target, '127.0.0.1');
      denied.send('no');
      allowed.send('yes');
      await vi.waitFor(() => expect(allowed.replies.length).toBe(1), WAIT);
      await vi.waitFor(
        async () =>
          expect(await h.metric('sluice_listener_rejected_total', { listener: 'u', reason: 'acl' })).toBe(1),
        WAIT,
      );
      expect(h.listener.flows).toBe(1);
      expect(a.received).toHaveLength(1);
    });

    it('works over IPv6 [::1]', async () => {
      const a = await udpBackend('a', '::1', true);
      const h = await start({ host: '::1', backends: [a.address], pool: 'proxy_protocol: v2' });
      const c = await client(h.target);
      c.send('v6');
      await vi.waitFor(() => expect(c.replies.map((r) => r.data.toString())).toEqual(['v6']), WAIT);
      expect(c.replies[0]?.from).toBe(`::1:${h.target.port}`);
      expect(a.received[0]?.header).toMatchObject({ family: 'inet6', source: { ip: '::1', port: c.port } });
      h.listener.closeAll('shutdown');
      expect(h.flowLines()).toEqual([
        expect.objectContaining({ client: `[::1]:${c.port}`, reason: 'shutdown' }),
      ]);
    });
  });

  describe('UDP listener: drain and shutdown', () => {
    it('a drained backend keeps its flow until the drain deadline, then the flow closes as backend_drained', async () => {
      const [a, b] = await Promise.all([udpBackend('a'), udpBackend('b')]);
      const h = await start({ backends: [a.address, b.address] });
      const c = await client(h.target);
      c.send('1');
      await vi.waitFor(() => expect(c.replies.length).toBe(1), WAIT);
      const used = a.received.length === 1 ? a : b;
      const backend = h.pool.get(used.address);
      if (backend === undefined) throw new Error('backend missing');
      h.pool.setAdmin(backend, 'draining', 300);
      c.send('2');
      await vi.waitFor(() => expect(c.replies.length).toBe(2), WAIT);
      expect(used.received).toHaveLength(2);
      await vi.waitFor(() => expect(h.listener.flows).toBe(0), WAIT);
      expect(h.flowLines()).toEqual([
        expect.objectContaining({ backend: used.address, reason: 'backend_drained', datagrams_in: 2 }),
      ]);
    });

    it('close() refuses new clients but keeps live flows; closeAll ends them as shutdown', async () => {
      const a = await udpBackend('a');
      const h = await start({ backends: [a.address] });
      const [old, late] = await Promise.all([client(h.target), client(h.target)]);
      old.send('before');
      await vi.waitFor(() => expect(old.replies.length).toBe(1), WAIT);
      await h.listener.close();
      late.send('late');
      old.send('during');
      await vi.waitFor(() => expect(old.replies.length).toBe(2), WAIT);
      await vi.waitFor(
        async () =>
          expect(await h.metric('sluice_udp_dropped_total', { listener: 'u', reason: 'closing' })).toBe(1),
        WAIT,
      );
      expect(late.replies).toEqual([]);
      h.listener.closeAll('shutdown');
      expect(h.listener.openCount).toBe(0);
      expect(h.flowLines()).toEqual([
        expect.objectContaining({ reason: 'shutdown', datagrams_in: 2, datagrams_out: 2 }),
      ]);
    });
  });

  /** A client bound to a free port below 1024 (the tests run as root; a busy port is skipped). */
  async function privilegedClient(target: { host: string; port: number }): Promise<Client> {
    for (let port = 900; port < 1000; port++) {
      try {
        return await client(target, target.host, port);
      } catch {
        // in use: try the next one
      }
    }
    throw new Error('no free privileged port');
  }
});
