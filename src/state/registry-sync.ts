import { formatHostPort, parseHostPort } from '../config/values.js';
import type { Member, Pool } from '../upstream/pool.js';
import type { Clock } from '../util/clock.js';
import type { StateStore } from './store.js';

/** What one pool's registry discovery remembers between rounds. */
interface PoolRegistry {
  readonly members: Map<string, Member>;
  /** Clock time since when a member has been missing from the registry. */
  readonly missingSince: Map<string, number>;
  /** The member list last given to the pool, to skip rebuilds when nothing changed. */
  signature: string;
}

/** Parses a registered `host:port`; undefined for anything else (another tool may write there). */
export function registryMember(address: string): Member | undefined {
  const r = parseHostPort(address);
  if (!r.ok) return undefined;
  const { host, port } = r.value;
  return { address: formatHostPort(host, port), host, port, weight: 1 };
}

/**
 * Registry discovery (`discovery: { registry: { ttl } }`): the pool's `registry` members are the
 * addresses registered for it in the store (`sluice register`), read every heartbeat.
 *
 * - A new member joins like any discovered backend: with health `unknown`, so a pool with
 *   active checks uses it only after it passes them.
 * - A member missing from the registry stays for the pool's `ttl` before it is removed (and
 *   drains): a Redis that restarted empty is refilled by the registrants within a third of their
 *   ttl, and must not empty the pool meanwhile. A deregistered backend therefore keeps getting
 *   sessions for up to `ttl`: a backend should deregister, wait that long, then stop.
 * - When the store cannot be read the last members are kept, as DNS discovery keeps its last
 *   answer: the store going down never removes a backend.
 */
export class RegistrySync {
  readonly #store: StateStore;
  readonly #clock: Clock;
  readonly #pools = new Map<Pool, PoolRegistry>();
  readonly #onChange: (pool: Pool, addresses: readonly string[]) => void;

  constructor(store: StateStore, clock: Clock, onChange: (pool: Pool, addresses: readonly string[]) => void) {
    this.#store = store;
    this.#clock = clock;
    this.#onChange = onChange;
  }

  /** Reads the registry of every pool that asks for it; rejects when any read failed. */
  async sync(pools: readonly Pool[]): Promise<void> {
    for (const [pool, state] of this.#pools) {
      if (!pools.includes(pool) || pool.config.discovery?.registry === undefined) {
        this.#pools.delete(pool);
        if (state.members.size > 0) this.#set(pool, []);
      }
    }
    const reads = pools
      .filter((p) => p.config.discovery?.registry !== undefined)
      .map(async (p) => this.#update(p, await this.#store.registered(p.name)));
    const results = await Promise.allSettled(reads);
    const failed = results.find((r) => r.status === 'rejected');
    if (failed !== undefined) throw failed.reason;
  }

  #update(pool: Pool, addresses: readonly string[]): void {
    const ttl = pool.config.discovery?.registry?.ttl ?? 0;
    let state = this.#pools.get(pool);
    if (state === undefined) {
      state = { members: new Map(), missingSince: new Map(), signature: '' };
      this.#pools.set(pool, state);
    }
    const now = this.#clock.now();
    const present = new Set<string>();
    for (const a of addresses) {
      const m = registryMember(a);
      if (m === undefined) continue;
      present.add(m.address);
      state.members.set(m.address, m);
      state.missingSince.delete(m.address);
    }
    for (const address of state.members.keys()) {
      if (present.has(address)) continue;
      const since = state.missingSince.get(address) ?? now;
      state.missingSince.set(address, since);
      if (now - since >= ttl) {
        state.members.delete(address);
        state.missingSince.delete(address);
      }
    }
    const list = [...state.members.values()].sort((a, b) => (a.address < b.address ? -1 : 1));
    const signature = list.map((m) => m.address).join(',');
    if (signature === state.signature) return;
    state.signature = signature;
    this.#set(pool, list);
  }

  #set(pool: Pool, members: readonly Member[]): void {
    pool.setMembers('registry', members);
    this.#onChange(
      pool,
      members.map((m) => m.address),
    );
  }
}
