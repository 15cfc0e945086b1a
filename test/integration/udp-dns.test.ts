import { Resolver } from 'node:dns/promises';
import { describe, expect, it } from 'vitest';
import { TestDnsServer } from '../support/dns-server.js';
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
