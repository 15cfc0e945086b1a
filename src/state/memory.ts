import type { Clock } from '../util/clock.js';
import { systemClock } from '../util/clock.js';
import { fairShare, grantOf } from './limit-grants.js';
import type { LimitAnswer, LimitClaim, LimitGrant, LimitRound } from './limit-grants.js';
import { poolOf } from './store.js';
import type { BackendFact, StateStore } from './store.js';

interface Expiring<T> {
  value: T;
  until: number;
}

/**
 * The embedded store: everything lives in this process. One instance may be shared by several
 * replicas in one process (tests do), and then it behaves as Redis would, TTLs included.
 */
export class MemoryStore implements StateStore {
  readonly kind = 'memory';
  readonly #clock: Clock;
  readonly #counts = new Map<string, Expiring<ReadonlyMap<string, number>>>();
  /** Live replicas: id → until (Redis's `replicas` zset), kept by publishing counts or claims. */
  readonly #live = new Map<string, number>();
  /** Per replica: until when its grants are held at their holds (its claims were lost). */
  readonly #settling = new Map<string, number>();
  /** Per replica: limit key → its open connections and grant (see limit-grants.ts). */
  readonly #claims = new Map<string, Expiring<ReadonlyMap<string, { open: number; granted: number }>>>();
  readonly #leases = new Map<string, Expiring<string>>();
  readonly #facts = new Map<string, BackendFact>();
  readonly #registry = new Map<string, Map<string, number>>();

  constructor(clock: Clock = systemClock) {
    this.#clock = clock;
  }

  isUp(): boolean {
    return true;
  }

  onStatus(_listener: (up: boolean) => void): void {
    // Never changes.
  }

  start(): Promise<void> {
    return Promise.resolve();
  }

  close(): Promise<void> {
    return Promise.resolve();
  }

  publishCounts(replicaId: string, counts: ReadonlyMap<string, number>, ttlMs: number): Promise<void> {
    const until = this.#clock.now() + ttlMs;
    this.#counts.set(replicaId, { value: new Map(counts), until });
    this.#live.set(replicaId, Math.max(until, this.#live.get(replicaId) ?? 0));
    return Promise.resolve();
  }

  readCounts(exceptReplica: string, pools: readonly string[]): Promise<Map<string, number>> {
    const now = this.#clock.now();
    const wanted = new Set(pools);
    const sum = new Map<string, number>();
    for (const [replica, entry] of this.#counts) {
      if (entry.until <= now) {
        this.#counts.delete(replica);
        continue;
      }
      if (replica === exceptReplica) continue;
      for (const [key, n] of entry.value) {
        if (n > 0 && wanted.has(poolOf(key) ?? '')) sum.set(key, (sum.get(key) ?? 0) + n);
      }
    }
    return Promise.resolve(sum);
  }

  withdraw(replicaId: string): Promise<void> {
    this.#counts.delete(replicaId);
    this.#claims.delete(replicaId);
    this.#settling.delete(replicaId);
    this.#live.delete(replicaId);
    return Promise.resolve();
  }

  /** One synchronous step for every claim: atomic, as the Redis script is. */
  claimLimits(replicaId: string, claims: readonly LimitClaim[], round: LimitRound): Promise<LimitAnswer> {
    const now = this.#clock.now();
    this.#live.set(replicaId, Math.max(now + round.ttlMs, this.#live.get(replicaId) ?? 0));
    for (const [replica, until] of this.#live) if (until <= now) this.#live.delete(replica);
    for (const [replica, entry] of this.#claims) if (entry.until <= now) this.#claims.delete(replica);
    const live = [...this.#live.keys()].sort();
    const n = Math.max(live.length, round.replicasHint);
    const rank = live.indexOf(replicaId);
    const before = this.#claims.get(replicaId)?.value;
    if (
      claims.some((c) => c.renew && before?.has(c.key) !== true) &&
      (this.#settling.get(replicaId) ?? 0) <= now
    )
      this.#settling.set(replicaId, now + round.ttlMs);
    const lost = (this.#settling.get(replicaId) ?? 0) > now;
    const mine = new Map<string, { open: number; granted: number }>();
    const grants = claims.map((claim): LimitGrant => {
      let othersOpen = 0;
      let othersGranted = 0;
      for (const [replica, entry] of this.#claims) {
        const c = replica === replicaId || !this.#live.has(replica) ? undefined : entry.value.get(claim.key);
        if (c === undefined) continue;
        othersOpen += c.open;
        othersGranted += c.granted;
      }
      const share = fairShare(claim.limit, claim.open, othersOpen, n, rank);
      const grant = grantOf(claim, share, othersGranted, round.grow && !lost);
      mine.set(claim.key, { open: claim.open, granted: grant });
      return { grant, share };
    });
    if (mine.size > 0) this.#claims.set(replicaId, { value: mine, until: now + round.ttlMs });
    else this.#claims.delete(replicaId);
    return Promise.resolve({ replicas: live.length, lost, grants });
  }

  leaseMany(names: readonly string[], owner: string, ttlMs: number): Promise<boolean[]> {
    const now = this.#clock.now();
    return Promise.resolve(
      names.map((name) => {
        const held = this.#leases.get(name);
        if (held && held.until > now && held.value !== owner) return false;
        this.#leases.set(name, { value: owner, until: now + ttlMs });
        return true;
      }),
    );
  }

  release(name: string, owner: string): Promise<void> {
    if (this.#leases.get(name)?.value === owner) this.#leases.delete(name);
    return Promise.resolve();
  }

  putFact(key: string, fact: BackendFact): Promise<void> {
    const merged: Record<string, unknown> = { ...this.#facts.get(key) };
    for (const [k, v] of Object.entries(fact)) if (v !== undefined) merged[k] = v;
    this.#facts.set(key, merged);
    return Promise.resolve();
  }

  clearFact(key: string, field: keyof BackendFact): Promise<void> {
    const cur = this.#facts.get(key);
    if (cur) {
      const next: Record<string, unknown> = { ...cur };
      delete next[field];
      this.#facts.set(key, next);
    }
    return Promise.resolve();
  }

  readFacts(pools: readonly string[]): Promise<Map<string, BackendFact>> {
    const wanted = new Set(pools);
    return Promise.resolve(new Map([...this.#facts].filter(([key]) => wanted.has(poolOf(key) ?? ''))));
  }

  register(pool: string, address: string, ttlMs: number): Promise<void> {
    let members = this.#registry.get(pool);
    if (!members) {
      members = new Map<string, number>();
      this.#registry.set(pool, members);
    }
    members.set(address, this.#clock.now() + ttlMs);
    return Promise.resolve();
  }

  deregister(pool: string, address: string): Promise<void> {
    this.#registry.get(pool)?.delete(address);
    return Promise.resolve();
  }

  registered(pool: string): Promise<string[]> {
    const now = this.#clock.now();
    const members = this.#registry.get(pool);
    if (!members) return Promise.resolve([]);
    const live: string[] = [];
    for (const [address, until] of members) {
      if (until <= now) members.delete(address);
      else live.push(address);
    }
    return Promise.resolve(live);
  }
}
