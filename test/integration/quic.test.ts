import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import { UdpListener } from '../../src/listener/udp.js';
import { encodePlaintextCid } from '../../src/protocol/quic.js';
import { waitFor } from '../support/net.js';
import {
  oneRttDcids,
  requireNgtcp2,
  runQuicClient,
  startQuicServer,
  type QuicServer,
} from '../support/ngtcp2.js';
import { runCli, tempFile } from '../support/process.js';
import { testScope } from '../support/scope.js';
import type { TestRuntime } from '../support/runtime.js';
import { longPacket, shortPacket } from '../support/quic-packets.js';

/*
 * QUIC-aware UDP listeners. The first suite runs a real QUIC stack that this project did not
 * write (ngtcp2's HTTP/3 example server and client, Debian packages) through sluice; the second
 * uses small QUIC-shaped peers to reach what ngtcp2's server cannot do: connection IDs that
 * carry a QUIC-LB server ID. Every case runs on both relays.
 */

const scope = testScope();

function config(
  relay: string,
  servers: readonly { address: string }[],
  quic: string,
  extra: (address: string) => string = () => '',
): string {
  return `relay: ${relay}
listeners:
  - name: h3
    protocol: udp
    bind: "127.0.0.1:0"
    pool: h3
    udp: { flow_idle: 1500ms }
    quic: { ${quic} }
pools:
  - name: h3
    algorithm: maglev
    hash_key: source-ip-port
    backends: [${servers.map((s) => `{ address: "${s.address}"${extra(s.address)} }`).join(', ')}]
`;
}

async function servers(n: number): Promise<QuicServer[]> {
  const list = await Promise.all(Array.from({ length: n }, (_, i) => startQuicServer(`backend-${i + 1}`)));
  for (const s of list) scope.defer(() => s.close());
  return list;
}

const flowLines = (rt: TestRuntime): Record<string, unknown>[] =>
  rt.logs.lines.filter((l) => l.msg === 'flow');

describe.each(['splice', 'stream'])('HTTP/3 through a QUIC listener, ngtcp2 (relay: %s)', (relay) => {
  beforeAll(() => requireNgtcp2());

  it('routes each connection by the hash of its first DCID: the same DCID reaches the same backend on two replicas with no shared state', async () => {
    const backends = await servers(3);
    const cfg = config(relay, backends, 'enabled: true');
    const [a, b] = [await scope.lb(cfg), await scope.lb(cfg)];
    const dcids = [
      '0102030405060708',
      'a0a1a2a3a4a5a6a7a8',
      '5555555555555555ffff',
      'c0ffee00c0ffee00c0ffee',
    ];
    const seen: string[] = [];
    for (const rt of [a, b]) {
      for (const dcid of dcids) {
        const run = await runQuicClient(rt.port('h3'), ['/who'], [`--dcid=${dcid}`]);
        expect(run.code, run.log.slice(-2000)).toBe(0);
        seen.push(run.files.get('who')?.toString() ?? '');
      }
    }
    // Replica b, which never saw these connections, sent each DCID where replica a did.
    expect(seen.slice(4)).toEqual(seen.slice(0, 4));
    for (const who of seen) expect(backends.map((s) => s.name)).toContain(who);
    for (const rt of [a, b])
      expect(await rt.metric('sluice_udp_quic_flows_total', { listener: 'h3', method: 'dcid-hash' })).toBe(4);
    await waitFor(() => flowLines(a).length === 4, 10_000);
    const lines = flowLines(a);
    expect(lines.map((l) => l.route)).toEqual(['dcid-hash', 'dcid-hash', 'dcid-hash', 'dcid-hash']);
    // The access line carries the first 8 octets of the DCID that made the flow.
    expect(lines.map((l) => l.cid).sort()).toEqual(dcids.map((d) => d.slice(0, 16)).sort());
  });

  it('NAT rebinding mid-connection: the rest of the transfer reaches the client at its new address', async () => {
    const backends = await servers(3);
    // unroutable: drop, so only routing by connection ID can carry the new address's packets.
    const rt = await scope.lb(config(relay, backends, 'unroutable: drop'));
    const run = await runQuicClient(
      rt.port('h3'),
      ['/who', '/big'],
      ['--change-local-addr=100ms', '--nat-rebinding', '--delay-stream=400ms'],
    );
    expect(run.code, run.log.slice(-3000)).toBe(0);
    expect(run.log).toMatch(/Local address is now \[127\.0\.0\.1\]:\d+/);
    // Both requests went out after the rebinding, with the DCID the handshake ended on.
    expect(oneRttDcids(run.log)).toHaveLength(1);
    const who = run.files.get('who')?.toString();
    const server = backends.find((s) => s.name === who);
    expect(server, `who: ${who}`).toBeDefined();
    expect(run.files.get('big')?.equals(server?.big ?? Buffer.alloc(0))).toBe(true);
    expect(await rt.metric('sluice_udp_quic_migrations_total', { listener: 'h3' })).toBeGreaterThanOrEqual(1);
    expect(
      await rt.metric('sluice_udp_quic_flows_total', { listener: 'h3', method: 'known-cid' }),
    ).toBeGreaterThanOrEqual(1);
    expect(await rt.metric('sluice_udp_quic_flows_total', { listener: 'h3', method: 'dcid-hash' })).toBe(1);
    expect(await rt.metric('sluice_udp_quic_flows_total', { listener: 'h3', method: 'address' })).toBe(0);
    // Every flow of the connection (one per client address) went to the backend that answered.
    await waitFor(() => flowLines(rt).length >= 2, 10_000);
    const lines = flowLines(rt);
    expect(new Set(lines.map((l) => l.backend))).toEqual(new Set([server?.address]));
    expect(lines.map((l) => l.route).sort()).toContain('known-cid');
  });

  it('NAT rebinding mid-upload: the rest of an 8 MB request body goes to the same backend from the new address', async () => {
    const backends = await servers(3);
    const rt = await scope.lb(config(relay, backends, 'unroutable: drop'));
    const body = tempFile('body.bin', '');
    writeFileSync(body, randomBytes(8 * 1024 * 1024));
    const run = await runQuicClient(
      rt.port('h3'),
      ['/who'],
      ['--change-local-addr=20ms', '--nat-rebinding', '-m', 'POST', '-d', body],
    );
    expect(run.code, run.log.slice(-3000)).toBe(0);
    // The client changed address while its upload ran, and sent body data after the change.
    const changed = run.log.indexOf('Changing local address');
    expect(changed).toBeGreaterThan(0);
    expect(
      run.log.slice(changed).match(/frm tx \d+ 1RTT STREAM\(0x0[89a-f]\) id=0x0 /g)?.length ?? 0,
    ).toBeGreaterThan(10);
    expect(backends.map((s) => s.name)).toContain(run.files.get('who')?.toString());
    expect(await rt.metric('sluice_udp_quic_migrations_total', { listener: 'h3' })).toBeGreaterThanOrEqual(1);
    await waitFor(() => flowLines(rt).length >= 2, 10_000);
    expect(new Set(flowLines(rt).map((l) => l.backend)).size).toBe(1);
  });

  it('active migration switches to a connection ID the server chose unseen: without server IDs it is unroutable (counted, dropped)', async () => {
    const backends = await servers(2);
    const rt = await scope.lb(config(relay, backends, 'unroutable: drop'));
    const run = await runQuicClient(
      rt.port('h3'),
      ['/who'],
      ['--change-local-addr=100ms', '--delay-stream=400ms', '--timeout=2s'],
      10_000,
    );
    // ngtcp2's server issues random connection IDs (no QUIC-LB): the client's new DCID after
    // migrating names no backend sluice can know of.
    const dcids = oneRttDcids(run.log);
    expect(dcids.length).toBeGreaterThanOrEqual(2);
    await waitFor(
      async () =>
        (await rt.metric('sluice_udp_quic_unroutable_total', { listener: 'h3', reason: 'unknown_cid' })) > 0,
      5000,
    );
    expect(await rt.metric('sluice_udp_quic_flows_total', { listener: 'h3', method: 'address' })).toBe(0);
    expect(await rt.metric('sluice_udp_quic_flows_total', { listener: 'h3', method: 'known-cid' })).toBe(0);
  });
});

// ---- QUIC-shaped peers: QUIC-LB server IDs, replicas, unroutable datagrams ----

interface LbBackend {
  readonly name: string;
  readonly address: string;
  /** The connection ID it chose (QUIC-LB plaintext with its server ID, or random). */
  readonly cid: Buffer;
  /** Payloads of the short-header packets it accepted (DCID = its cid). */
  readonly accepted: string[];
  /** Short-header packets with another DCID (a wrong pick). */
  readonly foreign: number;
}

/**
 * A QUIC-shaped server: answers a long header with a long header whose SCID is its own
 * connection ID (as a server does in its Initial/Handshake), and a short header carrying that
 * ID with `ok:<name>:<payload>`. `serverId` makes that ID a QUIC-LB plaintext one (config
 * rotation 0); without it the ID is random, as ngtcp2's are.
 */
async function lbBackend(name: string, serverId?: string): Promise<LbBackend> {
  const socket = dgram.createSocket('udp4');
  const cid =
    serverId === undefined
      ? randomBytes(8)
      : encodePlaintextCid({
          configRotation: 0,
          serverId: Buffer.from(serverId, 'hex'),
          nonce: randomBytes(5),
          encodeLength: true,
        });
  const state = { name, address: '', cid, accepted: [] as string[], foreign: 0 };
  socket.on('message', (msg, rinfo) => {
    if ((msg[0]! & 0x80) !== 0) {
      const dcidLen = msg[5]!;
      const scid = msg.subarray(7 + dcidLen, 7 + dcidLen + msg[6 + dcidLen]!);
      socket.send(longPacket(scid, cid, `hello:${name}`), rinfo.port, rinfo.address);
      return;
    }
    if (!msg.subarray(1, 1 + cid.length).equals(cid)) {
      state.foreign++;
      return;
    }
    const payload = msg.subarray(1 + cid.length).toString();
    state.accepted.push(payload);
    socket.send(shortPacket(Buffer.alloc(0), `ok:${name}:${payload}`), rinfo.port, rinfo.address);
  });
  socket.bind(0, '127.0.0.1');
  await once(socket, 'listening');
  scope.defer(() => new Promise<void>((resolve) => socket.close(() => resolve())));
  state.address = `127.0.0.1:${socket.address().port}`;
  return state;
}

/** A client socket, and a forwarder in front of it whose path to sluice can be switched. */
async function forwardedClient(): Promise<{
  send(packet: Buffer): void;
  via(port: number): void;
  replies: string[];
  longReplies: Buffer[];
}> {
  const client = dgram.createSocket('udp4');
  const forwarder = dgram.createSocket('udp4');
  for (const s of [client, forwarder]) {
    s.bind(0, '127.0.0.1');
    await once(s, 'listening');
    scope.defer(() => new Promise<void>((resolve) => s.close(() => resolve())));
  }
  let target = 0;
  const replies: string[] = [];
  const longReplies: Buffer[] = [];
  forwarder.on('message', (msg, rinfo) => {
    // From the client: on to the current sluice; from a sluice: back to the client.
    if (rinfo.port === client.address().port) forwarder.send(msg, target, '127.0.0.1');
    else forwarder.send(msg, client.address().port, '127.0.0.1');
  });
  client.on('message', (msg) => {
    if ((msg[0]! & 0x80) !== 0) longReplies.push(msg);
    else replies.push(msg.subarray(1).toString());
  });
  return {
    send: (packet) => client.send(packet, forwarder.address().port, '127.0.0.1'),
    via: (port) => void (target = port),
    replies,
    longReplies,
  };
}

/** The SCID of a long-header reply. */
function scidOf(packet: Buffer): Buffer {
  const dcidLen = packet[5]!;
  return packet.subarray(7 + dcidLen, 7 + dcidLen + packet[6 + dcidLen]!);
}

describe.each(['splice', 'stream'])(
  'QUIC-LB server IDs, replicas and unroutable datagrams (relay: %s)',
  (relay) => {
    it('a forwarder switching replicas mid-connection: the replica that never saw it routes by the server ID', async () => {
      const ids = ['a1a1', 'b2b2', 'c3c3'];
      const backends = await Promise.all(ids.map((id, i) => lbBackend(`b${i + 1}`, id)));
      const sid = (address: string): string => ids[backends.findIndex((x) => x.address === address)] ?? '';
      const cfg = config(
        relay,
        backends,
        'server_id: { length: 2 }',
        (address) => `, server_id: "${sid(address)}"`,
      );
      const [a, b] = [await scope.lb(cfg), await scope.lb(cfg)];
      const c = await forwardedClient();
      c.via(a.port('h3'));
      c.send(longPacket(randomBytes(8), randomBytes(8), 'initial'));
      await waitFor(() => c.longReplies.length === 1, 5000);
      const serverCid = scidOf(c.longReplies[0]!);
      const chosen = backends.find((x) => x.cid.equals(serverCid));
      expect(chosen).toBeDefined();
      for (let i = 0; i < 5; i++) c.send(shortPacket(serverCid, `a${i}`));
      await waitFor(() => c.replies.length === 5, 5000);
      c.via(b.port('h3'));
      for (let i = 0; i < 5; i++) c.send(shortPacket(serverCid, `b${i}`));
      await waitFor(() => c.replies.length === 10, 5000);
      expect(chosen?.accepted).toEqual(['a0', 'a1', 'a2', 'a3', 'a4', 'b0', 'b1', 'b2', 'b3', 'b4']);
      expect(backends.reduce((n, x) => n + x.foreign, 0)).toBe(0);
      expect(c.replies.every((r) => r.startsWith(`ok:${chosen?.name}:`))).toBe(true);
      expect(await a.metric('sluice_udp_quic_flows_total', { listener: 'h3', method: 'dcid-hash' })).toBe(1);
      expect(await b.metric('sluice_udp_quic_flows_total', { listener: 'h3', method: 'server-id' })).toBe(1);
      expect(await b.metric('sluice_udp_quic_migrations_total', { listener: 'h3' })).toBe(1);
    });

    it('learns the connection ID a backend chose from its long-header reply, and routes it from a new address', async () => {
      const backends = await Promise.all(['x', 'y', 'z'].map((n) => lbBackend(n)));
      const rt = await scope.lb(config(relay, backends, 'unroutable: drop'));
      const c = await forwardedClient();
      c.via(rt.port('h3'));
      c.send(longPacket(randomBytes(8), randomBytes(8), 'initial'));
      await waitFor(() => c.longReplies.length === 1, 5000);
      const serverCid = scidOf(c.longReplies[0]!);
      // A second client socket (a new address) sends with the learned ID.
      const moved = await forwardedClient();
      moved.via(rt.port('h3'));
      for (let i = 0; i < 3; i++) moved.send(shortPacket(serverCid, `m${i}`));
      await waitFor(() => moved.replies.length === 3, 5000);
      expect(backends.find((x) => x.cid.equals(serverCid))?.accepted).toEqual(['m0', 'm1', 'm2']);
      expect(await rt.metric('sluice_udp_quic_flows_total', { listener: 'h3', method: 'known-cid' })).toBe(1);
      expect(await rt.metric('sluice_udp_quic_migrations_total', { listener: 'h3' })).toBe(1);
    });

    it('only the first datagram of a client address goes through the listener; the rest stay in the relay', async () => {
      const backends = await Promise.all(['x', 'y'].map((n) => lbBackend(n)));
      const rt = await scope.lb(config(relay, backends, 'unroutable: drop'));
      const listener = rt.runtime.listeners.get('h3');
      if (!(listener instanceof UdpListener)) throw new Error('not a UDP listener');
      // The splice relay hands JavaScript only datagrams of client addresses without a flow.
      const seen = { n: 0 };
      const original = listener.datagram.bind(listener);
      listener.datagram = (ip, port, payload) => {
        seen.n++;
        original(ip, port, payload);
      };
      const c = await forwardedClient();
      c.via(rt.port('h3'));
      c.send(longPacket(randomBytes(8), randomBytes(8), 'initial'));
      await waitFor(() => c.longReplies.length === 1, 5000);
      const serverCid = scidOf(c.longReplies[0]!);
      for (let i = 0; i < 50; i++) c.send(shortPacket(serverCid, `p${i}`));
      await waitFor(() => c.replies.length === 50, 5000);
      expect(seen.n).toBe(relay === 'splice' ? 1 : 0);
      expect(listener.native !== undefined).toBe(relay === 'splice');
    });

    it.each(['drop', 'flow'])(
      'unroutable: %s — not QUIC, Version Negotiation from a client, unknown connection IDs',
      async (mode) => {
        const backends = await Promise.all(['x', 'y'].map((n) => lbBackend(n)));
        const rt = await scope.lb(config(relay, backends, `unroutable: ${mode}`));
        const sends: Buffer[] = [
          Buffer.alloc(0), // not_quic: empty
          Buffer.from([0xc0, 0, 0, 0]), // not_quic: a long header cut inside its version
          longPacket(Buffer.alloc(4, 1), Buffer.alloc(4, 2), 'vn').fill(0, 1, 5), // version 0
          shortPacket(randomBytes(8), 'stray'), // unknown_cid
        ];
        for (const packet of sends) {
          const c = await forwardedClient();
          c.via(rt.port('h3'));
          c.send(packet);
        }
        const m = (reason: string): Promise<number> =>
          rt.metric('sluice_udp_quic_unroutable_total', { listener: 'h3', reason });
        await waitFor(async () => (await m('unknown_cid')) === 1, 5000);
        expect(await m('not_quic')).toBe(2);
        expect(await m('version_negotiation')).toBe(1);
        const byAddress = await rt.metric('sluice_udp_quic_flows_total', {
          listener: 'h3',
          method: 'address',
        });
        expect(byAddress).toBe(mode === 'drop' ? 0 : 4);
        expect(await rt.metric('sluice_listener_connections_total', { listener: 'h3' })).toBe(
          mode === 'drop' ? 0 : 4,
        );
      },
    );
  },
);

describe('sluice validate', () => {
  it('exits 78 naming each bad quic key', async () => {
    const path = tempFile(
      'quic.yaml',
      `listeners:
  - { name: h3, protocol: udp, bind: "127.0.0.1:443", pool: p, quic: { server_id: { length: 2 } } }
pools:
  - { name: p, algorithm: round-robin, backends: [{ address: "127.0.0.1:8443", server_id: "a1" }] }
`,
    );
    const r = await runCli(['validate', '-c', path]);
    expect(r.code).toBe(78);
    expect(r.stderr).toContain(
      'listeners[0].quic: pool "p" uses round-robin: routing by connection ID needs algorithm maglev or ring-hash',
    );
    expect(r.stderr).toContain('pools[0].backends[0].server_id: expected 2 octet(s)');
  });
});
