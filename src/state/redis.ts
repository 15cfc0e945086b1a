import type { Logger } from '../telemetry/logger.js';
import type { Clock, Random } from '../util/clock.js';
import { systemRandom } from '../util/clock.js';
import {
  RedisKeys,
  bySlot,
  decodeFacts,
  decodeLimitAnswer,
  encodeCounts,
  encodeFact,
  factField,
  stringList,
  sumCounts,
} from './redis-codec.js';
import type { SlotKeys } from './redis-codec.js';
import type { Backoff, RedisClient, RedisConfig } from './redis-connect.js';
import { RedisLink } from './redis-link.js';
import * as scripts from './redis-scripts.js';
import type { LimitAnswer, LimitClaim, LimitGrant, LimitRound } from './limit-grants.js';
import { poolOf } from './store.js';
import type { BackendFact, StateStore } from './store.js';

/** What the Redis store needs besides its config section. */
export interface RedisStoreOptions {
  readonly config: RedisConfig;
  readonly logger: Logger;
  readonly clock?: Clock;
  readonly random?: Random;
  /** Reconnect delays: doubling from `baseMs` up to `maxMs`, with jitter. Default 100 ms → 2 s. */
  readonly backoff?: Backoff;
  /**
   * TTL of the facts hash, reset by every putFact/clearFact. Facts are runtime state (like an
   * admin drain in HAProxy's runtime API): they outlive replicas, but not a fleet that wrote
   * nothing for this long. Default 7 days.
   */
  readonly factsTtlMs?: number;
  /**
   * How often the summed counts are rebuilt from every live replica's own counts, which bounds
   * how long any drift of the sum can last (see COUNT_FNS in redis-scripts.ts). Default 30 s.
   */
  readonly rebuildMs?: number;
  /** Builds the client; tests may pass their own. Default: standalone, Sentinel or Cluster per config. */
  readonly createClient?: (config: RedisConfig, backoff: Backoff, random: Random) => RedisClient;
}

const DEFAULT_BACKOFF: Backoff = { baseMs: 100, maxMs: 2000 };
const DEFAULT_FACTS_TTL_MS = 7 * 24 * 3_600_000;
const DEFAULT_REBUILD_MS = 30_000;
/**
 * Publishes between two of the whole counts (the others carry what changed). The whole one
 * replaces whatever the store holds under this replica's id, so even two processes that were
 * given the same id by mistake cannot leave a mixed hash for longer than this many heartbeats.
 */
const WHOLE_EVERY = 30;
/**
 * Leases per script call in leaseMany: a few hundred keep one call's time in Redis well under a
 * millisecond, so a replica with 10,000 checked backends sends 20 calls per heartbeat, not 10,000.
 */
const LEASE_BATCH = 500;
/** Fact writes per script call (each a set or a delete of one field). */
const FACT_OPS_BATCH = 500;
/**
 * Limit claims per script call: each reads that many fields of every live replica's claims, so a
 * few hundred keep one call's time in Redis short whatever the number of cluster-scoped limits.
 */
const LIMIT_BATCH = 500;

/**
 * The reconnect backoff for a replica syncing every `heartbeatMs`: doubling from 100 ms, capped at
 * one heartbeat (and at 2 s), so that once Redis is back (a restart, or Sentinel naming a new
 * primary) a replica is on it within one heartbeat, and its counts reach the others one heartbeat
 * later.
 */
export function reconnectBackoff(heartbeatMs: number): Backoff {
  return { baseMs: 100, maxMs: Math.max(100, Math.min(DEFAULT_BACKOFF.maxMs, heartbeatMs)) };
}

/** A whole count of connections, never negative (what the claim script parses). */
function connections(n: number): number {
  return Number.isFinite(n) ? Math.max(0, Math.floor(n)) : 0;
}

/** Whole positive milliseconds, as PX and PEXPIRE require. */
function ttlArg(ms: number): number {
  return Math.max(1, Math.ceil(ms));
}

/**
 * The shared store on Redis (standalone, Sentinel or Cluster through ioredis). See redis-codec.ts
 * for the key layout, redis-scripts.ts for the atomic steps, and redis-link.ts for the connection
 * and how failures are met (no call ever waits on an unreachable Redis).
 */
export class RedisStore implements StateStore {
  readonly kind = 'redis';
  readonly keys: RedisKeys;
  readonly #link: RedisLink;
  readonly #factsTtlMs: number;
  readonly #rebuildMs: number;
  /** Fact writes (op, field, value) waiting for the batch in flight, and who waits for them. */
  #factOps: string[] = [];
  #factWaiters: { resolve: () => void; reject: (err: unknown) => void }[] = [];
  #factsInFlight = false;
  /** Tells this process's rounds of claims apart from each other and from an earlier process's. */
  readonly #stampBase: string;
  #claimRounds = 0;
  /**
   * Slots holding this replica's counts or claims as of its last publish or claim: the next one
   * empties those it no longer needs (with pools spread, a replica's counts may leave a slot), and
   * withdraw() clears every slot this replica ever wrote to.
   */
  #countSlots = new Set<SlotKeys>();
  #limitSlots = new Set<SlotKeys>();
  readonly #written = new Set<SlotKeys>();
  /** Per slot, this replica's counts as the store holds them after the last answered publish. */
  readonly #published = new Map<SlotKeys, ReadonlyMap<string, number>>();
  #publishedAs: string | undefined;
  #publishes = 0;

  constructor(opts: RedisStoreOptions) {
    const random = opts.random ?? systemRandom;
    this.#stampBase = Math.floor(random() * 2 ** 32).toString(36);
    this.#factsTtlMs = opts.factsTtlMs ?? DEFAULT_FACTS_TTL_MS;
    this.#rebuildMs = ttlArg(opts.rebuildMs ?? DEFAULT_REBUILD_MS);
    // Spread over slots by pool only on a Cluster: elsewhere one tag keeps every step one call.
    this.keys = new RedisKeys(opts.config.key_prefix, opts.config.nodes !== undefined);
    this.#link = new RedisLink({ ...opts, random, backoff: opts.backoff ?? DEFAULT_BACKOFF });
  }

  isUp(): boolean {
    return this.#link.isUp();
  }

  onStatus(listener: (up: boolean) => void): void {
    this.#link.onStatus(listener);
  }

  /**
   * Connects, waiting at most `command_timeout` for the first 'ready'. Always resolves: when
   * Redis is down the store reports down and keeps connecting in the background.
   */
  start(): Promise<void> {
    return this.#link.start();
  }

  /** Says goodbye politely when connected (bounded by `command_timeout`), then drops the connection. */
  close(): Promise<void> {
    return this.#link.close();
  }

  /**
   * One script call per slot: the slots of the pools with counts here, plus those that held this
   * replica's counts at the last publish (emptied now). With no counts anywhere, the fleet's slot
   * still marks the replica live. A slot gets only what changed since the last publish it
   * answered (in steady state, nothing), and the whole counts every WHOLE_EVERY publishes, after a
   * failure, or when it lost them.
   */
  async publishCounts(replicaId: string, counts: ReadonlyMap<string, number>, ttlMs: number): Promise<void> {
    if (this.#publishedAs !== replicaId) {
      this.#published.clear();
      this.#publishedAs = replicaId;
    }
    const whole = this.#publishes++ % WHOLE_EVERY === 0;
    const done = await this.#eachSlot(
      bySlot(counts, ([key]) => this.keys.of(key)),
      this.#countSlots,
      (slot, entries) => this.#publishSlot(slot, replicaId, entries, ttlMs, whole),
    );
    this.#countSlots = done.held;
    const failed = done.results.find((r) => r.result.status === 'rejected')?.result;
    if (failed?.status === 'rejected') throw failed.reason;
  }

  /**
   * Runs `step` for each slot of `groups`, and with nothing for each slot of `held` that has
   * nothing now (which empties it there); with no slot at all, for the fleet's slot (which keeps
   * this replica live). Answers each slot's result, and the slots that hold this replica's data
   * after it: those given something, and those whose step failed (unknown).
   */
  async #eachSlot<T, R>(
    groups: Map<SlotKeys, T[]>,
    held: ReadonlySet<SlotKeys>,
    step: (slot: SlotKeys, items: T[]) => Promise<R>,
  ): Promise<{ results: { items: T[]; result: PromiseSettledResult<R> }[]; held: Set<SlotKeys> }> {
    for (const slot of held) if (!groups.has(slot)) groups.set(slot, []);
    if (groups.size === 0) groups.set(this.keys, []);
    const slots = [...groups];
    const settled = await Promise.allSettled(slots.map(([slot, items]) => step(slot, items)));
    const results = slots.map(([, items], i) => ({ items, result: settled[i]! }));
    const still = slots.filter(([, items], i) => items.length > 0 || settled[i]?.status === 'rejected');
    return { results, held: new Set(still.map(([slot]) => slot)) };
  }

  async #publishSlot(
    slot: SlotKeys,
    replicaId: string,
    entries: readonly (readonly [string, number])[],
    ttlMs: number,
    whole: boolean,
  ): Promise<void> {
    this.#written.add(slot);
    const counts = new Map<string, number>();
    for (const [key, n] of entries) if (Number.isFinite(n) && n >= 1) counts.set(key, Math.floor(n));
    const keys = [slot.counts(replicaId), slot.replicas, slot.total];
    const before = this.#published.get(slot);
    this.#published.delete(slot); // unknown until answered
    if (!whole && before !== undefined) {
      const changes: (string | number)[] = [];
      for (const [key, n] of counts) if (before.get(key) !== n) changes.push(key, n);
      for (const key of before.keys()) if (!counts.has(key)) changes.push(key, 0);
      const head = [replicaId, ttlArg(ttlMs), slot.countsPrefix, before.size > 0 ? '1' : '0'];
      if ((await this.#link.run(scripts.PUBLISH_CHANGES, keys, [...head, ...changes])) === 1) {
        this.#published.set(slot, counts);
        return;
      }
    }
    await this.#link.run(scripts.PUBLISH_COUNTS, keys, [
      replicaId,
      ttlArg(ttlMs),
      slot.countsPrefix,
      ...encodeCounts(counts),
    ]);
    this.#published.set(slot, counts);
  }

  async readCounts(exceptReplica: string, pools: readonly string[]): Promise<Map<string, number>> {
    const replies = await Promise.all(
      this.#slotsOf(pools).map((slot) =>
        this.#link.run(
          scripts.READ_COUNTS,
          [slot.replicas, slot.total, slot.counts(exceptReplica), slot.rebuilt],
          [slot.countsPrefix, this.#rebuildMs],
        ),
      ),
    );
    const wanted = new Set(pools);
    const sum = new Map<string, number>();
    for (const reply of replies)
      for (const [key, n] of sumCounts(reply)) if (wanted.has(poolOf(key) ?? '')) sum.set(key, n);
    return sum;
  }

  async withdraw(replicaId: string): Promise<void> {
    const slots = new Set([this.keys, ...this.#written]);
    await Promise.all(
      [...slots].map((slot) =>
        this.#link.run(
          scripts.WITHDRAW,
          [slot.counts(replicaId), slot.replicas, slot.limits(replicaId), slot.settle(replicaId), slot.total],
          [replicaId],
        ),
      ),
    );
    this.#countSlots.clear();
    this.#limitSlots.clear();
    this.#published.clear();
  }

  /** The distinct slots of `pools` (the fleet's alone unless pools are spread). */
  #slotsOf(pools: readonly string[]): SlotKeys[] {
    return [...new Set(pools.map((p) => this.keys.pool(p)))];
  }

  /**
   * Claims go per slot (a backend's limit lives with its pool, a listener's in the fleet's slot),
   * 500 per script call, each atomic for its keys (a key's grant depends on that key alone). A
   * slot whose claims take several calls writes them with a stamp of this round and drops the
   * older ones only once every call has been answered, so a claim is never missing while a grant
   * made under it may still be in use. A slot claimed in before and not now gets an empty claim,
   * which drops what it held.
   */
  async claimLimits(
    replicaId: string,
    claims: readonly LimitClaim[],
    round: LimitRound,
  ): Promise<LimitAnswer> {
    const stamp = `${this.#stampBase}.${++this.#claimRounds}`;
    const done = await this.#eachSlot(
      bySlot(
        claims.map((claim, index) => ({ claim, index })),
        ({ claim }) => this.keys.of(claim.key),
      ),
      this.#limitSlots,
      (slot, group) => this.#claimSlot(slot, replicaId, group, round, stamp),
    );
    this.#limitSlots = done.held;
    const grants: LimitGrant[] = new Array<LimitGrant>(claims.length);
    let replicas = 1;
    let lost = false;
    for (const { items, result } of done.results) {
      if (result.status === 'rejected') throw result.reason;
      replicas = Math.max(replicas, result.value.replicas);
      lost ||= result.value.lost;
      items.forEach(({ index }, j) => (grants[index] = result.value.grants[j]!));
    }
    return { replicas, lost, grants };
  }

  async #claimSlot(
    slot: SlotKeys,
    replicaId: string,
    claims: readonly { claim: LimitClaim }[],
    round: LimitRound,
    stamp: string,
  ): Promise<LimitAnswer> {
    this.#written.add(slot);
    const own = slot.limits(replicaId);
    const whole = claims.length <= LIMIT_BATCH;
    const head = [
      replicaId,
      ttlArg(round.ttlMs),
      slot.limitsPrefix,
      Math.max(1, Math.floor(round.replicasHint)),
      stamp,
      whole ? '1' : '0',
      round.grow ? '1' : '0',
      slot.countsPrefix,
    ];
    const calls: Promise<LimitAnswer>[] = [];
    for (let i = 0; i === 0 || i < claims.length; i += LIMIT_BATCH) {
      const batch = claims.slice(i, i + LIMIT_BATCH);
      const args: (string | number)[] = [...head];
      for (const { claim: c } of batch)
        args.push(c.key, connections(c.limit), connections(c.open), connections(c.hold), c.renew ? '1' : '0');
      const call = this.#link.run(
        scripts.CLAIM_LIMITS,
        [own, slot.replicas, slot.settle(replicaId), slot.total],
        args,
      );
      calls.push(call.then((reply) => decodeLimitAnswer(reply, batch.length)));
    }
    const answers = await Promise.all(calls);
    if (!whole) await this.#link.run(scripts.PRUNE_LIMITS, [own], [stamp]);
    return {
      replicas: Math.max(1, ...answers.map((a) => a.replicas)),
      lost: answers.some((a) => a.lost),
      grants: answers.flatMap((a) => a.grants),
    };
  }

  async leaseMany(names: readonly string[], owner: string, ttlMs: number): Promise<boolean[]> {
    const groups = bySlot(
      names.map((name, index) => ({ name, index })),
      ({ name }) => this.keys.of(name),
    );
    const calls: Promise<void>[] = [];
    const out = new Array<boolean>(names.length).fill(false);
    for (const [slot, group] of groups)
      for (let i = 0; i < group.length; i += LEASE_BATCH) {
        const batch = group.slice(i, i + LEASE_BATCH);
        const keys = batch.map(({ name }) => slot.lease(name));
        const call = this.#link.run(scripts.LEASE_MANY, keys, [owner, ttlArg(ttlMs)]);
        calls.push(
          call.then((reply) => {
            if (!Array.isArray(reply) || reply.length !== batch.length)
              throw new Error('unexpected reply from Redis: expected an answer per lease');
            batch.forEach(({ index }, j) => (out[index] = reply[j] === 1));
          }),
        );
      }
    await Promise.all(calls);
    return out;
  }

  async release(name: string, owner: string): Promise<void> {
    await this.#link.run(scripts.RELEASE, [this.keys.of(name).lease(name)], [owner]);
  }

  putFact(key: string, fact: BackendFact): Promise<void> {
    const fields = encodeFact(key, fact);
    if (fields.length === 0) return Promise.resolve();
    const ops: string[] = [];
    for (let i = 0; i + 1 < fields.length; i += 2) ops.push('S', fields[i]!, fields[i + 1]!);
    return this.#writeFacts(ops);
  }

  clearFact(key: string, field: keyof BackendFact): Promise<void> {
    return this.#writeFacts(['D', factField(key, field), '']);
  }

  /**
   * Fact writes go out in order, batched: a write made while none is in flight is sent at once;
   * writes made meanwhile wait and go together when it is answered (many backends changing
   * verdict at once make a few calls, not one each). A failed batch fails each of its writes.
   */
  #writeFacts(ops: readonly string[]): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#factOps.push(...ops);
      this.#factWaiters.push({ resolve, reject });
      this.#sendFacts();
    });
  }

  #sendFacts(): void {
    if (this.#factsInFlight || this.#factWaiters.length === 0) return;
    const ops = this.#factOps;
    const waiters = this.#factWaiters;
    this.#factOps = [];
    this.#factWaiters = [];
    this.#factsInFlight = true;
    const calls: Promise<unknown>[] = [];
    // Per slot (a backend's facts live with its pool), in order: sent in order on one connection
    // to that slot's server, so Redis applies them in order.
    const triplets: (readonly string[])[] = [];
    for (let i = 0; i + 2 < ops.length; i += 3) triplets.push(ops.slice(i, i + 3));
    for (const [slot, group] of bySlot(triplets, ([, field]) => this.keys.of(field ?? ''))) {
      for (let i = 0; i < group.length; i += FACT_OPS_BATCH)
        calls.push(
          this.#link.run(
            scripts.APPLY_FACTS,
            [slot.facts],
            [this.#factsTtlMs, ...group.slice(i, i + FACT_OPS_BATCH).flat()],
          ),
        );
    }
    void Promise.all(calls)
      .then(
        () => waiters.forEach((w) => w.resolve()),
        (err: unknown) => waiters.forEach((w) => w.reject(err)),
      )
      .finally(() => {
        this.#factsInFlight = false;
        this.#sendFacts();
      });
  }

  async readFacts(pools: readonly string[]): Promise<Map<string, BackendFact>> {
    const replies = await Promise.all(
      this.#slotsOf(pools).map((slot) => this.#link.call('HGETALL', slot.facts)),
    );
    const wanted = new Set(pools);
    const facts = new Map<string, BackendFact>();
    for (const reply of replies)
      for (const [key, fact] of decodeFacts(reply)) if (wanted.has(poolOf(key) ?? '')) facts.set(key, fact);
    return facts;
  }

  async register(pool: string, address: string, ttlMs: number): Promise<void> {
    await this.#link.run(scripts.REGISTER, [this.keys.pool(pool).registry(pool)], [address, ttlArg(ttlMs)]);
  }

  async deregister(pool: string, address: string): Promise<void> {
    await this.#link.call('ZREM', this.keys.pool(pool).registry(pool), address);
  }

  async registered(pool: string): Promise<string[]> {
    return stringList(await this.#link.run(scripts.REGISTERED, [this.keys.pool(pool).registry(pool)], []));
  }
}
