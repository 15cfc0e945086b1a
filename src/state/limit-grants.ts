/**
 * Cluster-wide limits: how one connection limit is split between the replicas that share it.
 *
 * Each replica holds a *grant* per limit: the most connections it may have open under it. A
 * replica takes its grant from the store in one atomic step per limit (a Lua script in Redis, one
 * synchronous call in the memory store), which sees the grants of every other live replica. Two
 * rules make the sum of open connections provably stay within the limit while the store keeps
 * its data and every replica reaches it:
 *
 * 1. the store never grants more than the limit minus what the other live replicas hold
 *    (`limit − othersGranted`), so the live grants never add up to more than the limit;
 * 2. a grant is never below `hold`, the most the replica may have admitted while the call was in
 *    flight, so a replica never holds more connections than the store has granted it.
 *
 * Within that room each replica is offered its fair share of the free connections: the free
 * part split evenly over the live replicas, so that replicas that reach the store at about the
 * same time do not take the same free connections twice (see docs/replicas.md for the bounds).
 */

/** One limit as a replica claims it at a heartbeat. */
export interface LimitClaim {
  /** The limit's key in the store: `listener:<name>` or `backend:<pool>/<address>`. */
  readonly key: string;
  /** The limit, for every replica together. */
  readonly limit: number;
  /** Connections open under it on this replica now. */
  readonly open: number;
  /**
   * The most connections this replica may have open until the answer arrives (it stops admitting
   * above it meanwhile): the new grant is never below it.
   */
  readonly hold: number;
  /**
   * This replica's claim on the key should be in the store (it was granted within the TTL). When
   * the store has none, it lost its data (restarted empty, or failed over to a replica that had
   * not seen the claim): the replica then settles for a TTL (every grant of its is its hold),
   * since the others may hold grants the store no longer knows of until they claim again.
   */
  readonly renew: boolean;
}

/** What holds for every claim of one round. */
export interface LimitRound {
  /** Live replicas this replica saw last: shares are split over at least that many. */
  readonly replicasHint: number;
  /**
   * False while the replica settles after falling back or after a loss: every grant is then its
   * hold, so that nobody takes connections another replica may hold without the store knowing.
   */
  readonly grow: boolean;
  /** How long the claims live unless made again. */
  readonly ttlMs: number;
}

/** The store's answer for one claim. */
export interface LimitGrant {
  /** Connections this replica may have open under the limit until it claims again. */
  readonly grant: number;
  /** This replica's fair share of the free connections, as the store saw them (see fairShare). */
  readonly share: number;
}

/** The store's answer to one round of claims. */
export interface LimitAnswer {
  /**
   * Live replicas, this one included: those whose counts or claims have not expired (every replica
   * publishes its counts every heartbeat, whether or not it claims a limit).
   */
  readonly replicas: number;
  /** The replica settles: a claim marked `renew` was missing within the last TTL (the store lost its data). */
  readonly lost: boolean;
  /** One per claim, in the order of the claims. */
  readonly grants: LimitGrant[];
}

/**
 * This replica's fair share of the free connections of a limit: `free = limit − open −
 * othersOpen` split over `n` replicas in whole connections, the remainder going one each to the
 * first `free mod n` replicas in the order of their ids (`rank`), so that the shares of `n`
 * replicas that see the same counts add up to `free` exactly. 0 when nothing is free.
 */
export function fairShare(limit: number, open: number, othersOpen: number, n: number, rank: number): number {
  const free = limit - open - othersOpen;
  if (free <= 0) return 0;
  const replicas = Math.max(1, n);
  return Math.floor(free / replicas) + (rank < free % replicas ? 1 : 0);
}

/**
 * The grant for `claim`, given what the other live replicas hold under the same limit: its open
 * connections plus its fair share `share`, within what the others leave (`limit −
 * othersGranted`), and never below `hold`; exactly `hold` when it may not grow (the round does
 * not let it, or the replica's own claim was lost). The Redis script CLAIM_LIMITS computes the
 * same.
 */
export function grantOf(claim: LimitClaim, share: number, othersGranted: number, grow: boolean): number {
  if (!grow) return claim.hold;
  return Math.max(claim.hold, Math.min(claim.limit - othersGranted, claim.open + share));
}
