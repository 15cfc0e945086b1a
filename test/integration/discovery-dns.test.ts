import { createSocket } from 'node:dgram';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { DiscoveredBackend, DnsDiscoveryConfig } from '../../src/discovery/dns.js';
import { DnsDiscovery } from '../../src/discovery/dns.js';
import { TestDnsServer, encodeName } from '../support/dns-server.js';

/** Real node:dns Resolver against the test DNS server on 127.0.0.1. */

const WAIT = { timeout: 10_000, interval: 20 };

let server: TestDnsServer;
let running: DnsDiscovery[] = [];

beforeEach(async () => {
  server = await TestDnsServer.start();
});

afterEach(async () => {
  for (const d of running) d.stop();
  running = [];
  await server.close();
});

function discover(config: Partial<DnsDiscoveryConfig>) {
  const updates: string[][] = [];
  const errors: string[] = [];
  const cfg: DnsDiscoveryConfig = {
    name: 'web.test',
    type: 'A',
    port: 8443,
    interval: 100,
    weight: 1,
    servers: [{ host: '127.0.0.1', port: server.port }],
    ...config,
  };
  const discovery = new DnsDiscovery(cfg, {
    timeout: 1_000,
    onUpdate: (m: readonly DiscoveredBackend[]) => updates.push(m.map((b) => `${b.address}*${b.weight}`)),
    onError: (code) => errors.push(code),
  });
  running.push(discovery);
  return { discovery, updates, errors };
}

describe('DNS discovery against a DNS server', () => {
  it('A records', async () => {
    server.setRecords('web.test', 'A', ['127.0.0.11', '127.0.0.10']);
    const { discovery, updates } = discover({ weight: 5 });
    await discovery.start();
    expect(updates).toEqual([['127.0.0.10:8443*5', '127.0.0.11:8443*5']]);
  });

  it('AAAA records', async () => {
    server.setRecords('web.test', 'AAAA', ['fd00::b', '::1']);
    const { discovery, updates } = discover({ type: 'AAAA' });
    await discovery.start();
    expect(updates).toEqual([['[::1]:8443*1', '[fd00::b]:8443*1']]);
  });

  it('A+AAAA: both families, or one when the other has no records', async () => {
    server.setRecords('web.test', 'A', ['127.0.0.10']);
    server.setRecords('web.test', 'AAAA', ['::1']);
    server.setRecords('v4only.test', 'A', ['127.0.0.20']);
    const both = discover({ type: 'A+AAAA' });
    const v4 = discover({ type: 'A+AAAA', name: 'v4only.test' });
    await Promise.all([both.discovery.start(), v4.discovery.start()]);
    expect(both.updates).toEqual([['127.0.0.10:8443*1', '[::1]:8443*1']]);
    expect(v4.updates).toEqual([['127.0.0.20:8443*1']]);
  });

  it('SRV: targets resolved, lowest priority group used, fallback when its targets vanish', async () => {
    server.setRecords('_web._tcp.test', 'SRV', [
      { priority: 10, weight: 30, port: 9001, target: 'main-a.test' },
      { priority: 10, weight: 70, port: 9002, target: 'main-b.test' },
      { priority: 20, weight: 0, port: 9003, target: 'backup.test' },
    ]);
    server.setRecords('main-a.test', 'A', ['127.0.0.10']);
    server.setRecords('main-b.test', 'AAAA', ['::1']);
    server.setRecords('backup.test', 'A', ['127.0.0.30']);
    const { discovery, updates } = discover({ type: 'SRV', name: '_web._tcp.test', port: undefined });
    await discovery.start();
    expect(updates).toEqual([['127.0.0.10:9001*30', '[::1]:9002*70']]);
    server.deleteName('main-a.test');
    server.deleteName('main-b.test');
    await vi.waitFor(() => expect(updates).toHaveLength(2), WAIT);
    expect(updates[1]).toEqual(['127.0.0.30:9003*1']);
  });

  it('picks up a record change on a later interval', async () => {
    server.setRecords('web.test', 'A', ['127.0.0.10']);
    const { discovery, updates } = discover({});
    await discovery.start();
    server.setRecords('web.test', 'A', ['127.0.0.10', '127.0.0.11']);
    await vi.waitFor(() => expect(updates).toHaveLength(2), WAIT);
    expect(updates[1]).toEqual(['127.0.0.10:8443*1', '127.0.0.11:8443*1']);
  });

  it('keeps the last set and reports ETIMEOUT while the server is silent', async () => {
    server.setRecords('web.test', 'A', ['127.0.0.10']);
    const { discovery, updates, errors } = discover({});
    await discovery.start();
    server.mode = 'silent';
    await vi.waitFor(() => expect(errors).toContain('ETIMEOUT'), WAIT);
    expect(updates).toHaveLength(1);
    expect(discovery.members.map((m) => m.address)).toEqual(['127.0.0.10:8443']);
    server.setRecords('web.test', 'A', ['127.0.0.12']);
    server.mode = 'answer';
    await vi.waitFor(() => expect(updates).toHaveLength(2), WAIT);
    expect(updates[1]).toEqual(['127.0.0.12:8443*1']);
  });

  it.each([
    ['SERVFAIL', 'ESERVFAIL'],
    ['NXDOMAIN', 'ENOTFOUND'],
  ] as const)('keeps the last set on %s (%s)', async (what, code) => {
    server.setRecords('web.test', 'A', ['127.0.0.10']);
    const { discovery, updates, errors } = discover({});
    await discovery.start();
    if (what === 'SERVFAIL') server.mode = 'servfail';
    else server.deleteName('web.test');
    await vi.waitFor(() => expect(errors).toContain(code), WAIT);
    expect(updates).toHaveLength(1);
    expect(discovery.members).toHaveLength(1);
  });

  it('publishes nothing for a name that does not exist', async () => {
    const { discovery, updates, errors } = discover({ name: 'nowhere.test' });
    await discovery.start();
    expect(errors).toEqual(['ENOTFOUND']);
    expect(updates).toEqual([]);
  });

  it('stops asking once stopped', async () => {
    server.setRecords('web.test', 'A', ['127.0.0.10']);
    const { discovery } = discover({});
    await discovery.start();
    await vi.waitFor(() => expect(server.questions.length).toBeGreaterThanOrEqual(2), WAIT);
    discovery.stop();
    const asked = server.questions.length;
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(server.questions.length).toBe(asked);
  });
});

describe('test DNS server wire format', () => {
  /** Sends one raw query and returns the reply, or undefined when none comes within 500 ms. */
  async function exchange(query: Buffer): Promise<Buffer | undefined> {
    const client = createSocket('udp4');
    client.on('error', () => undefined);
    try {
      return await new Promise<Buffer | undefined>((resolve) => {
        const timer = setTimeout(() => resolve(undefined), 500);
        client.once('message', (msg) => {
          clearTimeout(timer);
          resolve(msg);
        });
        client.send(query, server.port, '127.0.0.1');
      });
    } finally {
      client.close();
    }
  }

  function header(id: number, qdcount: number): Buffer {
    const h = Buffer.alloc(12);
    h.writeUInt16BE(id, 0);
    h.writeUInt16BE(0x0100, 2); // RD
    h.writeUInt16BE(qdcount, 4);
    return h;
  }

  const typeClass = (type: number): Buffer => Buffer.from([0, type, 0, 1]);

  it('answers a question whose name uses a compression pointer', async () => {
    server.setRecords('web.test', 'A', ['127.0.0.10']);
    // Question name: the label "web", then a pointer to "test" stored after the question.
    const q = Buffer.concat([header(7, 1), Buffer.from([3, 0x77, 0x65, 0x62, 0xc0, 22]), typeClass(1)]);
    const query = Buffer.concat([q, encodeName('test')]);
    const reply = await exchange(query);
    expect(reply?.readUInt16BE(0)).toBe(7);
    expect((reply?.readUInt16BE(2) ?? 0) & 0x000f).toBe(0);
    expect(reply?.readUInt16BE(6)).toBe(1);
    expect([...(reply?.subarray(-4) ?? [])]).toEqual([127, 0, 0, 10]);
  });

  it('answers FORMERR to a pointer loop and drops a packet too short for a header', async () => {
    const loop = Buffer.concat([header(9, 1), Buffer.from([0xc0, 12]), typeClass(1)]);
    const reply = await exchange(loop);
    expect(reply?.readUInt16BE(0)).toBe(9);
    expect((reply?.readUInt16BE(2) ?? 0) & 0x000f).toBe(1);
    expect(await exchange(Buffer.from([1, 2, 3]))).toBeUndefined();
  });

  it('answers NXDOMAIN for an unknown name and NODATA for a known name without that type', async () => {
    server.setRecords('web.test', 'A', ['127.0.0.10']);
    const ask = (name: string, type: number) =>
      exchange(Buffer.concat([header(1, 1), encodeName(name), typeClass(type)]));
    const nx = await ask('other.test', 1);
    const nodata = await ask('web.test', 28);
    expect((nx?.readUInt16BE(2) ?? 0) & 0x000f).toBe(3);
    expect((nodata?.readUInt16BE(2) ?? 0) & 0x000f).toBe(0);
    expect(nodata?.readUInt16BE(6)).toBe(0);
  });
});
