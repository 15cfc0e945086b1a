import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { QuicRouter, type QuicRoute } from '../../src/listener/quic-router.js';
import { encodePlaintextCid } from '../../src/protocol/quic.js';
import type { Flow } from '../../src/proxy/flow.js';
import { Metrics } from '../../src/telemetry/metrics.js';
import { Pool } from '../../src/upstream/pool.js';
import { systemClock } from '../../src/util/clock.js';
import { longPacket, shortPacket } from '../support/quic-packets.js';

const cfg = parseConfigText(`listeners:
  - { name: h3, protocol: udp, bind: "127.0.0.1:0", pool: p, quic: { server_id: { length: 1, config_rotation: 2 } } }
pools:
  - name: p
    algorithm: maglev
    backends:
      - { address: "10.0.0.1:443", server_id: "01" }
      - { address: "10.0.0.2:443", server_id: "02" }
      - { address: "10.0.0.3:443" }
`);

function setup(): { router: QuicRouter; pool: Pool; metrics: Metrics } {
  const metrics = new Metrics(
    { backends: () => [], udpFlows: () => [], storeUp: () => true },
    { defaultMetrics: false },
  );
  const pool = new Pool(cfg.pools[0]!, systemClock, Math.random);
  const quic = cfg.listeners[0]!.quic!;
  return { router: new QuicRouter('h3', quic, metrics), pool, metrics };
}

const flow = (): Flow => ({}) as Flow;
const long = (dcid: Buffer, scid?: Buffer): Buffer => longPacket(dcid, scid);
const short = (dcid: Buffer): Buffer => shortPacket(dcid, 'payload');

function backendOf(r: QuicRoute): string | undefined {
  return r.kind === 'backend' ? r.backend.address : undefined;
}

describe('QuicRouter', () => {
  it('routes a first flight by DCID hash, the same on every router built from the same pool', () => {
    const a = setup();
    const b = setup();
    for (let i = 0; i < 50; i++) {
      const packet = long(Buffer.from(`dcid-${i}-xyz`));
      const ra = a.router.route(packet, a.pool, '127.0.0.1', 40_000 + i);
      const rb = b.router.route(packet, b.pool, '127.0.0.9', 50_000 + i);
      expect(ra.kind === 'backend' && ra.method).toBe('dcid-hash');
      expect(backendOf(ra)).toBe(backendOf(rb));
    }
  });

  it('files the first DCID and the learned server IDs while the connection has flows, then forgets them', () => {
    const { router, pool } = setup();
    const first = flow();
    const dcid = Buffer.from('0123456789abcdef', 'hex');
    const route = router.route(long(dcid), pool, '127.0.0.1', 40_000);
    router.attach(first, route);
    const serverCid = Buffer.from('f0f1f2f3f4f5f6f7f8f9', 'hex');
    router.learn(first, long(Buffer.alloc(0), serverCid), 7, serverCid.length);
    expect(router.size).toBe(2);
    // A short header from a new address with the learned ID (10 octets) or the first one (8).
    for (const id of [serverCid, dcid]) {
      const r = router.route(short(id), pool, '127.0.0.2', 40_001);
      expect(r.kind === 'backend' && r.method).toBe('known-cid');
      expect(backendOf(r)).toBe(backendOf(route));
    }
    const second = flow();
    router.attach(second, router.route(short(serverCid), pool, '127.0.0.2', 40_001));
    router.detach(first);
    expect(router.size).toBe(2);
    router.detach(second);
    expect(router.size).toBe(0);
    expect(router.route(short(serverCid), pool, '127.0.0.3', 40_002)).toEqual({ kind: 'address' });
  });

  it('keeps at most 8 connection IDs per connection', () => {
    const { router, pool } = setup();
    const f = flow();
    router.attach(f, router.route(long(Buffer.alloc(8, 9)), pool, '127.0.0.1', 40_000));
    for (let i = 0; i < 20; i++) router.learn(f, Buffer.alloc(8, i + 20), 0, 8);
    expect(router.size).toBe(8);
    router.learn(f, Buffer.alloc(21, 1), 0, 21); // longer than QUIC v1 allows: not learned
    expect(router.size).toBe(8);
    // A first DCID longer than 20 octets is routed by its hash but not filed.
    const other = flow();
    const route = router.route(long(Buffer.alloc(30, 3)), pool, '127.0.0.1', 40_001);
    expect(route.kind === 'backend' && route.method).toBe('dcid-hash');
    router.attach(other, route);
    expect(router.size).toBe(8);
  });

  it('routes a QUIC-LB server ID of the configured config rotation, and only that', () => {
    const { router, pool } = setup();
    const cid = (cr: number, sid: string): Buffer =>
      encodePlaintextCid({
        configRotation: cr,
        serverId: Buffer.from(sid, 'hex'),
        nonce: Buffer.alloc(6, 7),
      });
    expect(backendOf(router.route(short(cid(2, '02')), pool, '127.0.0.1', 40_000))).toBe('10.0.0.2:443');
    expect(backendOf(router.route(long(cid(2, '01')), pool, '127.0.0.1', 40_000))).toBe('10.0.0.1:443');
    // Another rotation, an unknown server ID: not routed by server ID.
    expect(router.route(short(cid(1, '02')), pool, '127.0.0.1', 40_000)).toEqual({ kind: 'address' });
    expect(router.route(short(cid(2, '03')), pool, '127.0.0.1', 40_000)).toEqual({ kind: 'address' });
  });

  it('counts what it cannot route by reason', async () => {
    const { router, pool, metrics } = setup();
    router.route(Buffer.alloc(0), pool, '127.0.0.1', 40_000);
    router.route(Buffer.from([0x80, 0, 0]), pool, '127.0.0.1', 40_000);
    router.route(long(Buffer.alloc(4)).fill(0, 1, 5), pool, '127.0.0.1', 40_000);
    router.route(long(Buffer.alloc(0)), pool, '127.0.0.1', 40_000);
    router.route(short(Buffer.alloc(8, 0xee)), pool, '127.0.0.1', 40_000);
    const values =
      (await metrics.registry.getSingleMetric('sluice_udp_quic_unroutable_total')?.get())?.values ?? [];
    const by: Record<string, number> = {};
    for (const v of values) by[String(v.labels.reason)] = v.value;
    expect(by).toEqual({ not_quic: 2, version_negotiation: 1, unknown_cid: 2 });
  });

  it('fuzz: any datagram gets a route, never an exception', () => {
    const { router, pool } = setup();
    const f = flow();
    router.attach(f, router.route(long(Buffer.alloc(8, 1)), pool, '127.0.0.1', 40_000));
    router.learn(f, Buffer.alloc(5, 2), 0, 5);
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
        const r = router.route(bytes, pool, '127.0.0.1', 40_001);
        expect(['backend', 'address', 'drop']).toContain(r.kind);
      }),
      { numRuns: 3000 },
    );
  });
});
