import { createHash } from 'node:crypto';

/**
 * The Lua scripts of the Redis store. Every multi-step change is one script so that it is atomic
 * (no key is ever left without its TTL, even if the client dies between two commands) and costs
 * one round trip.
 *
 * Expiry: hashes and leases use relative PX/PEXPIRE TTLs; zset scores are absolute expiry times
 * taken from the Redis server's own clock (`TIME`) inside the script, so replicas with skewed
 * clocks still agree on what has expired. Scripts that call TIME and then write rely on effect
 * replication, the default since Redis 5.
 *
 * Scripts touch keys they build from a prefix argument (readCounts reads each live replica's
 * hash). That is allowed in Redis Cluster because every key of the store shares one hash tag
 * and so one slot.
 */
export interface Script {
  readonly name: string;
  readonly lua: string;
  readonly sha: string;
  readonly keys: number;
}

function script(name: string, keys: number, lua: string): Script {
  return { name, keys, lua, sha: createHash('sha1').update(lua).digest('hex') };
}

/** Server time in epoch milliseconds, as a Lua local named `now`. */
const NOW = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`;

/** Lengthens a key's TTL to at least `ttl` ms; never shortens it (other members may live longer). */
const KEEP_ALIVE = `local function keep_alive(key, ttl)
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
`;

/**
 * KEYS[1] this replica's counts hash, KEYS[2] replica index zset.
 * ARGV[1] replica id, ARGV[2] ttl ms, ARGV[3..] backend key, count pairs (all > 0).
 * The hash is replaced whole (DEL then HSET) and gets its TTL in the same script.
 */
export const PUBLISH_COUNTS = script(
  'publish-counts',
  2,
  `${NOW}${KEEP_ALIVE}
local ttl = tonumber(ARGV[2])
redis.call('DEL', KEYS[1])
-- HSET in slices: unpack() of thousands of values would overflow the Lua stack.
for i = 3, #ARGV, 1000 do
  redis.call('HSET', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
if #ARGV > 2 then redis.call('PEXPIRE', KEYS[1], ttl) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
keep_alive(KEYS[2], ttl)
return 1
`,
);

/**
 * KEYS[1] replica index zset. ARGV[1] counts key prefix, ARGV[2] replica to leave out.
 * Prunes expired replicas, then returns every live replica's hash as one flat field/value list.
 */
export const READ_COUNTS = script(
  'read-counts',
  1,
  `${NOW}
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')) do
  if id ~= ARGV[2] then
    local kv = redis.call('HGETALL', ARGV[1] .. id)
    for i = 1, #kv do out[#out + 1] = kv[i] end
  end
end
return out
`,
);

/** KEYS[1] counts hash, KEYS[2] replica index. ARGV[1] replica id. */
export const WITHDRAW = script(
  'withdraw',
  2,
  `redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
`,
);

/**
 * KEYS[1..n] leases. ARGV[1] owner, ARGV[2] ttl ms. For each key: take it when free (SET NX PX),
 * renew it when `owner` holds it; returns n results, 1 where `owner` holds the lease now.
 */
export const LEASE_MANY = script(
  'lease-many',
  -1,
  `local out = {}
for i = 1, #KEYS do
  if redis.call('SET', KEYS[i], ARGV[1], 'NX', 'PX', ARGV[2]) then
    out[i] = 1
  elseif redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
`,
);

/** KEYS[1] lease. ARGV[1] owner. Deletes the lease only if `owner` holds it. */
export const RELEASE = script(
  'release',
  1,
  `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`,
);

/**
 * KEYS[1] facts hash. ARGV[1] ttl ms, then (op, field, value) triplets applied in order: op `S`
 * sets the field, `D` deletes it (value unused). Resets the TTL when the hash still exists.
 */
export const APPLY_FACTS = script(
  'apply-facts',
  1,
  `for i = 2, #ARGV, 3 do
  if ARGV[i] == 'S' then
    redis.call('HSET', KEYS[1], ARGV[i + 1], ARGV[i + 2])
  else
    redis.call('HDEL', KEYS[1], ARGV[i + 1])
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return 1
`,
);

/** KEYS[1] registry zset. ARGV[1] address, ARGV[2] ttl ms. */
export const REGISTER = script(
  'register',
  1,
  `${NOW}${KEEP_ALIVE}
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
keep_alive(KEYS[1], ttl)
return 1
`,
);

/** KEYS[1] registry zset. Prunes expired addresses and returns the live ones. */
export const REGISTERED = script(
  'registered',
  1,
  `${NOW}
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
`,
);
