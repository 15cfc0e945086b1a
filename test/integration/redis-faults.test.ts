import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { RedisStore } from '../../src/state/redis.js';
import { backendKey } from '../../src/state/store.js';
import { Writable } from 'node:stream';
import { createLogger } from '../../src/telemetry/logger.js';
import type { FakeServer, RedisServer } from '../support/redis-server.js';
import {
  blackHoleServer,
  errorServer,
  silentLink,
  startRedis,
  stopAllRedis,
} from '../support/redis-server.js';

/**
 * Redis misbehaving in every way the store must survive: killed, restarted empty, silent,
 * answering errors. The bar each time: calls settle fast (fail-fast, not a performance bound),
 * the store says it is down, nothing is left unhandled, and it comes back on its own.
 */

const TIMEOUT_MS = 300;
/** A call "fails fast" when it settles well within this. */
const FAST_MS = 2000;
const K = backendKey('ingress', '10.0.1.5:8443');
const POOLS = ['ingress'];

const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown): void => void unhandled.push(reason);
let redis: RedisServer;
const stores: RedisStore[] = [];
const fakes: FakeServer[] = [];

beforeAll(async () => {
  process.on('unhandledRejection', onUnhandled);
  redis = await startRedis();
});
afterEach(async () => {
  await Promise.all(stores.splice(0).map((s) => s.close()));
  await Promise.all(fakes.splice(0).map((f) => f.close()));
  expect(unhandled).toEqual([]);
});
afterAll(async () => {
  process.off('unhandledRejection', onUnhandled);
  await stopAllRedis();
});

interface Opened {
  readonly store: RedisStore;
  /** Status changes heard by onStatus. */
  readonly events: boolean[];
  /** The `msg` of every log line. */
  readonly logs: string[];
}

/** A started store on `url` with short timeouts and backoff. */
async function open(url: string, prefix = `f-${randomUUID().slice(0, 8)}`): Promise<Opened> {
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      logs.push(String((JSON.parse(chunk.toString()) as { msg?: unknown }).msg));
      done();
    },
  });
  const store = new RedisStore({
    config: { url, key_prefix: prefix, command_timeout: TIMEOUT_MS },
    logger: createLogger('info', sink),
    backoff: { baseMs: 20, maxMs: 200 },
  });
  stores.push(store);
  const events: boolean[] = [];
  store.onStatus((up) => events.push(up));
  await store.start();
  return { store, events, logs };
}

/** Every operation of the store, as thunks. */
function everyCall(store: RedisStore): (() => Promise<unknown>)[] {
  return [
    () => store.publishCounts('r1', new Map([[K, 1]]), 1000),
    () => store.readCounts('r1', POOLS),
    () => store.withdraw('r1'),
    () => store.leaseMany(['l'], 'r1', 1000),
    () => store.release('l', 'r1'),
    () => store.putFact(K, { healthy: true }),
    () => store.clearFact(K, 'healthy'),
    () => store.readFacts(POOLS),
    () => store.register('p', '10.0.0.1:80', 1000),
    () => store.deregister('p', '10.0.0.1:80'),
    () => store.registered('p'),
  ];
}

/** Runs every call; each must reject, and settle within FAST_MS. Returns the slowest, in ms. */
async function expectAllRejectFast(store: RedisStore): Promise<number> {
  let slowest = 0;
  for (const call of everyCall(store)) {
    const t0 = performance.now();
    await expect(call()).rejects.toThrow(/^redis /);
    const took = performance.now() - t0;
    expect(took).toBeLessThan(FAST_MS);
    slowest = Math.max(slowest, took);
  }
  return slowest;
}

describe('RedisStore when Redis fails', () => {
  it('rejects fast while Redis is killed and converges after it restarts empty', async () => {
    const prefix = `f-${randomUUID().slice(0, 8)}`;
    const { store, events, logs } = await open(redis.url, prefix);
    const { store: other } = await open(redis.url, prefix);
    expect(store.isUp()).toBe(true);
    await store.publishCounts('r1', new Map([[K, 2]]), 10_000);

    await redis.kill();
    await vi.waitFor(() => expect(store.isUp()).toBe(false), { timeout: 2 * TIMEOUT_MS + 500, interval: 20 });
    await expectAllRejectFast(store);

    await redis.restart();
    await vi.waitFor(async () => expect(await other.readCounts('r2', POOLS)).toEqual(new Map()), {
      timeout: 5000,
      interval: 20,
    }); // restarted empty
    await vi.waitFor(() => expect(store.isUp()).toBe(true), { timeout: 5000, interval: 20 });
    await store.publishCounts('r1', new Map([[K, 3]]), 10_000);
    await vi.waitFor(async () => expect(await other.readCounts('r2', POOLS)).toEqual(new Map([[K, 3]])), {
      timeout: 5000,
      interval: 20,
    });
    expect(events).toEqual([true, false, true]);
    // One line per change, and a dozen failures folded into one rate-limited error line.
    expect(logs.filter((m) => m !== 'state store error')).toEqual([
      'state store up',
      'state store down',
      'state store up',
    ]);
    expect(logs.filter((m) => m === 'state store error')).toHaveLength(1);
  });

  it('starts while Redis is down, reports down, and connects once Redis appears', async () => {
    const port = redis.port;
    await redis.kill();
    const t0 = performance.now();
    const { store, events } = await open(`redis://127.0.0.1:${port}/0`);
    expect(performance.now() - t0).toBeLessThan(FAST_MS);
    expect(store.isUp()).toBe(false);
    await expectAllRejectFast(store);
    await redis.launch();
    await vi.waitFor(() => expect(store.isUp()).toBe(true), { timeout: 5000, interval: 20 });
    expect(await store.leaseMany(['l'], 'r1', 1000)).toEqual([true]);
    expect(events).toEqual([true]);
  });

  it('never becomes ready on a black-holed server and rejects every call fast', async () => {
    const hole = await blackHoleServer();
    fakes.push(hole);
    const t0 = performance.now();
    const { store } = await open(hole.url);
    expect(performance.now() - t0).toBeLessThan(FAST_MS);
    expect(store.isUp()).toBe(false);
    await expectAllRejectFast(store);
  });

  it('notices a link that goes silent mid-session within the command timeout, and recovers', async () => {
    const link = await silentLink(redis.port);
    fakes.push(link);
    const { store, events } = await open(link.url);
    expect(store.isUp()).toBe(true);
    link.silence();
    const t0 = performance.now();
    await expect(store.publishCounts('r1', new Map([[K, 1]]), 1000)).rejects.toThrow(/^redis /);
    const took = performance.now() - t0;
    expect(took).toBeGreaterThanOrEqual(TIMEOUT_MS - 50);
    expect(took).toBeLessThan(FAST_MS);
    await vi.waitFor(() => expect(store.isUp()).toBe(false), { timeout: TIMEOUT_MS + 500, interval: 20 });
    await expectAllRejectFast(store);
    link.heal();
    await vi.waitFor(() => expect(store.isUp()).toBe(true), { timeout: 5000, interval: 20 });
    await store.publishCounts('r1', new Map([[K, 1]]), 1000);
    expect(events).toEqual([true, false, true]);
  });

  it.each([
    ['READONLY', "READONLY You can't write against a read only replica."],
    ['LOADING', 'LOADING Redis is loading the dataset in memory'],
    ['OOM', "OOM command not allowed when used memory > 'maxmemory'."],
  ])('treats %s replies as unavailable', async (code, reply) => {
    const fake = await errorServer(reply, { handshake: true });
    fakes.push(fake);
    const { store, events } = await open(fake.url);
    expect(store.isUp()).toBe(true);
    await expect(store.publishCounts('r1', new Map([[K, 1]]), 1000)).rejects.toThrow(
      `redis script publish-counts: ${code}`,
    );
    expect(events.slice(0, 2)).toEqual([true, false]);
    if (code === 'READONLY') {
      // A new connection, so that Sentinel or DNS can lead to the new primary.
      await vi.waitFor(() => expect(fake.connections).toBeGreaterThanOrEqual(2), {
        timeout: 5000,
        interval: 20,
      });
    } else {
      expect(store.isUp()).toBe(false);
      await expect(store.readFacts(POOLS)).rejects.toThrow(code);
      expect(fake.connections).toBe(1);
    }
  });

  it.each([
    ['READONLY', "READONLY You can't write against a read only replica."],
    ['LOADING', 'LOADING Redis is loading the dataset in memory'],
  ])('stays down on a server that answers %s from the first command', async (_code, reply) => {
    const fake = await errorServer(reply);
    fakes.push(fake);
    const { store, events } = await open(fake.url);
    expect(store.isUp()).toBe(false);
    await expectAllRejectFast(store);
    expect(events).toEqual([]);
  });

  it('leaves no key without a TTL', async () => {
    const { store } = await open(redis.url);
    await store.publishCounts('r1', new Map([[K, 2]]), 10_000);
    await store.publishCounts('r2', new Map([[K, 1]]), 10_000);
    await store.publishCounts('r3', new Map(), 10_000);
    await store.leaseMany(['probe'], 'r1', 10_000);
    await store.putFact(K, { admin: 'draining' });
    await store.clearFact(K, 'admin');
    await store.putFact(K, { healthy: true });
    await store.register('api', '10.0.0.1:80', 10_000);
    await store.readCounts('r1', POOLS);
    await store.registered('api');
    await store.withdraw('r2');

    const probe = new Redis(redis.url, { lazyConnect: true });
    try {
      await probe.connect();
      const keys: string[] = [];
      let cursor = '0';
      do {
        const [next, batch] = await probe.scan(cursor, 'MATCH', store.keys.pattern, 'COUNT', 100);
        keys.push(...batch);
        cursor = next;
      } while (cursor !== '0');
      expect(keys.length).toBeGreaterThanOrEqual(5);
      for (const key of keys) expect(await probe.pttl(key), key).toBeGreaterThan(0);
    } finally {
      probe.disconnect();
    }
  });
});
