import type { AdminState } from '../upstream/backend.js';
import type { LimitAnswer, LimitGrant } from './limit-grants.js';
import { poolOf } from './store.js';
import type { BackendFact } from './store.js';

/**
 * Key layout of the Redis store. Every key starts with a hash tag: `{p}` (`p` is the prefix) or,
 * when the store spreads pools over Redis Cluster slots, `{p:pool:<pool>}` for the keys of one
 * pool. A tag's keys live in one slot, so the multi-key scripts work in every mode; a script only
 * ever touches the keys of one tag (`<t>` below).
 *
 * | key                         | type   | content                                  | TTL                                 |
 * |-----------------------------|--------|------------------------------------------|-------------------------------------|
 * | `<t>:counts:<replica>`      | hash   | backend key → open sessions (> 0)        | 10 × publish ttl, reset on publish  |
 * | `<t>:total`                 | hash   | backend key → sum over live replicas     | ≥ the index's, reset on publish     |
 * | `<t>:rebuilt`               | string | present until the total is rebuilt again | the rebuild period                  |
 * | `<t>:limits:<replica>`      | hash   | limit key → `open:grant:stamp`           | claim ttl, reset on each claim      |
 * | `<t>:settle:<replica>`      | string | present while its grants are held        | claim ttl from the loss found       |
 * | `<t>:replicas`              | zset   | replica id → expiry (Redis TIME, ms)     | ≥ the longest member's ttl          |
 * | `<t>:lease:<name>`          | string | owner                                    | lease ttl (PX), renewed by owner    |
 * | `<t>:facts`                 | hash   | `<backend key>#<fact>` → value           | facts ttl, reset on each write      |
 * | `<t>:registry:<pool>`       | zset   | address → expiry (Redis TIME, ms)        | ≥ the longest member's ttl          |
 *
 * Spread or not, the fleet's own tag `{p}` holds what belongs to no pool: listener limits and the
 * leases of names without a pool.
 */
export class SlotKeys {
  /** The hash tag, braces included: `{sluice}` or `{sluice:pool:ingress}`. */
  readonly tag: string;
  readonly #base: string;

  constructor(tag: string) {
    this.tag = tag;
    this.#base = `${tag}:`;
  }

  /** Prefix of the per-replica count hashes; the read script appends the replica id. */
  get countsPrefix(): string {
    return `${this.#base}counts:`;
  }

  counts(replicaId: string): string {
    return `${this.countsPrefix}${replicaId}`;
  }

  /** Every live replica's counts summed (see COUNT_FNS in redis-scripts.ts). */
  get total(): string {
    return `${this.#base}total`;
  }

  /** Present for a rebuild period after the total was last rebuilt from the replicas' hashes. */
  get rebuilt(): string {
    return `${this.#base}rebuilt`;
  }

  /** Prefix of the per-replica limit claims (see limit-grants.ts); the claim script appends the id. */
  get limitsPrefix(): string {
    return `${this.#base}limits:`;
  }

  limits(replicaId: string): string {
    return `${this.limitsPrefix}${replicaId}`;
  }

  /** Present while a replica settles after the store lost its claims (see CLAIM_LIMITS). */
  settle(replicaId: string): string {
    return `${this.#base}settle:${replicaId}`;
  }

  get replicas(): string {
    return `${this.#base}replicas`;
  }

  lease(name: string): string {
    return `${this.#base}lease:${name}`;
  }

  get facts(): string {
    return `${this.#base}facts`;
  }

  registry(pool: string): string {
    return `${this.#base}registry:${pool}`;
  }
}

/**
 * The keys of one fleet (one prefix): its own tag's, and with `spread` one tag per pool, so that
 * a Redis Cluster spreads the pools over its slots and primaries.
 */
export class RedisKeys extends SlotKeys {
  readonly spread: boolean;
  readonly #prefix: string;
  readonly #pools = new Map<string, SlotKeys>();

  constructor(prefix: string, spread = false) {
    super(`{${prefix}}`);
    this.#prefix = prefix;
    this.spread = spread;
  }

  /** A SCAN pattern matching every key of this fleet, spread or not (for tests and tools). */
  get pattern(): string {
    return `{${this.#prefix.replace(/[*?[\]\\]/g, '\\$&')}[}:]*`;
  }

  /** The keys of `pool`: the fleet's own unless pools are spread. */
  pool(pool: string | undefined): SlotKeys {
    if (!this.spread || pool === undefined) return this;
    let keys = this.#pools.get(pool);
    if (!keys) this.#pools.set(pool, (keys = new SlotKeys(`{${this.#prefix}:pool:${pool}}`)));
    return keys;
  }

  /** The keys of whatever `name` names (a backend key, a lease or limit on a backend): see poolOf. */
  of(name: string): SlotKeys {
    return this.spread ? this.pool(poolOf(name)) : this;
  }
}

/** Groups `items` by the slot `slotOf` gives each, keeping their order within a slot. */
export function bySlot<T>(items: Iterable<T>, slotOf: (item: T) => SlotKeys): Map<SlotKeys, T[]> {
  const groups = new Map<SlotKeys, T[]>();
  for (const item of items) {
    const slot = slotOf(item);
    const group = groups.get(slot);
    if (group) group.push(item);
    else groups.set(slot, [item]);
  }
  return groups;
}

/** Flattens counts into field/value arguments, leaving out anything that is not a positive count. */
export function encodeCounts(counts: ReadonlyMap<string, number>): string[] {
  const args: string[] = [];
  for (const [key, n] of counts) {
    if (Number.isFinite(n) && n >= 1) args.push(key, String(Math.floor(n)));
  }
  return args;
}

/** A reply that should be a flat list of strings (HGETALL, ZRANGE, script tables). */
export function stringList(reply: unknown): string[] {
  if (!Array.isArray(reply)) throw new Error('unexpected reply from Redis: expected an array');
  return reply.map((item: unknown) => {
    if (typeof item === 'string') return item;
    if (Buffer.isBuffer(item)) return item.toString('utf8');
    if (typeof item === 'number') return String(item);
    throw new Error('unexpected reply from Redis: expected strings');
  });
}

/** Sums a flat field/value list of counts; malformed or non-positive values count as zero. */
export function sumCounts(reply: unknown): Map<string, number> {
  const flat = stringList(reply);
  const sum = new Map<string, number>();
  for (let i = 0; i + 1 < flat.length; i += 2) {
    const key = flat[i] ?? '';
    const n = Number(flat[i + 1]);
    if (Number.isSafeInteger(n) && n > 0) sum.set(key, (sum.get(key) ?? 0) + n);
  }
  return sum;
}

/**
 * The answer of CLAIM_LIMITS: live replicas, the lost flag, then a grant and a fair share per
 * claim. A malformed reply is an error (the caller keeps its holds), never a made-up grant.
 */
export function decodeLimitAnswer(reply: unknown, claims: number): LimitAnswer {
  const flat = Array.isArray(reply) ? reply : [];
  const nums = flat.map((v: unknown) => (typeof v === 'number' ? v : Number(v)));
  if (nums.length !== 2 + 2 * claims || !nums.every((n) => Number.isSafeInteger(n) && n >= 0))
    throw new Error('unexpected reply from Redis: expected the live replicas and a grant per claim');
  const grants: LimitGrant[] = [];
  for (let i = 2; i < nums.length; i += 2) grants.push({ grant: nums[i] ?? 0, share: nums[i + 1] ?? 0 });
  return { replicas: nums[0] ?? 1, lost: nums[1] === 1, grants };
}

const FACT_FIELDS = ['healthy', 'admin', 'ejectedUntil'] as const satisfies readonly (keyof BackendFact)[];
const ADMIN_STATES: readonly string[] = ['enabled', 'draining', 'disabled'] satisfies AdminState[];

/** The hash field of one fact of one backend: `ingress/10.0.1.5:8443#admin`. */
export function factField(key: string, field: keyof BackendFact): string {
  return `${key}#${field}`;
}

/** Field/value arguments for the facts that are set; undefined fields are left out (merge). */
export function encodeFact(key: string, fact: BackendFact): string[] {
  const args: string[] = [];
  if (fact.healthy !== undefined) args.push(factField(key, 'healthy'), fact.healthy ? '1' : '0');
  if (fact.admin !== undefined) args.push(factField(key, 'admin'), fact.admin);
  if (fact.ejectedUntil !== undefined) args.push(factField(key, 'ejectedUntil'), String(fact.ejectedUntil));
  return args;
}

type MutableFact = { -readonly [K in keyof BackendFact]: BackendFact[K] };

function setFact(fact: MutableFact, field: string, value: string): void {
  if (field === 'healthy' && (value === '1' || value === '0')) fact.healthy = value === '1';
  else if (field === 'admin' && ADMIN_STATES.includes(value)) fact.admin = value as AdminState;
  else if (field === 'ejectedUntil' && value !== '' && Number.isFinite(Number(value)))
    fact.ejectedUntil = Number(value);
}

/**
 * Rebuilds facts from the HGETALL of the facts hash. The fact name follows the last `#`, so a
 * backend key may itself contain `#`. Unknown names and malformed values are skipped: another
 * version of sluice may share the store.
 */
export function decodeFacts(reply: unknown): Map<string, BackendFact> {
  const flat = stringList(reply);
  const facts = new Map<string, MutableFact>();
  for (let i = 0; i + 1 < flat.length; i += 2) {
    const name = flat[i] ?? '';
    const at = name.lastIndexOf('#');
    const field = name.slice(at + 1);
    if (at <= 0 || !(FACT_FIELDS as readonly string[]).includes(field)) continue;
    const key = name.slice(0, at);
    let fact = facts.get(key);
    if (!fact) facts.set(key, (fact = {}));
    setFact(fact, field, flat[i + 1] ?? '');
  }
  return facts;
}
