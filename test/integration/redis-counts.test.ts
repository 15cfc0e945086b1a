import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { MemoryStore } from '../../src/state/memory.js';
import type { RedisConfig } from '../../src/state/redis-connect.js';
import { createClient } from '../../src/state/redis-connect.js';
import { RedisStore } from '../../src/state/redis.js';
import { backendKey } from '../../src/state/store.js';
import { silentLogger } from '../../src/telemetry/logger.js';
import type { RedisCluster, RedisServer } from '../support/redis-server.js';
import { startRedis, startRedisCluster, stopAllRedis } from '../support/redis-server.js';

/**
 * The counts summed in Redis (COUNT_FNS in src/state/redis-scripts.ts) against the plain sum the
 * memory store makes: the same answers after any sequence of publishes and withdrawals, and the
 * sum healed when something outside the scripts breaks it.
 */

const POOLS = ['ingress', 'api', 'web'];
const keys = POOLS.flatMap((p) => [1, 2, 3].map((i) => backendKey(p, `10.0.0.${i}:80`)));
let redis: RedisServer;
let cluster: RedisCluster;
const opened: RedisStore[] = [];
const clients: Redis[] = [];

beforeAll(async () => {
  [redis, cluster] = await Promise.all([startRedis(), startRedisCluster(3)]);
});
afterEach(async () => {
  await Promise.all(opened.splice(0).map((s) => s.close()));
  for (const c of clients.splice(0)) c.disconnect();
});
afterAll(() => stopAllRedis());

type Target = Pick<RedisConfig, 'url' | 'nodes'>;

/** A plain ioredis client on the same server or Cluster, to break things behind the store's back. */
function rawClient(t: Target): Redis {
  const client =
    t.nodes === undefined
      ? new Redis({ port: redis.port, host: '127.0.0.1', lazyConnect: true })
      : (new Redis.Cluster(
          t.nodes.map((n) => ({ host: n.host, port: n.port })),
          { lazyConnect: true },
        ) as unknown as Redis);
  clients.push(client);
  return client;
}

function store(target: Target, prefix: string, rebuildMs?: number): RedisStore {
  const s = new RedisStore({
    config: { ...target, key_prefix: prefix, command_timeout: 1000 },
    logger: silentLogger(),
    ...(rebuildMs === undefined ? {} : { rebuildMs }),
  });
  opened.push(s);
  return s;
}

/** A seeded generator, so that a failure repeats. */
function lcg(seed: number): () => number {
  let x = seed;
  return () => {
    x = (x * 1_103_515_245 + 12_345) % 2 ** 31;
    return x / 2 ** 31;
  };
}

const targets: [string, () => Target][] = [
  ['redis', () => ({ url: redis.url })],
  [
    'redis cluster, pools spread',
    () => ({
      url: 'redis://127.0.0.1/0',
      nodes: cluster.nodes.map((n) => ({ host: '127.0.0.1', port: n.port })),
    }),
  ],
];

describe.each(targets)('counts summed in Redis: %s', (_name, target) => {
  it('answers as the plain sum does after 300 random publishes and withdrawals of 5 replicas', async () => {
    const prefix = `c-${randomUUID().slice(0, 8)}`;
    const replicas = ['r0', 'r1', 'r2', 'r3', 'r4'];
    // Each replica has a store of its own, as separate processes would.
    const stores = replicas.map(() => store(target(), prefix));
    await Promise.all(stores.map((s) => s.start()));
    const model = new MemoryStore();
    const random = lcg(7);
    for (let step = 0; step < 300; step++) {
      const i = Math.floor(random() * replicas.length);
      const id = replicas[i]!;
      if (random() < 0.1) {
        await Promise.all([stores[i]!.withdraw(id), model.withdraw(id)]);
      } else {
        const counts = new Map<string, number>();
        for (const key of keys) if (random() < 0.4) counts.set(key, Math.floor(random() * 5));
        await Promise.all([
          stores[i]!.publishCounts(id, counts, 60_000),
          model.publishCounts(id, counts, 60_000),
        ]);
      }
      const reader = replicas[Math.floor(random() * replicas.length)]!;
      const got = await stores[0]!.readCounts(reader, POOLS);
      expect(got, `step ${step}`).toEqual(await model.readCounts(reader, POOLS));
    }
  });

  it('takes a replica restarted under the same id, and one that expired, out of the sum exactly', async () => {
    const prefix = `c-${randomUUID().slice(0, 8)}`;
    const [a, b] = [store(target(), prefix), store(target(), prefix)];
    await Promise.all([a.start(), b.start()]);
    const [k1, k2] = [keys[0]!, keys[4]!];
    await a.publishCounts(
      'edge-1',
      new Map([
        [k1, 5],
        [k2, 2],
      ]),
      600,
    );
    await b.publishCounts('edge-2', new Map([[k1, 1]]), 300);
    expect(await a.readCounts('x', POOLS)).toEqual(
      new Map([
        [k1, 6],
        [k2, 2],
      ]),
    );
    // edge-1 comes back as a new process (a new store) with other counts: they replace the old
    // ones (with pools spread, those in a pool it has no counts in now last until their TTL, as
    // a crashed replica's do).
    const again = store(target(), prefix);
    await again.start();
    await again.publishCounts('edge-1', new Map([[k2, 3]]), 60_000);
    // edge-2 stops publishing: out of the sum once its TTL is over, and only its counts.
    await vi.waitFor(async () => expect(await a.readCounts('x', POOLS)).toEqual(new Map([[k2, 3]])), {
      timeout: 3000,
      interval: 50,
    });
  });

  it('publishes only changes, and the whole counts again once the store lost them', async () => {
    const prefix = `c-${randomUUID().slice(0, 8)}`;
    // Every script call's arguments after the keys, as sent.
    const sent: (string | number)[][] = [];
    const s = new RedisStore({
      config: { ...target(), key_prefix: prefix, command_timeout: 1000 },
      logger: silentLogger(),
      createClient: (config, backoff, random) => {
        const client = createClient(config, backoff, random);
        const call = client.call.bind(client);
        client.call = (command, ...args) => {
          if (command === 'EVALSHA' || command === 'EVAL') sent.push(args.slice(2 + Number(args[1])));
          return call(command, ...args);
        };
        return client;
      },
    });
    opened.push(s);
    await s.start();
    const [k1, k2] = [keys[0]!, keys[1]!];
    const publish = (n1: number): Promise<void> =>
      s.publishCounts(
        'r1',
        new Map([
          [k1, n1],
          [k2, 1],
        ]),
        60_000,
      );
    await publish(4);
    expect(sent.pop()).toEqual(['r1', 60_000, s.keys.of(k1).countsPrefix, k1, '4', k2, '1']);
    await publish(5);
    expect(sent.pop()).toEqual(['r1', 60_000, s.keys.of(k1).countsPrefix, '1', k1, 5]);
    await publish(5);
    expect(sent.pop()).toEqual(['r1', 60_000, s.keys.of(k1).countsPrefix, '1']);
    expect(await s.readCounts('x', POOLS)).toEqual(
      new Map([
        [k1, 5],
        [k2, 1],
      ]),
    );
    // The store loses this replica's hash and the sum (a restart, say): the next publish finds
    // its hash missing and sends the whole counts, although nothing changed here.
    const client = rawClient(target());
    await client.connect();
    const slot = s.keys.of(k1);
    await client.del(slot.counts('r1'));
    await client.del(slot.total);
    await publish(5);
    expect(sent.pop()?.slice(3)).toEqual([k1, '5', k2, '1']);
    expect(await s.readCounts('x', POOLS)).toEqual(
      new Map([
        [k1, 5],
        [k2, 1],
      ]),
    );
  });

  it('rebuilds a sum broken outside the scripts: at once when it is gone, within a period when wrong', async () => {
    const prefix = `c-${randomUUID().slice(0, 8)}`;
    const s = store(target(), prefix, 400);
    await s.start();
    const k = keys[0]!;
    await s.publishCounts('r1', new Map([[k, 4]]), 60_000);
    await s.publishCounts('r2', new Map([[k, 3]]), 60_000);
    expect(await s.readCounts('x', POOLS)).toEqual(new Map([[k, 7]]));
    const slot = s.keys.of(k);
    const client = rawClient(target());
    await client.connect();
    // Gone (evicted, say): rebuilt at the next read.
    await client.del(slot.total);
    expect(await s.readCounts('x', POOLS)).toEqual(new Map([[k, 7]]));
    // Wrong (a writer that does not keep the sum): right again within one rebuild period.
    await client.hset(slot.total, k, '100');
    expect(await s.readCounts('x', POOLS)).toEqual(new Map([[k, 100]]));
    await vi.waitFor(async () => expect(await s.readCounts('x', POOLS)).toEqual(new Map([[k, 7]])), {
      timeout: 3000,
      interval: 50,
    });
  });
});
