/**
 * Shared state between replicas. The data path never awaits a store call: it decides on local
 * state, and a background sync (see state/sync.ts) converges that local state with the store.
 * Every method may reject when the store is unreachable; callers treat that as "no news".
 *
 * Keys: a backend is named `pool/address` (see backendKey), e.g. `ingress/10.0.1.5:8443`.
 */
import type { AdminState } from '../upstream/backend.js';
import type { LimitAnswer, LimitClaim, LimitRound } from './limit-grants.js';

export type { LimitAnswer, LimitClaim, LimitGrant, LimitRound } from './limit-grants.js';

/** What replicas share about one backend, beyond connection counts. */
export interface BackendFact {
  /** Verdict of the elected active prober: true up, false down. */
  readonly healthy?: boolean;
  /** Admin state set through any replica's API. */
  readonly admin?: AdminState;
  /** Passive ejection end, epoch milliseconds. */
  readonly ejectedUntil?: number;
}

export interface StateStore {
  readonly kind: 'memory' | 'redis';
  /** Reachable now. The memory store is always up. */
  isUp(): boolean;
  /** Called on every change of reachability. */
  onStatus(listener: (up: boolean) => void): void;
  start(): Promise<void>;
  close(): Promise<void>;

  /**
   * Replaces this replica's open-session counts per backend key. They vanish after `ttlMs` unless
   * published again, so a replica that dies stops counting.
   */
  publishCounts(replicaId: string, counts: ReadonlyMap<string, number>, ttlMs: number): Promise<void>;
  /**
   * Sum of every live replica's published counts per backend key of `pools`, leaving out
   * `exceptReplica`. (Naming the pools lets a store that spreads pools over Redis Cluster slots
   * read only the slots this replica balances.)
   */
  readCounts(exceptReplica: string, pools: readonly string[]): Promise<Map<string, number>>;
  /** Removes this replica's counts and limit claims at once (clean shutdown). */
  withdraw(replicaId: string): Promise<void>;

  /**
   * Cluster-wide limits (see limit-grants.ts): replaces this replica's claims with `claims` (a
   * key claimed before and not now is dropped) and answers each with its grant, computed
   * atomically per key against the other live replicas' claims (grantOf). The claims live
   * `round.ttlMs` unless made again, and keep this replica live as its published counts do.
   * Rejects when the store did not answer; then no grant is known (the call may still have been
   * applied).
   */
  claimLimits(replicaId: string, claims: readonly LimitClaim[], round: LimitRound): Promise<LimitAnswer>;

  /**
   * Takes or renews a lease on each of `names`, in few round trips: in order, true where `owner`
   * holds the name for the next `ttlMs` (it was free, expired, or already `owner`'s). Rejects when
   * the store did not answer; then nothing is known.
   */
  leaseMany(names: readonly string[], owner: string, ttlMs: number): Promise<boolean[]>;
  /** Gives a lease up if `owner` still holds it. */
  release(name: string, owner: string): Promise<void>;

  /** Merges `fact` into the backend's shared facts; fields set to undefined are left as they are. */
  putFact(key: string, fact: BackendFact): Promise<void>;
  /** Removes one field of a backend's facts (e.g. admin back to its default). */
  clearFact(key: string, field: keyof BackendFact): Promise<void>;
  /** The shared facts of every backend of `pools`. */
  readFacts(pools: readonly string[]): Promise<Map<string, BackendFact>>;

  /** Registry discovery: `address` belongs to `pool` for `ttlMs` unless registered again. */
  register(pool: string, address: string, ttlMs: number): Promise<void>;
  deregister(pool: string, address: string): Promise<void>;
  registered(pool: string): Promise<string[]>;
}

export function backendKey(pool: string, address: string): string {
  return `${pool}/${address}`;
}

/**
 * The pool of a name that carries a backend key, bare (`ingress/10.0.1.5:8443`) or after a kind
 * (`probe:ingress/…`, `backend:ingress/…`); undefined for any other name (`listener:https`). Pool
 * names hold neither `/` nor `:` (config/schema.ts), so this cannot misread an address.
 */
export function poolOf(name: string): string | undefined {
  const slash = name.indexOf('/');
  if (slash < 0) return undefined;
  const head = name.slice(0, slash);
  return head.slice(head.indexOf(':') + 1) || undefined;
}
