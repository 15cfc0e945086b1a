import { describe, expect, it } from 'vitest';
import { decodeFacts, encodeCounts, encodeFact, RedisKeys, sumCounts } from '../../src/state/redis-codec.js';
import { poolOf } from '../../src/state/store.js';
import { backoff, parseRedisUrl } from '../../src/state/redis-connect.js';
import { classify } from '../../src/state/redis-status.js';
import { seededRandom } from '../../src/util/clock.js';

/** A Redis error reply as ioredis delivers it. */
function replyError(message: string): Error {
  const err = new Error(message);
  err.name = 'ReplyError';
  return err;
}

describe('parseRedisUrl', () => {
  it('reads address, credentials, database and TLS', () => {
    expect(parseRedisUrl('rediss://edge:p%40ss@redis.internal:6380/2')).toEqual({
      host: 'redis.internal',
      port: 6380,
      username: 'edge',
      password: 'p@ss',
      db: 2,
      tls: { servername: 'redis.internal' },
    });
    expect(parseRedisUrl('redis://:secret@[::1]')).toEqual({
      host: '::1',
      port: 6379,
      password: 'secret',
      db: 0,
    });
    expect(parseRedisUrl('rediss://10.0.0.7:6379/0').tls).toEqual({});
  });

  it.each(['http://127.0.0.1:6379', 'not a url', 'redis://127.0.0.1:6379/x'])(
    'refuses %s with the config path',
    (url) => {
      expect(() => parseRedisUrl(url)).toThrow(/^state\.redis\.url: /);
    },
  );
});

describe('backoff', () => {
  it('doubles up to the cap, never returns zero, and never gives up', () => {
    const delay = backoff({ baseMs: 100, maxMs: 2000 }, seededRandom(1));
    const delays = [1, 2, 3, 4, 5, 6, 10, 1000].map(delay);
    expect(delays[0]).toBeGreaterThanOrEqual(50);
    expect(delays[0]).toBeLessThanOrEqual(100);
    for (const d of delays.slice(5)) {
      expect(d).toBeGreaterThanOrEqual(1000);
      expect(d).toBeLessThanOrEqual(2000);
    }
  });
});

describe('classify', () => {
  it('reads Redis error codes and treats transport failures as down', () => {
    expect(classify(replyError("READONLY You can't write against a read only replica."))).toEqual({
      down: true,
      reconnect: true,
      reason: 'READONLY',
    });
    expect(classify(replyError('LOADING Redis is loading the dataset in memory'))).toMatchObject({
      down: true,
      reconnect: false,
    });
    expect(
      classify(replyError('WRONGTYPE Operation against a key holding the wrong kind of value')),
    ).toMatchObject({
      down: false,
    });
    expect(classify(new Error('Command timed out'))).toMatchObject({
      down: true,
      reason: 'Command timed out',
    });
    // A plain Error whose text looks like a reply is not one.
    expect(classify(new Error('READONLY'))).toMatchObject({ reconnect: false });
  });
});

describe('codec', () => {
  it('hash-tags every key with the prefix', () => {
    const k = new RedisKeys('sluice');
    expect([k.counts('edge-1'), k.replicas, k.lease('probe'), k.facts, k.registry('api')]).toEqual([
      '{sluice}:counts:edge-1',
      '{sluice}:replicas',
      '{sluice}:lease:probe',
      '{sluice}:facts',
      '{sluice}:registry:api',
    ]);
  });

  it('spread over a Cluster, gives each pool a tag of its own and keeps the rest in the fleet', () => {
    const k = new RedisKeys('sluice', true);
    expect(k.of('ingress/10.0.1.5:8443').counts('edge-1')).toBe('{sluice:pool:ingress}:counts:edge-1');
    expect(k.of('probe:ingress/[2001:db8::1]:443').lease('probe:ingress/[2001:db8::1]:443')).toBe(
      '{sluice:pool:ingress}:lease:probe:ingress/[2001:db8::1]:443',
    );
    expect(k.of('backend:api/10.0.0.1:80').limits('r1')).toBe('{sluice:pool:api}:limits:r1');
    expect(k.of('listener:https').limits('r1')).toBe('{sluice}:limits:r1');
    expect(k.of('probe')).toBe(k);
    expect(k.pool('api')).toBe(k.of('api/10.0.0.2:80'));
    expect(k.pool('api').registry('api')).toBe('{sluice:pool:api}:registry:api');
    // Not spread: one tag for everything, as before.
    const one = new RedisKeys('sluice');
    expect(one.of('ingress/10.0.1.5:8443')).toBe(one);
    expect(one.pool('api').registry('api')).toBe('{sluice}:registry:api');
    expect(k.pattern).toBe('{sluice[}:]*');
    expect(new RedisKeys('a*b').pattern).toBe('{a\\*b[}:]*');
  });

  it('reads the pool out of backend keys, leases and limit keys, and nothing else', () => {
    expect(poolOf('ingress/10.0.1.5:8443')).toBe('ingress');
    expect(poolOf('ingress/[2001:db8::1]:8443')).toBe('ingress');
    expect(poolOf('probe:ingress/10.0.1.5:8443')).toBe('ingress');
    expect(poolOf('backend:api/10.0.0.1:80')).toBe('api');
    expect(poolOf('listener:https')).toBeUndefined();
    expect(poolOf('probe')).toBeUndefined();
    expect(poolOf('/x')).toBeUndefined();
  });

  it('keeps only positive whole counts, both ways', () => {
    const counts = new Map([
      ['a', 2.7],
      ['b', 0],
      ['c', -1],
      ['d', Number.NaN],
    ]);
    expect(encodeCounts(counts)).toEqual(['a', '2']);
    expect(sumCounts(['a', '2', 'b', '-4', 'a', '3', 'c', 'x'])).toEqual(new Map([['a', 5]]));
  });

  it('round-trips facts, skipping unknown or malformed fields', () => {
    const key = 'ingress/[2001:db8::1]:443';
    const flat = [...encodeFact(key, { healthy: false, admin: 'disabled', ejectedUntil: 1_767_225_600_123 })];
    flat.push(
      `${key}#admin2`,
      'x',
      `${key}#healthy2`,
      '1',
      'p/a#b:1#admin',
      'draining',
      'p/c:1#admin',
      'sideways',
    );
    expect(decodeFacts(flat)).toEqual(
      new Map<string, object>([
        [key, { healthy: false, admin: 'disabled', ejectedUntil: 1_767_225_600_123 }],
        ['p/a#b:1', { admin: 'draining' }],
        ['p/c:1', {}],
      ]),
    );
  });
});
