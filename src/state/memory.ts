import type { Clock } from '../util/clock.js';
import { systemClock } from '../util/clock.js';
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
    this.#counts.set(replicaId, { value: new Map(counts), until: this.#clock.now() + ttlMs });
    return Promise.resolve();
  }

  readCounts(exceptReplica: string): Promise<Map<string, number>> {
    const now = this.#clock.now();
    const sum = new Map<string, number>();
    for (const [replica, entry] of this.#counts) {
      if (entry.until <= now) {
        this.#counts.delete(replica);
        continue;
      }
      if (replica === exceptReplica) continue;
      for (const [key, n] of entry.value) {
        if (n > 0) sum.set(key, (sum.get(key) ?? 0) + n);
      }
    }
    return Promise.resolve(sum);
  }

  withdraw(replicaId: string): Promise<void> {
    this.#counts.delete(replicaId);
    return Promise.resolve();
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

  readFacts(): Promise<Map<string, BackendFact>> {
    return Promise.resolve(new Map(this.#facts));
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
