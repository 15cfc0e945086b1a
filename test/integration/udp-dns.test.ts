import dgram from 'node:dgram';
import { once } from 'node:events';
import { Resolver } from 'node:dns/promises';
import { describe, expect, it } from 'vitest';
import { TestDnsServer } from '../support/dns-server.js';
import { answeredId, dnsQuery, startDnsmasq } from '../support/dnsmasq.js';
import { testScope } from '../support/scope.js';
import { waitFor } from '../support/net.js';

const scope = testScope();

describe('UDP through a running sluice', () => {
  it('carries real DNS exchanges from a resolver to two DNS servers, one flow per client port', async () => {
    const servers = [await TestDnsServer.start(), await TestDnsServer.start()];
    for (const s of servers) {
      scope.defer(() => s.close());
      s.setRecords('svc.test', 'A', ['192.0.2.10', '192.0.2.11']);
    }
    const rt = await scope.lb(`listeners:
  - { name: dns, protocol: udp, bind: "127.0.0.1:0", pool: dns, udp: { flow_idle: 2s } }
pools:
  - name: dns
    algorithm: maglev
    hash_key: source-ip-port
    backends: [${servers.map((s) => `{ address: "127.0.0.1:${s.port}" }`).join(', ')}]`);
    const answers: string[][] = [];
    for (let i = 0; i < 8; i++) {
      // A new Resolver per query: each one sends from its own port, so each is its own flow.
      const r = new Resolver({ timeout: 2000, tries: 1 });
      r.setServers([`127.0.0.1:${rt.port('dns')}`]);
      answers.push((await r.resolve4('svc.test')).sort());
    }
    expect(answers.every((a) => a.join() === '192.0.2.10,192.0.2.11')).toBe(true);
    const asked = servers.map((s) => s.questions.length);
    expect(asked.reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(8);
    await waitFor(
      async () =>
        (await rt.metric('sluice_udp_datagrams_total', { listener: 'dns', direction: 'downstream' })) >= 8,
    );
  });
});

/** A DNS client on its own port (its own flow) that asks one question at a time until stopped. */
async function asker(port: number): Promise<{ lost: number[]; lastAnswered: () => boolean; stop(): void }> {
  const socket = dgram.createSocket('udp4');
  socket.on('error', () => undefined);
  socket.bind(0, '127.0.0.1');
  await once(socket, 'listening');
  const lost: number[] = [];
  let last = false;
  let stopped = false;
  let id = 0;
  const ask = async (): Promise<void> => {
    while (!stopped) {
      id = (id + 1) & 0xffff;
      const want = id;
      const sentAt = Date.now();
      const got = new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => done(false), 400);
        const onMessage = (msg: Buffer): void => {
          if (answeredId(msg) === want) done(true);
        };
        const done = (ok: boolean): void => {
          clearTimeout(timer);
          socket.off('message', onMessage);
          resolve(ok);
        };
        socket.on('message', onMessage);
      });
      socket.send(dnsQuery(want, 'svc.test'), port, '127.0.0.1');
      last = await got;
      if (!last) lost.push(sentAt);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  const running = ask();
  return {
    /** When each lost query was sent (epoch ms). */
    lost,
    lastAnswered: () => last,
    stop: () => {
      stopped = true;
      void running.finally(() => socket.close());
    },
  };
}

describe.each(['splice', 'stream'] as const)('UDP failover (relay: %s)', (relay) => {
  it('moves the flows of a DNS server that dies to the other one: a client loses at most its query in flight and the one that found the server dead', async () => {
    const servers = [
      await startDnsmasq('svc.test', '192.0.2.10'),
      await startDnsmasq('svc.test', '192.0.2.10'),
    ];
    for (const s of servers) scope.defer(() => s.kill());
    const rt = await scope.lb(`relay: ${relay}
listeners:
  - { name: dns, protocol: udp, bind: "127.0.0.1:0", pool: dns, udp: { flow_idle: 30s } }
pools:
  - name: dns
    health: { active: { type: none }, passive: { consecutive_failures: 1, ejection: 30s } }
    backends: [${servers.map((s) => `{ address: "127.0.0.1:${s.port}" }`).join(', ')}]`);
    const clients = await Promise.all(Array.from({ length: 40 }, () => asker(rt.port('dns'))));
    try {
      await waitFor(() => clients.every((c) => c.lastAnswered()), 10_000, 'every client answered');
      const before = clients.map((c) => c.lost.length);
      await servers[1]?.kill();
      // Long enough for every client to see its query lost, and several answered after that.
      await new Promise((r) => setTimeout(r, 2_000));
      const ejected = rt.logs.lines.find((l) => l.msg === 'backend ejected after consecutive failures');
      expect(ejected).toBeDefined();
      const ejectedAt = Date.parse(String(ejected?.time));
      // A client of the dead server loses the query it had in flight, and at most one more: the
      // one that reached the dead server before sluice learned of it (the first refusal ejects
      // it, and every flow on it ends so that its next datagram picks again).
      const lost = clients.map((c, i) => c.lost.slice(before[i]));
      expect(Math.max(...lost.map((l) => l.length))).toBeLessThanOrEqual(2);
      // Nothing sent once sluice knew (but for a query already on its way then).
      expect(lost.flat().filter((sentAt) => sentAt > ejectedAt + 100)).toEqual([]);
      expect(clients.every((c) => c.lastAnswered())).toBe(true);
      expect(await rt.metric('sluice_backend_ejections_total', { pool: 'dns' })).toBe(1);
      expect(rt.logs.lines.some((l) => l.msg === 'flow' && l.reason === 'backend_down')).toBe(true);
    } finally {
      for (const c of clients) c.stop();
    }
  });
});
