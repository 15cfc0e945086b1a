import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { MemoryStore } from '../../src/state/memory.js';
import type { RedisConfig } from '../../src/state/redis-connect.js';
import { RedisStore } from '../../src/state/redis.js';
import type { LimitClaim, LimitRound, StateStore } from '../../src/state/store.js';
import { backendKey } from '../../src/state/store.js';
import { silentLogger } from '../../src/telemetry/logger.js';
import type { RedisCluster, RedisServer } from '../support/redis-server.js';
import { startRedis, startRedisCluster, stopAllRedis } from '../support/redis-server.js';

/** Two replicas' views of one shared store; for the memory store both are the same object. */
interface Pair {
  readonly a: StateStore;
  readonly b: StateStore;
  close(): Promise<void>;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const map = (entries: Record<string, number>): Map<string, number> => new Map(Object.entries(entries));
const K1 = backendKey('ingress', '10.0.1.5:8443');
const K2 = backendKey('ingress', '[2001:db8::1]:8443');
/** The pools the tests' backend keys belong to. */
const POOLS = ['ingress'];
/** One lease, through the batch call. */
const lease = async (
  s: StateStore,
  name: string,
  owner: string,
  ttlMs: number,
): Promise<boolean | undefined> => (await s.leaseMany([name], owner, ttlMs))[0];

/** A claim on limit `key`; the hold defaults to the open count. */
const claim = (key: string, limit: number, open: number, hold = open, renew = false): LimitClaim => ({
  key,
  limit,
  open,
  hold,
  renew,
});
/** A round of claims that may grow, splitting over at least `hint` replicas. */
const round = (hint: number, ttlMs = 5000, grow = true): LimitRound => ({ replicasHint: hint, grow, ttlMs });
const LB = 'backend:ingress/10.0.1.5:8443';
const LB2 = 'backend:ingress/10.0.1.6:8443';
const LL = 'listener:https';

/** The behaviour every StateStore promises, run against each implementation. */
function contract(name: string, makePair: () => Promise<Pair>): void {
  describe(`StateStore contract: ${name}`, () => {
    let pair: Pair;
    let a: StateStore;
    let b: StateStore;
    beforeEach(async () => {
      pair = await makePair();
      ({ a, b } = pair);
    });
    afterEach(() => pair.close());

    it('is up once started', () => {
      expect(a.isUp()).toBe(true);
      expect(b.isUp()).toBe(true);
    });

    it('sums the counts of other replicas and leaves out the reader', async () => {
      await a.publishCounts('r1', map({ [K1]: 2, [K2]: 1 }), 5000);
      await b.publishCounts('r2', map({ [K1]: 3 }), 5000);
      expect(await a.readCounts('r1', POOLS)).toEqual(map({ [K1]: 3 }));
      expect(await b.readCounts('r2', POOLS)).toEqual(map({ [K1]: 2, [K2]: 1 }));
      expect(await b.readCounts('nobody', POOLS)).toEqual(map({ [K1]: 5, [K2]: 1 }));
    });

    it('replaces a replica’s counts on each publish and keeps only positive ones', async () => {
      await a.publishCounts('r1', map({ [K1]: 4 }), 5000);
      await a.publishCounts('r1', map({ [K1]: 0, [K2]: 2, 'p/x:1': -3 }), 5000);
      expect(await b.readCounts('r2', POOLS)).toEqual(map({ [K2]: 2 }));
      await a.publishCounts('r1', new Map(), 5000);
      expect(await b.readCounts('r2', POOLS)).toEqual(new Map());
    });

    it('forgets a replica whose counts were not published again within the TTL', async () => {
      await a.publishCounts('short', map({ [K1]: 1 }), 300);
      await b.publishCounts('long', map({ [K1]: 10 }), 10_000);
      expect(await b.readCounts('x', POOLS)).toEqual(map({ [K1]: 11 }));
      await vi.waitFor(async () => expect(await b.readCounts('x', POOLS)).toEqual(map({ [K1]: 10 })), {
        timeout: 3000,
        interval: 25,
      });
    });

    it('keeps counts alive while they are published again before the TTL', async () => {
      await a.publishCounts('r1', map({ [K1]: 1 }), 400);
      for (let i = 0; i < 3; i++) {
        await sleep(200);
        await a.publishCounts('r1', map({ [K1]: 1 }), 400);
      }
      expect(await b.readCounts('r2', POOLS)).toEqual(map({ [K1]: 1 }));
    });

    it('withdraws a replica’s counts at once', async () => {
      await a.publishCounts('r1', map({ [K1]: 2 }), 10_000);
      await b.publishCounts('r2', map({ [K1]: 1 }), 10_000);
      await a.withdraw('r1');
      expect(await b.readCounts('x', POOLS)).toEqual(map({ [K1]: 1 }));
      await a.withdraw('never-published');
    });

    it('keeps pools apart: counts and facts of the pools asked for, wherever they live', async () => {
      const pools = ['ingress', 'api', 'web', 'dns', 'mail', 'db'];
      const keyOf = (pool: string): string => backendKey(pool, '10.0.0.1:80');
      await a.publishCounts('r1', map(Object.fromEntries(pools.map((p, i) => [keyOf(p), i + 1]))), 10_000);
      await b.publishCounts('r2', map({ [keyOf('api')]: 10 }), 10_000);
      expect(await b.readCounts('r2', pools)).toEqual(
        map(Object.fromEntries(pools.map((p, i) => [keyOf(p), i + 1]))),
      );
      expect(await b.readCounts('x', ['api', 'db'])).toEqual(map({ [keyOf('api')]: 12, [keyOf('db')]: 6 }));
      expect(await b.readCounts('x', [])).toEqual(new Map());
      // Counts that leave a pool are gone from it at the next publish.
      await a.publishCounts('r1', map({ [keyOf('web')]: 7 }), 10_000);
      expect(await b.readCounts('x', pools)).toEqual(map({ [keyOf('api')]: 10, [keyOf('web')]: 7 }));
      await a.publishCounts('r1', new Map(), 10_000);
      expect(await b.readCounts('x', pools)).toEqual(map({ [keyOf('api')]: 10 }));
      // Facts, leases and registries, in every pool.
      await Promise.all(pools.map((p, i) => a.putFact(keyOf(p), { healthy: i % 2 === 0 })));
      const facts = await b.readFacts(['web', 'dns']);
      expect(facts).toEqual(
        new Map([
          [keyOf('web'), { healthy: true }],
          [keyOf('dns'), { healthy: false }],
        ]),
      );
      const leases = pools.map((p) => `probe:${keyOf(p)}`);
      expect(
        await a.leaseMany(
          leases.filter((_, i) => i % 2 === 0),
          'r1',
          10_000,
        ),
      ).toEqual([true, true, true]);
      expect(await b.leaseMany(leases, 'r2', 10_000)).toEqual(pools.map((_, i) => i % 2 === 1));
      await a.release(leases[0]!, 'r1');
      expect(await b.leaseMany([leases[0]!], 'r2', 10_000)).toEqual([true]);
      await a.withdraw('r1');
      await b.withdraw('r2');
      expect(await a.readCounts('x', pools)).toEqual(new Map());
    });

    it('answers claims on several pools and a listener in the order asked, and drops those not made again', async () => {
      const lb = (pool: string): string => `backend:${pool}/10.0.0.1:80`;
      const claims = [
        claim(lb('api'), 10, 2),
        claim(LL, 100, 5),
        claim(lb('web'), 20, 1),
        claim(lb('api') + '0', 4, 0),
      ];
      expect(await a.claimLimits('r1', claims, round(2))).toEqual({
        replicas: 1,
        lost: false,
        grants: [
          { grant: 6, share: 4 },
          { grant: 53, share: 48 },
          { grant: 11, share: 10 },
          { grant: 2, share: 2 },
        ],
      });
      // r2 sees r1's claims on each key, wherever its pool lives.
      const seen = await b.claimLimits('r2', [claim(lb('web'), 20, 0), claim(LL, 100, 0)], round(2));
      expect(seen.replicas).toBe(2);
      expect(seen.grants).toEqual([
        { grant: 9, share: 9 },
        { grant: 47, share: 47 },
      ]);
      // r1 claims only the listener now: its claims on the pools are dropped.
      await a.claimLimits('r1', [claim(LL, 100, 5)], round(2));
      expect((await b.claimLimits('r2', [claim(lb('web'), 20, 0)], round(2))).grants).toEqual([
        { grant: 10, share: 10 },
      ]);
    });

    it('grants limit claims within the limit: a fair share each, never below the hold', async () => {
      // Alone, a replica's fair share is everything free.
      expect(await a.claimLimits('r1', [claim(LB, 30, 0)], round(1))).toEqual({
        replicas: 1,
        lost: false,
        grants: [{ grant: 30, share: 30 }],
      });
      // Two more join: r1 holds all 30, nothing is left to grant them.
      expect(await b.claimLimits('r2', [claim(LB, 30, 0)], round(1))).toEqual({
        replicas: 2,
        lost: false,
        grants: [{ grant: 0, share: 15 }],
      });
      expect((await b.claimLimits('r3', [claim(LB, 30, 0)], round(2))).grants).toEqual([
        { grant: 0, share: 10 },
      ]);
      // r1 (5 open) keeps 5 + a third of the 25 free, the remainder's one going to the first id.
      expect(await a.claimLimits('r1', [claim(LB, 30, 5)], round(3))).toEqual({
        replicas: 3,
        lost: false,
        grants: [{ grant: 14, share: 9 }],
      });
      expect((await b.claimLimits('r2', [claim(LB, 30, 0)], round(3))).grants).toEqual([
        { grant: 8, share: 8 },
      ]);
      expect((await b.claimLimits('r3', [claim(LB, 30, 0)], round(3))).grants).toEqual([
        { grant: 8, share: 8 },
      ]);
      // 14 + 8 + 8: the whole limit, no more. A hold above the room is still granted: the
      // replica may already hold that much.
      expect((await b.claimLimits('r2', [claim(LB, 30, 3, 20)], round(3))).grants).toEqual([
        { grant: 20, share: 7 },
      ]);
      // A replica that only publishes counts is live too (where its pool's keys are).
      await a.publishCounts('c1', map({ [K1]: 1 }), 5000);
      expect(await a.claimLimits('r1', [claim(LB, 30, 5)], round(3))).toEqual({
        replicas: 4,
        lost: false,
        grants: [{ grant: 5, share: 6 }],
      });
      // Keys are independent.
      expect(await a.claimLimits('r1', [claim(LL, 8, 0), claim(LB, 30, 5)], round(4))).toEqual({
        replicas: 4,
        lost: false,
        grants: [
          { grant: 2, share: 2 },
          { grant: 5, share: 6 },
        ],
      });
    });

    it('splits shares over at least the replicas the claimant saw last', async () => {
      expect(await a.claimLimits('r1', [claim(LB, 30, 0)], round(3))).toEqual({
        replicas: 1,
        lost: false,
        grants: [{ grant: 10, share: 10 }],
      });
    });

    it('grants the hold when told not to grow, or for a TTL once a claim to renew was missing', async () => {
      expect(await a.claimLimits('r1', [claim(LB, 30, 4, 7)], round(1, 5000, false))).toEqual({
        replicas: 1,
        lost: false,
        grants: [{ grant: 7, share: 26 }],
      });
      // LB's claim is there, LB2's is not (as after a restart of the store): r1 settles, every
      // grant of its held at its hold for the TTL of this claim. (With pools spread over a
      // Cluster, where each primary may lose its data alone, this holds per pool.)
      expect(
        await a.claimLimits('r1', [claim(LB, 30, 4, 4, true), claim(LB2, 10, 0, 3, true)], round(1, 300)),
      ).toEqual({
        replicas: 1,
        lost: true,
        grants: [
          { grant: 4, share: 26 },
          { grant: 3, share: 10 },
        ],
      });
      expect(await b.claimLimits('r1', [claim(LB2, 10, 0, 3, true)], round(1, 10_000))).toEqual({
        replicas: 1,
        lost: true,
        grants: [{ grant: 3, share: 10 }],
      });
      await vi.waitFor(
        async () =>
          expect(await a.claimLimits('r1', [claim(LB2, 10, 0, 3, true)], round(1, 10_000))).toEqual({
            replicas: 1,
            lost: false,
            grants: [{ grant: 10, share: 10 }],
          }),
        { timeout: 3000, interval: 25 },
      );
    });

    it('drops a claim not made again, across batches too', async () => {
      const keys = Array.from({ length: 1203 }, (_, i) => `backend:bulk/10.9.${i >> 8}.${i & 255}:80`);
      const all = (
        await a.claimLimits(
          'r1',
          keys.map((k) => claim(k, 2, 0)),
          round(1, 10_000),
        )
      ).grants;
      expect(all.map((g) => g.grant)).toEqual(keys.map(() => 2));
      const none = (
        await b.claimLimits(
          'r2',
          keys.map((k) => claim(k, 2, 0)),
          round(2, 10_000),
        )
      ).grants;
      expect(none.map((g) => g.grant)).toEqual(keys.map(() => 0));
      // r1 now claims only the first 700, holding both connections of each.
      await a.claimLimits(
        'r1',
        keys.slice(0, 700).map((k) => claim(k, 2, 2)),
        round(2, 10_000),
      );
      const after = (
        await b.claimLimits(
          'r2',
          keys.map((k) => claim(k, 2, 0)),
          round(2, 10_000),
        )
      ).grants;
      expect(after.map((g) => g.grant)).toEqual(keys.map((_, i) => (i < 700 ? 0 : 1)));
      expect(after.map((g) => g.share)).toEqual(keys.map((_, i) => (i < 700 ? 0 : 1)));
      // An empty round drops every claim.
      await a.claimLimits('r1', [], round(2, 10_000));
      expect((await b.claimLimits('r2', [claim(keys[0]!, 2, 0)], round(2, 10_000))).grants).toEqual([
        { grant: 1, share: 1 },
      ]);
    });

    it('forgets the claims of a replica that does not claim again within the TTL, or withdraws', async () => {
      await a.claimLimits('long', [claim(LB, 9, 0)], round(1, 10_000));
      expect((await b.claimLimits('short', [claim(LB, 9, 6)], round(2, 300))).grants).toEqual([
        { grant: 6, share: 1 },
      ]);
      // short was granted its hold though long held all 9; long now gets its share of the 3 left.
      expect(await a.claimLimits('long', [claim(LB, 9, 0)], round(2, 10_000))).toEqual({
        replicas: 2,
        lost: false,
        grants: [{ grant: 2, share: 2 }],
      });
      await vi.waitFor(
        async () =>
          expect(await a.claimLimits('long', [claim(LB, 9, 0)], round(1, 10_000))).toEqual({
            replicas: 1,
            lost: false,
            grants: [{ grant: 9, share: 9 }],
          }),
        { timeout: 3000, interval: 25 },
      );
      await b.claimLimits('other', [claim(LB, 9, 0)], round(2, 10_000));
      await b.withdraw('other');
      expect(await a.claimLimits('long', [claim(LB, 9, 0)], round(1, 10_000))).toEqual({
        replicas: 1,
        lost: false,
        grants: [{ grant: 9, share: 9 }],
      });
    });

    it('gives a lease to one owner at a time and lets only the owner renew it', async () => {
      expect(await lease(a, 'probe:K1', 'r1', 10_000)).toBe(true);
      expect(await lease(b, 'probe:K1', 'r2', 10_000)).toBe(false);
      expect(await lease(a, 'probe:K1', 'r1', 10_000)).toBe(true);
      expect(await lease(b, 'probe:K2', 'r2', 10_000)).toBe(true);
    });

    it('leases many names at once, answering for each as one at a time would, past one batch', async () => {
      const names = Array.from({ length: 1203 }, (_, i) => `probe:M${i}`);
      // b holds every third name first; a then asks for all of them.
      const third = names.filter((_, i) => i % 3 === 0);
      expect(await b.leaseMany(third, 'r2', 10_000)).toEqual(third.map(() => true));
      const got = await a.leaseMany(names, 'r1', 10_000);
      expect(got).toEqual(names.map((_, i) => i % 3 !== 0));
      // Renewals by the holders, and single leases agree with the batch.
      expect(await a.leaseMany(names.slice(1, 3), 'r1', 10_000)).toEqual([true, true]);
      expect(await lease(a, names[0]!, 'r1', 10_000)).toBe(false);
      expect(await lease(b, names[1]!, 'r2', 10_000)).toBe(false);
      expect(await a.leaseMany([], 'r1', 10_000)).toEqual([]);
    });

    it('releases a lease only for its owner', async () => {
      expect(await lease(a, 'l', 'r1', 10_000)).toBe(true);
      await b.release('l', 'r2');
      expect(await lease(b, 'l', 'r2', 10_000)).toBe(false);
      await a.release('l', 'r1');
      expect(await lease(b, 'l', 'r2', 10_000)).toBe(true);
      expect(await lease(a, 'l', 'r1', 10_000)).toBe(false);
    });

    it('hands an expired lease to another owner, but not one the owner renewed', async () => {
      expect(await lease(a, 'renewed', 'r1', 400)).toBe(true);
      expect(await lease(a, 'lapsed', 'r1', 300)).toBe(true);
      await sleep(200);
      expect(await lease(a, 'renewed', 'r1', 400)).toBe(true);
      await vi.waitFor(async () => expect(await lease(b, 'lapsed', 'r2', 10_000)).toBe(true), {
        timeout: 3000,
        interval: 25,
      });
      expect(await lease(b, 'renewed', 'r2', 10_000)).toBe(false);
    });

    it('applies many fact writes made at once in the order they were made', async () => {
      const keys = Array.from({ length: 1500 }, (_, i) => backendKey('bulk', `10.9.${i >> 8}.${i & 255}:80`));
      const writes: Promise<void>[] = [];
      for (const [i, key] of keys.entries()) {
        writes.push(a.putFact(key, { healthy: i % 2 === 0, admin: 'draining' }));
        if (i % 3 === 0) writes.push(a.clearFact(key, 'admin'));
        if (i % 5 === 0) writes.push(a.putFact(key, { healthy: true }));
      }
      await Promise.all(writes);
      const facts = await b.readFacts(['bulk']);
      for (const [i, key] of keys.entries()) {
        const want = { healthy: i % 5 === 0 || i % 2 === 0, ...(i % 3 === 0 ? {} : { admin: 'draining' }) };
        expect(facts.get(key)).toEqual(want);
      }
    });

    it('merges facts field by field and clears single fields', async () => {
      await a.putFact(K1, { healthy: true });
      await b.putFact(K1, { admin: 'draining' });
      await a.putFact(K2, { ejectedUntil: 1_767_225_600_123 });
      expect(await b.readFacts(POOLS)).toEqual(
        new Map([
          [K1, { healthy: true, admin: 'draining' }],
          [K2, { ejectedUntil: 1_767_225_600_123 }],
        ]),
      );
      await a.putFact(K1, { healthy: false });
      await a.putFact(K1, {});
      await b.clearFact(K1, 'admin');
      await b.clearFact('ingress/unknown:1', 'admin');
      expect((await a.readFacts(POOLS)).get(K1)).toEqual({ healthy: false });
    });

    it('lists registered addresses until their TTL runs out or they deregister', async () => {
      await a.register('api', '10.0.0.1:80', 10_000);
      await b.register('api', '10.0.0.2:80', 300);
      await b.register('web', '10.0.0.3:80', 10_000);
      expect((await a.registered('api')).sort()).toEqual(['10.0.0.1:80', '10.0.0.2:80']);
      await vi.waitFor(async () => expect(await a.registered('api')).toEqual(['10.0.0.1:80']), {
        timeout: 3000,
        interval: 25,
      });
      await a.deregister('api', '10.0.0.1:80');
      expect(await b.registered('api')).toEqual([]);
      expect(await b.registered('web')).toEqual(['10.0.0.3:80']);
      expect(await b.registered('none')).toEqual([]);
    });
  });
}

contract('memory', async () => {
  const store = new MemoryStore();
  await store.start();
  return { a: store, b: store, close: () => store.close() };
});

let redis: RedisServer;
let cluster: RedisServer;
let spread: RedisCluster;
beforeAll(async () => {
  [redis, cluster, spread] = await Promise.all([
    startRedis(),
    startRedis({ cluster: true }),
    startRedisCluster(3),
  ]);
});
afterAll(() => stopAllRedis());

type ServerConfig = Omit<RedisConfig, 'key_prefix' | 'command_timeout'>;

/** Two RedisStores sharing a fresh prefix, so that no test sees another's keys. */
async function redisPair(config: ServerConfig): Promise<Pair> {
  const prefix = `t-${randomUUID().slice(0, 8)}`;
  const make = (): RedisStore =>
    new RedisStore({
      config: { ...config, key_prefix: prefix, command_timeout: 1000 },
      logger: silentLogger(),
    });
  const a = make();
  const b = make();
  await Promise.all([a.start(), b.start()]);
  return { a, b, close: async () => void (await Promise.all([a.close(), b.close()])) };
}

contract('redis', () => redisPair({ url: redis.url }));

// Three primaries, each serving a third of the slots: the pools spread over them.
contract('redis cluster (three primaries, pools spread)', () =>
  redisPair({
    url: 'redis://127.0.0.1/0',
    nodes: spread.nodes.map((n) => ({ host: '127.0.0.1', port: n.port })),
  }),
);

describe('redis cluster with pools spread', () => {
  it('puts each pool’s keys in a slot of its own, so the pools spread over the primaries', async () => {
    const pair = await redisPair({
      url: 'redis://127.0.0.1/0',
      nodes: spread.nodes.map((n) => ({ host: '127.0.0.1', port: n.port })),
    });
    const { a, b } = pair;
    try {
      const pattern = (a as RedisStore).keys.pattern;
      const pools = Array.from({ length: 24 }, (_, i) => `pool-${i}`);
      const counts = map(Object.fromEntries(pools.map((p) => [backendKey(p, '10.0.0.1:80'), 1])));
      await a.publishCounts('r1', counts, 10_000);
      await b.publishCounts('r2', counts, 10_000);
      const added = await spread.keys(pattern);
      // Per pool a counts hash per replica, their index and their total: 4 keys, never split over
      // primaries.
      expect(added.reduce((x, y) => x + y, 0)).toBe(4 * pools.length);
      for (const n of added) {
        expect(n % 4).toBe(0);
        expect(n).toBeGreaterThan(0);
      }
      expect(await a.readCounts('x', pools)).toEqual(
        map(Object.fromEntries([...counts].map(([k]) => [k, 2]))),
      );
      await Promise.all([a.withdraw('r1'), b.withdraw('r2')]);
      // Only the marker of the total's last rebuild is left in each pool's slot.
      const left = await spread.keys(pattern);
      expect(left.reduce((x, y) => x + y, 0)).toBe(pools.length);
      expect(left.map((n, i) => n * 4 - (added[i] ?? 0))).toEqual(spread.nodes.map(() => 0));
    } finally {
      await pair.close();
    }
  });
});

// One node holding every slot: exercises the Cluster client and the hash-tagged key layout.
contract('redis cluster (one node)', () =>
  redisPair({ url: 'redis://127.0.0.1/0', nodes: [{ host: '127.0.0.1', port: cluster.port }] }),
);
