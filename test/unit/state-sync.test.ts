import { describe, expect, it, vi } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { PoolSet } from '../../src/lifecycle/pool-set.js';
import { MemoryStore } from '../../src/state/memory.js';
import { LOSER_ASKS_EVERY } from '../../src/state/shared-health.js';
import { StateSync } from '../../src/state/sync.js';
import type { BackendFact, LimitAnswer, LimitClaim, LimitRound, StateStore } from '../../src/state/store.js';
import { silentLogger } from '../../src/telemetry/logger.js';
import { Metrics } from '../../src/telemetry/metrics.js';
import type { Backend } from '../../src/upstream/backend.js';
import type { Holder, Pool } from '../../src/upstream/pool.js';
import { ManualClock } from '../../src/util/clock.js';

/**
 * Two or three "replicas" in one process: each its own pools and StateSync, all on one
 * MemoryStore and one ManualClock. Rounds run through syncNow(); time moves only by advance().
 * Active checks use a 1 h interval and a random of 0.99, so no probe ever runs here: election is
 * about who would run the checker, and verdicts are fed through the health events.
 */

const HEARTBEAT = 1000;
const A1 = '127.0.0.1:7001';
const A2 = '127.0.0.1:7002';

const CONFIG = `
state: { heartbeat: ${HEARTBEAT} }
listeners: [{ name: l, bind: "127.0.0.1:0", pool: api }]
pools:
  - name: api
    algorithm: least-connections
    backends: [{ address: "${A1}" }, { address: "${A2}" }]
    health:
      active: { type: tcp, interval: 1h }
      passive: { consecutive_failures: 2, ejection: 30s }
  - name: reg
    discovery: { registry: { ttl: 10s } }
    health: { active: { type: none } }
`;

/** A store that fails every call while `down` (a dead or cut-off Redis). */
class FlakyStore implements StateStore {
  readonly kind = 'redis';
  down = false;
  constructor(readonly inner: StateStore) {}
  #gate<T>(fn: () => Promise<T>): Promise<T> {
    return this.down ? Promise.reject(new Error('redis publish: connection closed')) : fn();
  }
  isUp = (): boolean => !this.down;
  onStatus(): void {}
  start = (): Promise<void> => Promise.resolve();
  close = (): Promise<void> => Promise.resolve();
  publishCounts = (r: string, c: ReadonlyMap<string, number>, t: number): Promise<void> =>
    this.#gate(() => this.inner.publishCounts(r, c, t));
  readCounts = (r: string, p: readonly string[]): Promise<Map<string, number>> =>
    this.#gate(() => this.inner.readCounts(r, p));
  withdraw = (r: string): Promise<void> => this.#gate(() => this.inner.withdraw(r));
  claimLimits = (r: string, c: readonly LimitClaim[], round: LimitRound): Promise<LimitAnswer> =>
    this.#gate(() => this.inner.claimLimits(r, c, round));
  leaseMany = (n: readonly string[], o: string, t: number): Promise<boolean[]> =>
    this.#gate(() => this.inner.leaseMany(n, o, t));
  release = (n: string, o: string): Promise<void> => this.#gate(() => this.inner.release(n, o));
  putFact = (k: string, f: BackendFact): Promise<void> => this.#gate(() => this.inner.putFact(k, f));
  clearFact = (k: string, f: keyof BackendFact): Promise<void> =>
    this.#gate(() => this.inner.clearFact(k, f));
  readFacts = (p: readonly string[]): Promise<Map<string, BackendFact>> =>
    this.#gate(() => this.inner.readFacts(p));
  register = (p: string, a: string, t: number): Promise<void> =>
    this.#gate(() => this.inner.register(p, a, t));
  deregister = (p: string, a: string): Promise<void> => this.#gate(() => this.inner.deregister(p, a));
  registered = (p: string): Promise<string[]> => this.#gate(() => this.inner.registered(p));
}

interface Replica {
  readonly id: string;
  readonly pools: PoolSet;
  readonly sync: StateSync;
  readonly store: FlakyStore;
  readonly failures: number;
  api(): Pool;
  backend(address: string, pool?: string): Backend;
  /** What the admin API does: set locally, then share. */
  admin(address: string, state: 'enabled' | 'draining' | 'disabled'): void;
  /** Opens `n` sessions on `address` on this replica. */
  open(address: string, n: number): Holder[];
}

function replica(store: StateStore, clock: ManualClock, id: string): Replica {
  const cfg = parseConfigText(CONFIG);
  const metrics = new Metrics(
    { backends: () => [], udpFlows: () => [], storeUp: () => true },
    { defaultMetrics: false },
  );
  const flaky = new FlakyStore(store);
  const failures = { n: 0 };
  const holder: { pools?: PoolSet } = {};
  const sync = new StateSync({
    store: flaky,
    clock,
    logger: silentLogger(),
    replicaId: id,
    heartbeat: cfg.state.heartbeat,
    pools: () => holder.pools?.entries() ?? [],
    wallClock: () => 1_700_000_000_000 + clock.now(),
    onFailure: () => failures.n++,
  });
  const pools = new PoolSet({
    clock,
    random: () => 0.99,
    metrics,
    logger: silentLogger(),
    healthEvents: sync.healthEvents,
  });
  holder.pools = pools;
  const r: Replica = {
    id,
    store: flaky,
    get failures(): number {
      return failures.n;
    },
    sync,
    pools,
    api: () => {
      const p = pools.get('api');
      if (p === undefined) throw new Error('no pool api');
      return p;
    },
    backend: (address, pool = 'api') => {
      const b = pools.get(pool)?.get(address);
      if (b === undefined) throw new Error(`no backend ${address}`);
      return b;
    },
    admin: (address, state) => {
      const b = r.backend(address);
      r.api().setAdmin(b, state);
      sync.shareAdmin(b, state);
    },
    open: (address, n) => {
      const holders: Holder[] = [];
      for (let i = 0; i < n; i++) {
        const h: Holder = { close: () => undefined };
        r.api().acquire(r.backend(address), h);
        holders.push(h);
      }
      return holders;
    },
  };
  pools.apply(cfg.pools);
  return r;
}

function cluster(n: number): { clock: ManualClock; store: MemoryStore; replicas: Replica[] } {
  const clock = new ManualClock(10_000);
  const store = new MemoryStore(clock);
  const replicas = Array.from({ length: n }, (_, i) => replica(store, clock, `edge-${i + 1}`));
  return { clock, store, replicas };
}

async function round(...replicas: Replica[]): Promise<void> {
  for (const r of replicas) await r.sync.syncNow();
}

describe('StateSync: connection counts', () => {
  it('shows each replica the sessions open on the others', async () => {
    const { replicas } = cluster(3);
    const [a, b, c] = replicas as [Replica, Replica, Replica];
    a.open(A1, 3);
    b.open(A1, 2);
    b.open(A2, 1);
    await round(a, b, c);
    await round(a); // a read before b and c published
    expect([a.backend(A1).remote, b.backend(A1).remote, c.backend(A1).remote]).toEqual([2, 3, 5]);
    expect([a.backend(A2).remote, b.backend(A2).remote, c.backend(A2).remote]).toEqual([1, 0, 1]);
    expect(c.backend(A1).load).toBe(5);
  });

  it('least-connections here avoids a backend loaded through another replica', async () => {
    const { replicas } = cluster(2);
    const [a, b] = replicas as [Replica, Replica];
    a.open(A1, 10);
    await round(a, b);
    const picks = new Set<string>();
    for (let i = 0; i < 5; i++) {
      const got = b.api().pick({ clientIp: '127.0.0.9', clientPort: 1, sni: undefined }, undefined);
      if (got !== undefined) {
        picks.add(got.address);
        b.api().acquire(got, { close: () => undefined });
      }
    }
    expect([...picks]).toEqual([A2]);
  });

  it('follows sessions that end, and never counts below zero', async () => {
    const { replicas } = cluster(2);
    const [a, b] = replicas as [Replica, Replica];
    const hs = a.open(A1, 2);
    await round(a, b);
    expect(b.backend(A1).remote).toBe(2);
    for (const h of hs) a.api().release(a.backend(A1), h);
    a.api().release(a.backend(A1), hs[0] as Holder); // released twice: ignored
    await round(a, b);
    expect(a.backend(A1).local).toBe(0);
    expect(b.backend(A1).remote).toBe(0);
  });

  it('does not double-count across a reload (backends and their counts carry over)', async () => {
    const { replicas } = cluster(2);
    const [a, b] = replicas as [Replica, Replica];
    const before = a.backend(A1);
    a.open(A1, 4);
    await round(a, b);
    a.pools.apply(parseConfigText(CONFIG).pools);
    await round(a, b);
    expect(a.backend(A1)).toBe(before);
    expect(b.backend(A1).remote).toBe(4);
  });

  it("drops a silent replica's counts within 3 heartbeats", async () => {
    const { clock, replicas } = cluster(2);
    const [a, b] = replicas as [Replica, Replica];
    a.open(A1, 7);
    await round(a, b);
    expect(b.backend(A1).remote).toBe(7);
    clock.advance(2 * HEARTBEAT);
    await round(b);
    expect(b.backend(A1).remote).toBe(7);
    clock.advance(HEARTBEAT);
    await round(b);
    expect(b.backend(A1).remote).toBe(0);
  });

  it('with the store out, decays remote counts to 0 after 3 heartbeats, then rebuilds them', async () => {
    const { clock, replicas } = cluster(2);
    const [a, b] = replicas as [Replica, Replica];
    a.open(A1, 5);
    await round(a, b);
    b.store.down = true;
    clock.advance(HEARTBEAT);
    await round(b);
    expect(b.backend(A1).remote).toBe(5);
    expect(b.failures).toBe(1);
    clock.advance(2 * HEARTBEAT);
    await round(b);
    expect(b.backend(A1).remote).toBe(0);
    expect(b.sync.lagSeconds()).toBe(3);
    b.store.down = false;
    await round(a, b);
    expect(b.backend(A1).remote).toBe(5);
    expect(b.sync.lagSeconds()).toBe(0);
  });
});

describe('StateSync: one prober per backend', () => {
  it('elects one replica per backend; the others stop their checkers', async () => {
    const { replicas } = cluster(3);
    const [a, b, c] = replicas as [Replica, Replica, Replica];
    await round(a, b, c);
    const probing = (r: Replica, address: string): boolean =>
      r.pools.entries()[0]?.health.probing(r.backend(address)) ?? false;
    expect([probing(a, A1), probing(b, A1), probing(c, A1)]).toEqual([true, false, false]);
    expect([probing(a, A2), probing(b, A2), probing(c, A2)]).toEqual([true, false, false]);
    const gauge = [...b.sync.probers()];
    expect(gauge).toContainEqual({ pool: 'api', backend: A1, probing: false });
  });

  it('hands the lease over when the prober dies: once it expires, within the turns of the loser', async () => {
    const { clock, replicas } = cluster(2);
    const [a, b] = replicas as [Replica, Replica];
    await round(a, b);
    const health = (r: Replica) => r.pools.entries()[0]?.health;
    expect(health(b)?.probing(b.backend(A1))).toBe(false);
    for (let i = 0; i < LOSER_ASKS_EVERY; i++) {
      clock.advance(HEARTBEAT);
      if (i < 2) {
        await round(b);
        expect(health(b)?.probing(b.backend(A1))).toBe(false); // the lease lives 3 heartbeats
      }
    }
    let rounds = 0;
    while (health(b)?.probing(b.backend(A1)) !== true && rounds < LOSER_ASKS_EVERY) {
      await round(b);
      clock.advance(HEARTBEAT);
      rounds++;
    }
    expect(health(b)?.probing(b.backend(A1))).toBe(true);
  });

  it('a clean stop releases the leases: another replica takes them within its turns', async () => {
    const { replicas } = cluster(2);
    const [a, b] = replicas as [Replica, Replica];
    await round(a, b);
    await a.sync.stop();
    let rounds = 0;
    while (b.pools.entries()[0]?.health.probing(b.backend(A1)) !== true && rounds < LOSER_ASKS_EVERY) {
      await round(b);
      rounds++;
    }
    expect(b.pools.entries()[0]?.health.probing(b.backend(A1))).toBe(true);
  });

  it('asks for a lease another replica holds only once every LOSER_ASKS_EVERY rounds', async () => {
    const { replicas } = cluster(2);
    const [a, b] = replicas as [Replica, Replica];
    await round(a, b);
    const asks = vi.spyOn(b.store, 'leaseMany');
    for (let i = 0; i < 3 * LOSER_ASKS_EVERY; i++) await round(b);
    const asked = asks.mock.calls.reduce((n, [names]) => n + names.length, 0);
    const watched = [...(b.pools.entries()[0]?.health.watched() ?? [])].length;
    expect(watched).toBeGreaterThan(0);
    expect(asked).toBe(3 * watched);
  });

  it("followers take the prober's verdict within one round", async () => {
    const { replicas } = cluster(2);
    const [a, b] = replicas as [Replica, Replica];
    await round(a, b);
    expect(b.api().readyCount).toBe(2);
    a.api().setHealth(a.backend(A1), 'down');
    a.sync.healthEvents.verdict(a.backend(A1), 'down');
    await round(b);
    expect(b.backend(A1).health).toBe('down');
    expect(b.api().readyCount).toBe(1);
  });

  it('a verdict from a replica that is not the prober is not shared', async () => {
    const { replicas } = cluster(2);
    const [a, b] = replicas as [Replica, Replica];
    await round(a, b);
    b.sync.healthEvents.verdict(b.backend(A1), 'down');
    await round(a, b);
    expect(a.backend(A1).health).toBe('up');
  });

  it('with the store out every replica probes for itself, and they converge when it returns', async () => {
    const { clock, replicas } = cluster(2);
    const [a, b] = replicas as [Replica, Replica];
    await round(a, b);
    const probing = (r: Replica): boolean => r.pools.entries()[0]?.health.probing(r.backend(A1)) ?? false;
    a.store.down = true;
    b.store.down = true;
    clock.advance(3 * HEARTBEAT);
    await round(a, b);
    expect([probing(a), probing(b)]).toEqual([true, true]);
    a.store.down = false;
    b.store.down = false;
    clock.advance(HEARTBEAT);
    await round(b, a);
    expect([probing(a), probing(b)]).toEqual([false, true]);
  });

  it('a lone replica on the memory store always wins and keeps checking', async () => {
    const { clock, replicas } = cluster(1);
    const [a] = replicas as [Replica];
    for (let i = 0; i < 5; i++) {
      await round(a);
      clock.advance(HEARTBEAT);
      expect(a.pools.entries()[0]?.health.probing(a.backend(A1))).toBe(true);
    }
  });
});

describe('StateSync: shared admin states and ejections', () => {
  it('a drain on one replica drains the backend on the others; enable undoes it', async () => {
    const { replicas } = cluster(3);
    const [a, b, c] = replicas as [Replica, Replica, Replica];
    a.admin(A1, 'draining');
    await round(a, b, c);
    expect([a, b, c].map((r) => r.backend(A1).admin)).toEqual(['draining', 'draining', 'draining']);
    expect(b.api().readyCount).toBe(1);
    c.admin(A1, 'enabled');
    await round(a, b, c);
    expect([a, b, c].map((r) => r.backend(A1).admin)).toEqual(['enabled', 'enabled', 'enabled']);
  });

  it('a drain made while the store is out is kept here and shared when it returns', async () => {
    const { clock, replicas } = cluster(2);
    const [a, b] = replicas as [Replica, Replica];
    await round(a, b);
    a.store.down = true;
    a.admin(A1, 'disabled');
    clock.advance(HEARTBEAT);
    await round(a, b);
    expect([a.backend(A1).admin, b.backend(A1).admin]).toEqual(['disabled', 'enabled']);
    a.store.down = false;
    await round(a, b);
    expect([a.backend(A1).admin, b.backend(A1).admin]).toEqual(['disabled', 'disabled']);
  });

  it('a passive ejection on one replica ejects the backend on the others until it ends', async () => {
    const { clock, replicas } = cluster(2);
    const [a, b] = replicas as [Replica, Replica];
    await round(a, b);
    const pa = a.api();
    a.pools.report(pa, a.backend(A2), false);
    a.pools.report(pa, a.backend(A2), false);
    expect(a.backend(A2).readiness(clock.now())).toBe('ejected');
    await round(a, b);
    expect(b.backend(A2).readiness(clock.now())).toBe('ejected');
    expect(b.api().readyCount).toBe(1);
    expect(a.backend(A2).readiness(clock.now())).toBe('ejected');
    clock.advance(30_000);
    await round(a, b);
    expect(b.backend(A2).readiness(clock.now())).toBe('ready');
    expect(b.api().readyCount).toBe(2);
  });
});

describe('StateSync: registry discovery', () => {
  it('adds registered backends and drains them a ttl after they leave the registry', async () => {
    const { clock, store, replicas } = cluster(1);
    const [a] = replicas as [Replica];
    const reg = (): string[] =>
      [...(a.pools.get('reg')?.backends() ?? [])].filter((b) => !b.removed).map((b) => b.address);
    await store.register('reg', '127.0.0.1:9001', 30_000);
    await store.register('reg', 'not an address', 30_000);
    await round(a);
    expect(reg()).toEqual(['127.0.0.1:9001']);
    await store.deregister('reg', '127.0.0.1:9001');
    clock.advance(5_000);
    await round(a);
    expect(reg()).toEqual(['127.0.0.1:9001']);
    clock.advance(10_000);
    await round(a);
    expect(reg()).toEqual([]);
  });

  it('keeps the registered backends while the store is out', async () => {
    const { clock, store, replicas } = cluster(1);
    const [a] = replicas as [Replica];
    await store.register('reg', '127.0.0.1:9001', 5_000);
    await round(a);
    a.store.down = true;
    clock.advance(60_000);
    await round(a);
    expect(a.pools.get('reg')?.get('127.0.0.1:9001')?.removed).toBe(false);
  });
});
