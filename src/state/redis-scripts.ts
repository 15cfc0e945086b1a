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
 * Scripts touch keys they build from a prefix argument (pruning reads each expired replica's
 * hash). That is allowed in Redis Cluster because every key a script touches shares one hash tag
 * (see RedisKeys) and so one slot.
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
 * Counts summed in Redis. Each replica keeps its own hash (`<t>:counts:<replica>`) and adds the
 * change of each publish to one total per slot (`<t>:total`), so that a read is one hash of B
 * fields, not R hashes: O(R × B) work per heartbeat over the fleet instead of O(R² × B).
 *
 * The total stays exact because every change goes through these scripts: a publish adds its
 * difference, a withdraw and the pruning of an expired replica subtract its hash (which outlives
 * the replica's entry in the index, so it is still there to subtract). Whatever else happens to
 * the keys (eviction under memory pressure, a version that does not keep the total, a failover
 * that lost writes), the total is rebuilt from the live replicas' hashes once per rebuild period,
 * and whenever it is missing while replicas are live.
 */
const COUNT_FNS = `local function count_add(total, field, n)
  if n ~= 0 and redis.call('HINCRBY', total, field, n) <= 0 then redis.call('HDEL', total, field) end
end
local function count_subtract(total, key)
  local kv = redis.call('HGETALL', key)
  for i = 1, #kv, 2 do count_add(total, kv[i], -tonumber(kv[i + 1])) end
end
local function prune_replicas(replicas, total, prefix, now)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', replicas, '-inf', now)) do
    count_subtract(total, prefix .. id)
    redis.call('DEL', prefix .. id)
  end
  redis.call('ZREMRANGEBYSCORE', replicas, '-inf', now)
end
local function rebuild_total(replicas, total, prefix, marker, period, now)
  local live = redis.call('ZRANGEBYSCORE', replicas, '(' .. now, '+inf')
  if #live == 0 then return end
  local due = redis.call('SET', marker, '1', 'NX', 'PX', period)
  if not due and redis.call('EXISTS', total) == 1 then return end
  redis.call('DEL', total)
  for _, id in ipairs(live) do
    local kv = redis.call('HGETALL', prefix .. id)
    for i = 1, #kv, 2 do count_add(total, kv[i], tonumber(kv[i + 1])) end
  end
  local ttl = redis.call('PTTL', replicas)
  if ttl > 0 and redis.call('EXISTS', total) == 1 then redis.call('PEXPIRE', total, ttl) end
end
`;

/**
 * KEYS[1] this replica's counts hash, KEYS[2] replica index zset, KEYS[3] total hash.
 * ARGV[1] replica id, ARGV[2] ttl ms, ARGV[3] counts key prefix, ARGV[4..] backend key, count
 * pairs (all > 0). Prunes expired replicas, adds the difference from this replica's last publish
 * to the total, and replaces its hash whole. The hash lives 10 TTLs (so that it is still there
 * to subtract when its entry in the index expires); the index and the total, one.
 */
export const PUBLISH_COUNTS = script(
  'publish-counts',
  3,
  `${NOW}${KEEP_ALIVE}${COUNT_FNS}
local ttl = tonumber(ARGV[2])
prune_replicas(KEYS[2], KEYS[3], ARGV[3], now)
local old = {}
local kv = redis.call('HGETALL', KEYS[1])
for i = 1, #kv, 2 do old[kv[i]] = tonumber(kv[i + 1]) end
for i = 4, #ARGV, 2 do
  local n = tonumber(ARGV[i + 1])
  count_add(KEYS[3], ARGV[i], n - (old[ARGV[i]] or 0))
  old[ARGV[i]] = nil
end
for field, n in pairs(old) do count_add(KEYS[3], field, -n) end
redis.call('DEL', KEYS[1])
-- HSET in slices: unpack() of thousands of values would overflow the Lua stack.
for i = 4, #ARGV, 1000 do
  redis.call('HSET', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
if #ARGV > 3 then redis.call('PEXPIRE', KEYS[1], 10 * ttl) end
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
keep_alive(KEYS[2], ttl)
if redis.call('EXISTS', KEYS[3]) == 1 then keep_alive(KEYS[3], ttl) end
return 1
`,
);

/**
 * KEYS[1] this replica's counts hash, KEYS[2] replica index zset, KEYS[3] total hash.
 * ARGV[1] replica id, ARGV[2] ttl ms, ARGV[3] counts key prefix, ARGV[4] '1' when the hash
 * should exist (the replica published counts before), ARGV[5..] backend key, count pairs of what
 * changed since the replica's last publish (0: gone). Prunes expired replicas; then, unless the
 * hash is missing where it should be (the store lost it, or pruned this replica: answers 0, and
 * the replica publishes whole), applies the changes to the hash and the total and renews the
 * replica's entry and TTLs as PUBLISH_COUNTS does. In steady state a publish carries nothing.
 */
export const PUBLISH_CHANGES = script(
  'publish-changes',
  3,
  `${NOW}${KEEP_ALIVE}${COUNT_FNS}
local ttl = tonumber(ARGV[2])
prune_replicas(KEYS[2], KEYS[3], ARGV[3], now)
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 5, #ARGV, 2 do
  local n = tonumber(ARGV[i + 1])
  count_add(KEYS[3], ARGV[i], n - tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0'))
  if n > 0 then redis.call('HSET', KEYS[1], ARGV[i], n) else redis.call('HDEL', KEYS[1], ARGV[i]) end
end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], 10 * ttl) end
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
keep_alive(KEYS[2], ttl)
if redis.call('EXISTS', KEYS[3]) == 1 then keep_alive(KEYS[3], ttl) end
return 1
`,
);

/**
 * KEYS[1] replica index zset, KEYS[2] total hash, KEYS[3] the reader's counts hash, KEYS[4]
 * rebuild marker. ARGV[1] counts key prefix, ARGV[2] rebuild period ms.
 * Prunes expired replicas, rebuilds the total when due (see COUNT_FNS), and returns the total
 * less the reader's own counts as one flat field/value list.
 */
export const READ_COUNTS = script(
  'read-counts',
  4,
  `${NOW}${COUNT_FNS}
prune_replicas(KEYS[1], KEYS[2], ARGV[1], now)
rebuild_total(KEYS[1], KEYS[2], ARGV[1], KEYS[4], tonumber(ARGV[2]), now)
local own = {}
local kv = redis.call('HGETALL', KEYS[3])
for i = 1, #kv, 2 do own[kv[i]] = tonumber(kv[i + 1]) end
local out = {}
local total = redis.call('HGETALL', KEYS[2])
for i = 1, #total, 2 do
  local n = tonumber(total[i + 1]) - (own[total[i]] or 0)
  if n > 0 then
    out[#out + 1] = total[i]
    out[#out + 1] = n
  end
end
return out
`,
);

/**
 * KEYS[1] counts hash, KEYS[2] replica index, KEYS[3] limits hash, KEYS[4] settle marker,
 * KEYS[5] total hash. ARGV[1] replica id. Takes the replica's counts out of the total too.
 */
export const WITHDRAW = script(
  'withdraw',
  5,
  `${COUNT_FNS}
count_subtract(KEYS[5], KEYS[1])
redis.call('DEL', KEYS[1], KEYS[3], KEYS[4])
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

/** Deletes the fields of a limits hash whose claim carries another stamp than `stamp`. */
const PRUNE_STAMPS = `local function prune(key, stamp)
  local all = redis.call('HGETALL', key)
  local stale = {}
  for i = 1, #all, 2 do
    if string.match(all[i + 1], ':([^:]*)$') ~= stamp then stale[#stale + 1] = all[i] end
  end
  for i = 1, #stale, 1000 do
    redis.call('HDEL', key, unpack(stale, i, math.min(i + 999, #stale)))
  end
end
`;

/**
 * Cluster-wide limits (see limit-grants.ts: this is fairShare and grantOf).
 * KEYS[1] this replica's limits hash, KEYS[2] replica index zset, KEYS[3] this replica's settle
 * marker, KEYS[4] total counts hash. ARGV[1] replica id, ARGV[2] ttl ms, ARGV[3] limits key
 * prefix, ARGV[4] replicas hint, ARGV[5] stamp of this round, ARGV[6] '1' when this call holds
 * the whole round (then claims of other rounds are dropped here), ARGV[7] '1' when grants may
 * grow beyond their holds, ARGV[8] counts key prefix (pruning an expired replica takes its counts
 * out of the total), ARGV[9..] (limit key, limit, open, hold, renew '1'|'0') quintuples.
 * Marks the replica live, reads every other live replica's claim on each key, and records this
 * replica's open count and grant: `open:grant:stamp`. A claim to renew that is missing means the
 * store lost its data: the replica then settles for a TTL (the marker), its grants held at their
 * holds. Returns the live replicas, 1 while settling (else 0), then per claim its grant and its
 * fair share.
 */
export const CLAIM_LIMITS = script(
  'claim-limits',
  4,
  `${NOW}${KEEP_ALIVE}${PRUNE_STAMPS}${COUNT_FNS}
local ttl = tonumber(ARGV[2])
prune_replicas(KEYS[2], KEYS[4], ARGV[8], now)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
keep_alive(KEYS[2], ttl)
local live = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf')
table.sort(live)
local rank = 0
for i, id in ipairs(live) do
  if id == ARGV[1] then rank = i - 1 end
end
local n = math.max(#live, tonumber(ARGV[4]))
local fields, open_sum, granted_sum = {}, {}, {}
for i = 9, #ARGV, 5 do
  fields[#fields + 1] = ARGV[i]
  open_sum[#fields] = 0
  granted_sum[#fields] = 0
end
local settling = redis.call('EXISTS', KEYS[3]) == 1
if #fields > 0 then
  local mine = redis.call('HMGET', KEYS[1], unpack(fields))
  for j = 1, #fields do
    if ARGV[9 + (j - 1) * 5 + 4] == '1' and not mine[j] then settling = true end
  end
  for _, id in ipairs(live) do
    if id ~= ARGV[1] then
      local values = redis.call('HMGET', ARGV[3] .. id, unpack(fields))
      for j = 1, #fields do
        local v = values[j]
        if v then
          local o, g = string.match(v, '^(%d+):(%d+):')
          if o then
            open_sum[j] = open_sum[j] + tonumber(o)
            granted_sum[j] = granted_sum[j] + tonumber(g)
          end
        end
      end
    end
  end
end
local out = { #live, 0 }
if settling then
  out[2] = 1
  if redis.call('EXISTS', KEYS[3]) == 0 then redis.call('SET', KEYS[3], '1', 'PX', ttl) end
end
local set = {}
for j = 1, #fields do
  local a = 9 + (j - 1) * 5
  local limit, open, hold = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local share = 0
  local free = limit - open - open_sum[j]
  if free > 0 then
    share = math.floor(free / n)
    if rank < free % n then share = share + 1 end
  end
  local grant = hold
  if ARGV[7] == '1' and not settling then
    grant = math.max(hold, math.min(limit - granted_sum[j], open + share))
  end
  out[#out + 1] = grant
  out[#out + 1] = share
  set[#set + 1] = fields[j]
  set[#set + 1] = string.format('%d:%d:%s', open, grant, ARGV[5])
end
for i = 1, #set, 1000 do
  redis.call('HSET', KEYS[1], unpack(set, i, math.min(i + 999, #set)))
end
if ARGV[6] == '1' then prune(KEYS[1], ARGV[5]) end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ttl) end
return out
`,
);

/**
 * KEYS[1] a replica's limits hash. ARGV[1] stamp. After a round of claims sent in several calls
 * (all answered), drops the claims that round did not make.
 */
export const PRUNE_LIMITS = script(
  'prune-limits',
  1,
  `${PRUNE_STAMPS}
prune(KEYS[1], ARGV[1])
return 1
`,
);
