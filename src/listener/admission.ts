import type { ListenerConfig } from '../config/schema.js';
import { CidrSet } from '../util/cidr.js';
import { SourceLimits } from './source-limits.js';

/** What `admitSource` decided: counted (release it later), let through uncounted (limits off), or why not. */
export type SourceVerdict = 'counted' | 'uncounted' | 'per_source_limit' | 'rate_limit';

/**
 * A listener's ACL and per-source limits on the client address, one path for TCP and UDP, built
 * from the config in one place (start and reload alike).
 */
export class Admission {
  #allow: CidrSet;
  #deny: CidrSet;
  #everyone: boolean;
  #limits: SourceLimits;

  constructor(cfg: ListenerConfig) {
    this.#allow = CidrSet.parse(cfg.access.allow);
    this.#deny = CidrSet.parse(cfg.access.deny);
    this.#everyone = this.#deny.size === 0 && this.#allow.coversAll;
    this.#limits = new SourceLimits(cfg.limits.per_source_connections, cfg.limits.per_source_rate);
  }

  /** The ACL on the client address (the PROXY header's, once trusted). */
  allowed(ip: string): boolean {
    // The default lists (allow everything, deny nothing) cost nothing per connection.
    return this.#everyone || (this.#allow.has(ip) && !this.#deny.has(ip));
  }

  /** Per-source limits on a new connection from `ip` at `now` (ms); a counted one must be released. */
  admitSource(ip: string, now: number): SourceVerdict {
    if (!this.#limits.enabled) return 'uncounted';
    const v = this.#limits.admit(ip, now);
    return v === 'ok' ? 'counted' : v;
  }

  /** A connection `admitSource` counted has ended. */
  release(ip: string): void {
    this.#limits.release(ip);
  }
}
