import type { AdminState } from '../upstream/backend.js';
import type { LimitAnswer, LimitGrant } from './limit-grants.js';
import type { BackendFact } from './store.js';

/**
 * Key layout of the Redis store. Every key starts with `{prefix}:`; the braces make the prefix a
 * Redis Cluster hash tag, so all keys live in one slot and multi-key scripts work in every mode.
 *
 * | key                         | type   | content                                  | TTL                                 |
 * |-----------------------------|--------|------------------------------------------|-------------------------------------|
 * | `{p}:counts:<replica>`      | hash   | backend key → open sessions (> 0)        | publish ttl, reset on each publish  |
 * | `{p}:limits:<replica>`      | hash   | limit key → `open:grant:stamp`           | claim ttl, reset on each claim      |
 * | `{p}:settle:<replica>`      | string | present while its grants are held        | claim ttl from the loss found       |
 * | `{p}:replicas`              | zset   | replica id → expiry (Redis TIME, ms)     | ≥ the longest member's ttl          |
 * | `{p}:lease:<name>`          | string | owner                                    | lease ttl (PX), renewed by owner    |
 * | `{p}:facts`                 | hash   | `<backend key>#<fact>` → value           | facts ttl, reset on each write      |
 * | `{p}:registry:<pool>`       | zset   | address → expiry (Redis TIME, ms)        | ≥ the longest member's ttl          |
 */
export class RedisKeys {
  readonly #base: string;

  constructor(prefix: string) {
    this.#base = `{${prefix}}:`;
  }

  /** What every key of this store starts with (for SCAN in tests and tools). */
  get base(): string {
    return this.#base;
  }

  /** Prefix of the per-replica count hashes; the read script appends the replica id. */
  get countsPrefix(): string {
    return `${this.#base}counts:`;
  }

  counts(replicaId: string): string {
    return `${this.countsPrefix}${replicaId}`;
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
