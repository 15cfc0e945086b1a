import { describe, expect, it } from 'vitest';
import type { DiscoveredBackend, DnsDiscoveryConfig, DnsLookup, SrvAnswer } from '../../src/discovery/dns.js';
import { DnsDiscovery, mapSrvWeights } from '../../src/discovery/dns.js';
import { ManualClock } from '../../src/util/clock.js';

type Reply<T> = readonly T[] | { readonly code: string } | 'hang';

/** Answers from tables; unknown names are NXDOMAIN; 'hang' waits until cancel(). */
class FakeLookup implements DnsLookup {
  readonly a = new Map<string, Reply<string>>();
  readonly aaaa = new Map<string, Reply<string>>();
  readonly srv = new Map<string, Reply<SrvAnswer>>();
  readonly calls: string[] = [];
  cancels = 0;
  #hanging: ((err: Error) => void)[] = [];

  resolve4(name: string): Promise<string[]> {
    return this.#reply(`A ${name}`, this.a.get(name));
  }
  resolve6(name: string): Promise<string[]> {
    return this.#reply(`AAAA ${name}`, this.aaaa.get(name));
  }
  resolveSrv(name: string): Promise<SrvAnswer[]> {
    return this.#reply(`SRV ${name}`, this.srv.get(name));
  }
  cancel(): void {
    this.cancels++;
    const hanging = this.#hanging;
    this.#hanging = [];
    for (const reject of hanging) reject(coded('ECANCELLED'));
  }

  #reply<T>(call: string, reply: Reply<T> | undefined): Promise<T[]> {
    this.calls.push(call);
    if (reply === undefined) return Promise.reject(coded('ENOTFOUND'));
    if (reply === 'hang') return new Promise((_resolve, reject) => this.#hanging.push(reject));
    if ('code' in reply) return Promise.reject(coded(reply.code));
    return Promise.resolve([...reply]);
  }
}

function coded(code: string): Error {
  return Object.assign(new Error(code), { code });
}

/** Lets every settled promise run its continuations (the fake answers at once). */
const flush = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

const INTERVAL = 10_000;

function setup(config: Partial<DnsDiscoveryConfig> = {}, timeout = 2_000) {
  const clock = new ManualClock();
  const lookup = new FakeLookup();
  const updates: (readonly DiscoveredBackend[])[] = [];
  const errors: string[] = [];
  const cfg: DnsDiscoveryConfig = {
    name: 'web.test',
    type: 'A',
    port: 8443,
    interval: INTERVAL,
    weight: 3,
    ...config,
  };
  const discovery = new DnsDiscovery(cfg, {
    clock,
    lookup,
    timeout,
    onUpdate: (m) => updates.push(m),
    onError: (code) => errors.push(code),
  });
  const tick = async (ms = INTERVAL): Promise<void> => {
    clock.advance(ms);
    await flush();
  };
  return { clock, lookup, updates, errors, discovery, tick };
}

const addresses = (members: readonly DiscoveredBackend[] | undefined): string[] =>
  (members ?? []).map((m) => `${m.address}*${m.weight}`);

describe('DnsDiscovery scheduling', () => {
  it('resolves once at start, then once per interval', async () => {
    const t = setup();
    t.lookup.a.set('web.test', ['10.0.0.2', '10.0.0.1']);
    await t.discovery.start();
    expect(t.lookup.calls).toEqual(['A web.test']);
    expect(addresses(t.updates[0])).toEqual(['10.0.0.1:8443*3', '10.0.0.2:8443*3']);
    expect(t.updates[0]?.[0]).toEqual({ address: '10.0.0.1:8443', host: '10.0.0.1', port: 8443, weight: 3 });
    await t.tick(INTERVAL - 1);
    expect(t.lookup.calls).toHaveLength(1);
    await t.tick(1);
    expect(t.lookup.calls).toHaveLength(2);
    await t.tick();
    expect(t.lookup.calls).toHaveLength(3);
  });

  it('never overlaps resolutions: a slow one delays the next', async () => {
    const t = setup({}, 30_000);
    t.lookup.a.set('web.test', 'hang');
    void t.discovery.start();
    await t.tick(INTERVAL * 2);
    expect(t.lookup.calls).toHaveLength(1);
  });

  it('cuts a resolution at the timeout, cancels it and reports ETIMEOUT', async () => {
    const t = setup({}, 2_000);
    t.lookup.a.set('web.test', 'hang');
    void t.discovery.start();
    await t.tick(2_000);
    expect(t.errors).toEqual(['ETIMEOUT']);
    expect(t.lookup.cancels).toBe(1);
    // The schedule goes on: the next start is one interval after the previous start.
    await t.tick(INTERVAL - 2_000);
    expect(t.lookup.calls).toHaveLength(2);
  });

  it('stop() cancels the timer and the resolution in flight, and publishes nothing after', async () => {
    const t = setup();
    t.lookup.a.set('web.test', ['10.0.0.1']);
    await t.discovery.start();
    t.lookup.a.set('web.test', 'hang');
    await t.tick();
    t.discovery.stop();
    await flush();
    expect(t.lookup.cancels).toBe(1);
    expect(t.clock.pending).toBe(0);
    await t.tick(INTERVAL * 3);
    expect(t.lookup.calls).toHaveLength(2);
    expect(t.updates).toHaveLength(1);
    expect(t.errors).toEqual([]);
  });

  it('can be stopped and started again while a resolution hangs', async () => {
    const t = setup();
    t.lookup.a.set('web.test', 'hang');
    void t.discovery.start();
    t.discovery.stop();
    t.lookup.a.set('web.test', ['10.0.0.1']);
    await t.discovery.start();
    expect(addresses(t.updates[0])).toEqual(['10.0.0.1:8443*3']);
    t.lookup.a.set('web.test', 'hang');
    await t.tick();
    t.discovery.stop();
    expect(t.lookup.cancels).toBe(2);
    expect(t.clock.pending).toBe(0);
  });

  it('start() while running does not start a second schedule', async () => {
    const t = setup();
    t.lookup.a.set('web.test', ['10.0.0.1']);
    await t.discovery.start();
    await t.discovery.start();
    await t.tick();
    expect(t.lookup.calls).toHaveLength(2);
  });

  it('keeps its schedule when onUpdate throws', async () => {
    const clock = new ManualClock();
    const lookup = new FakeLookup();
    lookup.a.set('web.test', ['10.0.0.1']);
    const cfg: DnsDiscoveryConfig = { name: 'web.test', type: 'A', port: 80, interval: INTERVAL, weight: 1 };
    const d = new DnsDiscovery(cfg, {
      clock,
      lookup,
      onUpdate: () => {
        throw new Error('boom');
      },
    });
    await d.start();
    clock.advance(INTERVAL);
    await flush();
    expect(lookup.calls).toHaveLength(2);
  });
});

describe('DnsDiscovery change detection and failures', () => {
  it('publishes only when addresses or weights change', async () => {
    const t = setup({ type: 'SRV' });
    t.lookup.srv.set('web.test', [{ name: 'a.test', port: 80, priority: 1, weight: 10 }]);
    t.lookup.a.set('a.test', ['10.0.0.1']);
    await t.discovery.start();
    await t.tick();
    expect(t.updates).toHaveLength(1);
    t.lookup.a.set('a.test', ['10.0.0.1', '10.0.0.2']);
    await t.tick();
    expect(addresses(t.updates[1])).toEqual(['10.0.0.1:80*10', '10.0.0.2:80*10']);
    t.lookup.srv.set('web.test', [{ name: 'a.test', port: 80, priority: 1, weight: 20 }]);
    await t.tick();
    expect(addresses(t.updates[2])).toEqual(['10.0.0.1:80*20', '10.0.0.2:80*20']);
    await t.tick();
    expect(t.updates).toHaveLength(3);
  });

  it('drops duplicate addresses', async () => {
    const t = setup();
    t.lookup.a.set('web.test', ['10.0.0.1', '10.0.0.1']);
    await t.discovery.start();
    expect(addresses(t.updates[0])).toEqual(['10.0.0.1:8443*3']);
  });

  it.each([
    ['a failed lookup', 'ETIMEOUT', { code: 'ETIMEOUT' }],
    ['SERVFAIL', 'ESERVFAIL', { code: 'ESERVFAIL' }],
    ['NXDOMAIN', 'ENOTFOUND', { code: 'ENOTFOUND' }],
    ['NODATA', 'ENODATA', { code: 'ENODATA' }],
    ['an empty answer', 'ENODATA', []],
  ] as const)('keeps the last known set on %s and reports %s', async (_what, code, reply) => {
    const t = setup();
    t.lookup.a.set('web.test', ['10.0.0.1']);
    await t.discovery.start();
    t.lookup.a.set('web.test', reply);
    await t.tick();
    expect(t.errors).toEqual([code]);
    expect(t.updates).toHaveLength(1);
    expect(addresses(t.discovery.members)).toEqual(['10.0.0.1:8443*3']);
    t.lookup.a.set('web.test', ['10.0.0.1']);
    await t.tick();
    expect(t.updates).toHaveLength(1);
    expect(t.errors).toHaveLength(1);
  });

  it('publishes nothing until a resolution first succeeds', async () => {
    const t = setup();
    await t.discovery.start();
    expect(t.errors).toEqual(['ENOTFOUND']);
    expect(t.updates).toEqual([]);
    expect(t.discovery.members).toEqual([]);
  });
});

describe('DnsDiscovery record types', () => {
  it('AAAA: IPv6 addresses in brackets', async () => {
    const t = setup({ type: 'AAAA' });
    t.lookup.aaaa.set('web.test', ['fd00::1']);
    await t.discovery.start();
    expect(t.updates[0]).toEqual([{ address: '[fd00::1]:8443', host: 'fd00::1', port: 8443, weight: 3 }]);
    expect(t.lookup.calls).toEqual(['AAAA web.test']);
  });

  it('A+AAAA: either family may be empty', async () => {
    const t = setup({ type: 'A+AAAA' });
    t.lookup.a.set('web.test', ['10.0.0.1']);
    t.lookup.aaaa.set('web.test', { code: 'ENODATA' });
    await t.discovery.start();
    expect(addresses(t.updates[0])).toEqual(['10.0.0.1:8443*3']);
    t.lookup.aaaa.set('web.test', ['fd00::1']);
    await t.tick();
    expect(addresses(t.updates[1])).toEqual(['10.0.0.1:8443*3', '[fd00::1]:8443*3']);
  });

  it('A+AAAA: a failed lookup of one family fails the whole resolution', async () => {
    const t = setup({ type: 'A+AAAA' });
    t.lookup.a.set('web.test', ['10.0.0.1']);
    t.lookup.aaaa.set('web.test', ['fd00::1']);
    await t.discovery.start();
    t.lookup.aaaa.set('web.test', { code: 'ETIMEOUT' });
    await t.tick();
    expect(t.errors).toEqual(['ETIMEOUT']);
    expect(t.updates).toHaveLength(1);
  });

  it('SRV: ports and weights from the records, targets resolved as A and AAAA', async () => {
    const t = setup({ type: 'SRV', port: undefined });
    t.lookup.srv.set('web.test', [
      { name: 'a.test', port: 8001, priority: 10, weight: 30 },
      { name: 'b.test', port: 8002, priority: 10, weight: 70 },
    ]);
    t.lookup.a.set('a.test', ['10.0.0.1']);
    t.lookup.aaaa.set('b.test', ['fd00::2']);
    await t.discovery.start();
    expect(addresses(t.updates[0])).toEqual(['10.0.0.1:8001*30', '[fd00::2]:8002*70']);
  });

  it('SRV: only the lowest priority group with a resolvable target is used', async () => {
    const t = setup({ type: 'SRV' });
    t.lookup.srv.set('web.test', [
      { name: 'backup.test', port: 80, priority: 20, weight: 1 },
      { name: 'gone.test', port: 80, priority: 5, weight: 1 },
      { name: '.', port: 80, priority: 1, weight: 1 },
      { name: 'main.test', port: 80, priority: 10, weight: 1 },
    ]);
    t.lookup.a.set('backup.test', ['10.0.0.20']);
    t.lookup.a.set('main.test', ['10.0.0.10']);
    await t.discovery.start();
    expect(addresses(t.updates[0])).toEqual(['10.0.0.10:80*1']);
    t.lookup.a.delete('main.test');
    await t.tick();
    expect(addresses(t.updates[1])).toEqual(['10.0.0.20:80*1']);
  });

  it('SRV: a failed target lookup keeps the last set rather than falling back', async () => {
    const t = setup({ type: 'SRV' });
    t.lookup.srv.set('web.test', [
      { name: 'main.test', port: 80, priority: 10, weight: 1 },
      { name: 'backup.test', port: 80, priority: 20, weight: 1 },
    ]);
    t.lookup.a.set('main.test', ['10.0.0.10']);
    t.lookup.a.set('backup.test', ['10.0.0.20']);
    await t.discovery.start();
    t.lookup.a.set('main.test', { code: 'ESERVFAIL' });
    await t.tick();
    expect(t.errors).toEqual(['ESERVFAIL']);
    expect(t.updates).toHaveLength(1);
  });

  it('SRV: no resolvable target at all reports ENODATA and keeps the set', async () => {
    const t = setup({ type: 'SRV' });
    t.lookup.srv.set('web.test', [{ name: 'main.test', port: 80, priority: 10, weight: 1 }]);
    t.lookup.a.set('main.test', ['10.0.0.10']);
    await t.discovery.start();
    t.lookup.a.delete('main.test');
    await t.tick();
    expect(t.errors).toEqual(['ENODATA']);
    expect(t.discovery.members).toHaveLength(1);
  });

  it('SRV: the same address from two records keeps the highest weight', async () => {
    const t = setup({ type: 'SRV' });
    t.lookup.srv.set('web.test', [
      { name: 'a.test', port: 80, priority: 1, weight: 5 },
      { name: 'b.test', port: 80, priority: 1, weight: 9 },
    ]);
    t.lookup.a.set('a.test', ['10.0.0.1']);
    t.lookup.a.set('b.test', ['10.0.0.1']);
    await t.discovery.start();
    expect(addresses(t.updates[0])).toEqual(['10.0.0.1:80*9']);
  });
});

describe('mapSrvWeights', () => {
  it.each([
    [
      [10, 20, 70],
      [10, 20, 70],
    ],
    [
      [1, 256],
      [1, 256],
    ],
    [
      [0, 0],
      [1, 1],
    ],
    [
      [0, 10],
      [1, 256],
    ],
    [
      [1000, 500, 1],
      [256, 128, 1],
    ],
    [
      [65535, 32768],
      [256, 128],
    ],
    [[300], [256]],
  ])('%j -> %j', (input, expected) => {
    expect(mapSrvWeights(input)).toEqual(expected);
  });
});

describe('DnsDiscovery construction', () => {
  it('needs a port unless the type is SRV', () => {
    const cfg: DnsDiscoveryConfig = { name: 'web.test', type: 'A', interval: INTERVAL, weight: 1 };
    expect(() => new DnsDiscovery(cfg, { onUpdate: () => undefined, lookup: new FakeLookup() })).toThrow(
      /port/,
    );
  });

  it('rejects a server given by name (the resolver takes IP literals)', () => {
    const cfg: DnsDiscoveryConfig = {
      name: 'web.test',
      type: 'A',
      port: 80,
      interval: INTERVAL,
      weight: 1,
      servers: [{ host: 'ns.example', port: 53 }],
    };
    expect(() => new DnsDiscovery(cfg, { onUpdate: () => undefined })).toThrow(/must be an IP address/);
  });
});
