/**
 * Per-client-IP limits: open connections and new connections per second (a token bucket per IP).
 * The bucket table is bounded: when it is full, buckets idle for a full refill are evicted first,
 * and if none are, the new IP is refused (a flood of distinct sources cannot grow memory).
 */
export class SourceLimits {
  readonly #maxOpen: number;
  readonly #rate: number;
  readonly #maxTracked: number;
  readonly #open = new Map<string, number>();
  readonly #buckets = new Map<string, { tokens: number; at: number }>();

  constructor(maxOpen: number, ratePerSecond: number, maxTracked = 100_000) {
    this.#maxOpen = maxOpen;
    this.#rate = ratePerSecond;
    this.#maxTracked = maxTracked;
  }

  get enabled(): boolean {
    return this.#maxOpen > 0 || this.#rate > 0;
  }

  /** Decides on a new connection from `ip` at `now` (ms). Counts it as open when admitted. */
  admit(ip: string, now: number): 'ok' | 'per_source_limit' | 'rate_limit' {
    if (this.#maxOpen > 0 && (this.#open.get(ip) ?? 0) >= this.#maxOpen) return 'per_source_limit';
    if (this.#rate > 0 && !this.#take(ip, now)) return 'rate_limit';
    if (this.#maxOpen > 0) this.#open.set(ip, (this.#open.get(ip) ?? 0) + 1);
    return 'ok';
  }

  /** A connection admitted by `admit` has ended. */
  release(ip: string): void {
    if (this.#maxOpen <= 0) return;
    const n = (this.#open.get(ip) ?? 0) - 1;
    if (n > 0) this.#open.set(ip, n);
    else this.#open.delete(ip);
  }

  get trackedSources(): number {
    return this.#buckets.size;
  }

  #take(ip: string, now: number): boolean {
    const burst = this.#rate;
    let b = this.#buckets.get(ip);
    if (b === undefined) {
      if (this.#buckets.size >= this.#maxTracked && !this.#evict(now)) return false;
      b = { tokens: burst, at: now };
      this.#buckets.set(ip, b);
    } else {
      b.tokens = Math.min(burst, b.tokens + ((now - b.at) * this.#rate) / 1000);
      b.at = now;
      // Re-insert so the map stays ordered by last use: eviction only looks at the front.
      this.#buckets.delete(ip);
      this.#buckets.set(ip, b);
    }
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  /**
   * Drops least recently used buckets that have refilled completely (they hold no information).
   * The map is in last-use order, so this stops at the first bucket still in use: O(1) amortised.
   */
  #evict(now: number): boolean {
    const full = 1000; // a bucket refills from empty within one second
    let freed = false;
    for (const [ip, b] of this.#buckets) {
      if (now - b.at < full) break;
      this.#buckets.delete(ip);
      freed = true;
    }
    return freed;
  }
}
