import type { Logger } from '../telemetry/logger.js';
import type { Clock, Timer } from '../util/clock.js';
import type { LimitAnswer, LimitClaim } from './limit-grants.js';
import type { StateStore } from './store.js';

/** A limit whose scope is `cluster`, as its owner (a TCP listener, a backend) shows it to the sync. */
export interface SharedLimit {
  /** What is limited: a listener's sessions, or a backend's (`sluice_limit_cap{limit}`). */
  readonly kind: 'listener' | 'backend';
  /** The listener's name, or the backend's `pool/address`. */
  readonly name: string;
  /** The limit, for every replica together. */
  readonly limit: number;
  /** Connections open under it on this process now. */
  readonly open: number;
  /** Connections admitted under it since start: a counter (its growth over a heartbeat is the demand). */
  readonly admitted: number;
  /** The most connections this process may have open under it; set here, enforced by the owner. */
  cap: number;
}

/** The key of a limit in the store: `listener:<name>` or `backend:<pool>/<address>`. */
export function limitKey(l: Pick<SharedLimit, 'kind' | 'name'>): string {
  return `${l.kind}:${l.name}`;
}

export interface LimitSyncOptions {
  readonly store: StateStore;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly replicaId: string;
  /** How long a claim lives in the store unless made again: 3 heartbeats. */
  readonly ttlMs: number;
  /** The cluster-scoped limits of the running config, read at every round. */
  readonly limits: () => readonly SharedLimit[];
  /** Caps were set, and some may have grown: sessions waiting for a slot may try again. */
  readonly onCaps?: () => void;
}

/**
 * - pending: no claim answered yet; caps are 0 (nothing is admitted under a cluster-scoped limit
 *   before the store has granted it; start-up waits for the first answer).
 * - shared: caps are grants (or lower: holds while a claim is in flight or after a failed one).
 * - fallback: the store has not answered a claim for `ttlMs` (since the last answer, or since
 *   start), so the grants have expired in it: caps are `floor(limit / live replicas)`, live
 *   replicas as last seen (1 if never).
 */
type Mode = 'pending' | 'shared' | 'fallback';

/**
 * How long, in `ttlMs`, a replica back from local shares waits for the others to come back
 * before it grows grants without them (those still away are presumed gone: their grants have
 * long expired in the store).
 */
const AWAIT_TTLS = 3;

/** What this process knows of one limit between rounds. */
interface Known {
  /** Its fair share as last offered. */
  share: number;
  /** `admitted` when it was last claimed. */
  admittedAtClaim: number;
  /** The cap in force. */
  cap: number;
  /** The cap is a grant the store answered (its claim is in the store until it expires). */
  granted: boolean;
}

/**
 * Cluster-wide limits: one step of every state sync round (see limit-grants.ts for the rule and
 * docs/replicas.md#cluster-wide-limits for the bounds). Nothing on the connection path waits for
 * it: owners compare their open count with `cap`, a plain number set here.
 *
 * A round claims every cluster-scoped limit at once. Before sending, each cap drops to its hold,
 * `max(open, min(cap, open + reserve))`: the claim asks for a grant of at least that, so that
 * whatever is admitted while the claim is in flight is covered by the grant that comes back
 * (never the other way round). A failed claim leaves the caps at their holds: they are still
 * covered by the grant in the store, whichever of the old or new one it holds. Grants expire in
 * the store `ttlMs` after they were written, which is no earlier than the claim was sent; at that
 * moment, with no answer since, the caps fall back to local shares.
 *
 * Coming back from local shares, the claims of the next `ttlMs` may not grow (the store grants
 * their holds): another replica may still admit on its local share, which the store does not
 * know of until that replica claims again. Nor may they grow before the store counts as many
 * live replicas as there were at the fallback (or AWAIT_TTLS × `ttlMs` have passed): replicas
 * come back one by one (each reconnects on its own backoff), and one still away holds sessions
 * the store cannot see. The store does the same for a replica whose claims it lost (see
 * LimitClaim.renew).
 */
export class LimitSync {
  readonly #o: LimitSyncOptions;
  readonly #logger: Logger;
  #mode: Mode = 'pending';
  readonly #known = new Map<string, Known>();
  /** Live replicas, this one included, as the store last said (the fallback divides by it). */
  #replicas = 1;
  #expiry: Timer | undefined;
  /** Clock time until which the caps in force are covered by the store (or the first wait lasts). */
  #validUntil = Infinity;
  /** Until then, grants stay at their holds (after falling back: see sync). */
  #settleUntil = -Infinity;
  /**
   * After falling back, grants also stay at their holds until the store sees as many live
   * replicas as before (the ones not back yet still hold sessions on their local shares, which
   * the store does not know of), or until `#awaitUntil` (a replica that never comes back is gone).
   */
  #awaitReplicas = 0;
  #awaitUntil = -Infinity;
  /** Live replicas when this process last fell back. */
  #replicasAtFallback = 1;
  /** The last answer said the store had lost this replica's claims (it settles there). */
  #lost = false;
  /** Times this process fell back (an answer to a claim sent before the last one is stale). */
  #fallbacks = 0;
  /** The store holds claims of this replica (a round with no limits left must withdraw them). */
  #claimed = false;
  #stopped = false;

  constructor(options: LimitSyncOptions) {
    this.#o = options;
    this.#logger = options.logger.child({ component: 'limits' });
  }

  /** True while the caps are local shares because the store is out (`sluice_limit_fallback`). */
  get fallback(): boolean {
    return this.#mode === 'fallback' && this.#o.limits().length > 0;
  }

  /** Live replicas as last seen (1 before any answer). */
  get replicas(): number {
    return this.#replicas;
  }

  /** Every cluster-scoped limit with its cap now (`sluice_limit_cap`). */
  *caps(): Iterable<{ kind: string; name: string; cap: number }> {
    for (const l of this.#o.limits()) yield { kind: l.kind, name: l.name, cap: l.cap };
  }

  /**
   * Starts the clock of the first grant: caps stay 0 until the store answers a claim, and fall
   * back to local shares if it has not within `ttlMs`.
   */
  start(): void {
    this.#arm(this.#o.clock.now() + this.#o.ttlMs);
  }

  /** One round: claims every limit and applies the grants. Rejects when the store did not answer. */
  async sync(): Promise<void> {
    if (this.#stopped) return;
    const limits = this.#o.limits();
    if (limits.length === 0 && !this.#claimed) return;
    const sentAt = this.#o.clock.now();
    if (this.#mode !== 'fallback' && sentAt >= this.#validUntil && limits.length > 0) this.#fallBack();
    if (this.#mode === 'fallback') this.#applyFallback(limits);
    const renewing = this.#mode === 'shared' && sentAt < this.#validUntil;
    if (this.#awaitReplicas > 0 && (this.#replicas >= this.#awaitReplicas || sentAt >= this.#awaitUntil))
      this.#awaitReplicas = 0;
    const grow = this.#mode !== 'fallback' && sentAt >= this.#settleUntil && this.#awaitReplicas === 0;
    const claims = limits.map((l) => this.#claim(l, renewing, grow));
    const round = { replicasHint: this.#replicas, grow, ttlMs: this.#o.ttlMs };
    const fallbacks = this.#fallbacks;
    let answer: LimitAnswer;
    try {
      answer = await this.#o.store.claimLimits(this.#o.replicaId, claims, round);
    } catch (err) {
      // Falling back: the holds taken for the claim give way to the local shares again.
      if (this.#mode === 'fallback') this.#applyFallback(this.#o.limits());
      throw err;
    }
    if (this.#stopped) return;
    this.#claimed = claims.length > 0;
    // Fell back while the claim was in flight: the caps have been local shares since, which the
    // claim did not cover. The next round claims them, as every round after falling back does.
    if (this.#fallbacks !== fallbacks) return;
    this.#apply(limits, claims, answer);
    this.#arm(sentAt + this.#o.ttlMs);
    const now = this.#o.clock.now();
    if (this.#mode === 'fallback') {
      // The others may still run on local shares the store does not know of: hold for a TTL.
      this.#settleUntil = now + this.#o.ttlMs;
      this.#awaitReplicas = this.#replicasAtFallback;
      this.#awaitUntil = now + AWAIT_TTLS * this.#o.ttlMs;
      this.#logger.info({ replicas: this.#replicas }, 'cluster limits shared again');
    }
    if (answer.lost && !this.#lost)
      this.#logger.warn(
        { replicas: this.#replicas },
        'cluster limit claims were missing from the state store (it lost its data): grants held for 3 heartbeats',
      );
    this.#lost = answer.lost;
    this.#mode = 'shared';
    this.#o.onCaps?.();
  }

  /** Stops the expiry timer; the claims go with the replica's withdraw. */
  stop(): void {
    this.#stopped = true;
    this.#expiry?.cancel();
    this.#expiry = undefined;
  }

  /** Grants (or the wait for the first) hold until `until`; then the caps fall back. */
  #arm(until: number): void {
    this.#expiry?.cancel();
    this.#validUntil = until;
    this.#expiry = this.#o.clock.setTimer(until - this.#o.clock.now(), () => {
      this.#expiry = undefined;
      // With no cluster-scoped limit there is nothing to fall back; a later round will, if need be.
      if (this.#o.limits().length > 0) this.#fallBack();
    });
  }

  /**
   * The claim for `l`, lowering its cap to the hold the claim asks to be covered. `renewing`: the
   * grants of the last answer are still alive in the store; `grow`: the round may grow grants.
   */
  #claim(l: SharedLimit, renewing: boolean, grow: boolean): LimitClaim {
    const key = limitKey(l);
    let k = this.#known.get(key);
    if (k === undefined) {
      k = {
        share: 0,
        admittedAtClaim: l.admitted,
        cap: this.#mode === 'fallback' ? this.#localShare(l) : 0,
        granted: false,
      };
      this.#known.set(key, k);
    }
    // While the claim is in flight, admit at most the fair share, and no more than in the whole
    // heartbeat before: a replica with no demand holds nothing beyond its open connections, so
    // the store can move its share to where the sessions arrive in this very round. While
    // settling the grant is the hold: it keeps the share, so that the caps do not collapse.
    const demand = l.admitted - k.admittedAtClaim;
    const reserve = Math.max(0, grow ? Math.min(k.share, demand) : k.share);
    const hold = Math.max(l.open, Math.min(k.cap, l.open + reserve));
    k.cap = Math.min(k.cap, hold);
    k.admittedAtClaim = l.admitted;
    l.cap = k.cap;
    return { key, limit: l.limit, open: l.open, hold, renew: renewing && k.granted };
  }

  #apply(limits: readonly SharedLimit[], claims: readonly LimitClaim[], answer: LimitAnswer): void {
    this.#replicas = Math.max(1, answer.replicas);
    const claimed = new Set<string>();
    claims.forEach((c, i) => {
      const g = answer.grants[i];
      const l = limits[i];
      if (g === undefined || l === undefined) return;
      claimed.add(c.key);
      const k = this.#known.get(c.key);
      this.#known.set(c.key, {
        share: g.share,
        admittedAtClaim: k?.admittedAtClaim ?? l.admitted,
        cap: g.grant,
        granted: true,
      });
      l.cap = g.grant;
    });
    for (const key of this.#known.keys()) if (!claimed.has(key)) this.#known.delete(key);
  }

  #localShare(l: SharedLimit): number {
    return Math.floor(l.limit / Math.max(1, this.#replicas));
  }

  #applyFallback(limits: readonly SharedLimit[]): void {
    for (const l of limits) {
      const key = limitKey(l);
      const cap = this.#localShare(l);
      const k = this.#known.get(key);
      if (k === undefined)
        this.#known.set(key, { share: 0, admittedAtClaim: l.admitted, cap, granted: false });
      else k.cap = cap;
      l.cap = cap;
    }
  }

  #fallBack(): void {
    if (this.#stopped || this.#mode === 'fallback') return;
    this.#mode = 'fallback';
    this.#replicasAtFallback = this.#replicas;
    this.#fallbacks++;
    const limits = this.#o.limits();
    this.#applyFallback(limits);
    this.#o.onCaps?.();
    this.#logger.warn(
      { replicas: this.#replicas, limits: limits.length, no_answer_ms: this.#o.ttlMs },
      'cluster limits on local shares (limit / live replicas) until the state store answers',
    );
  }
}
