/**
 * SNI route matching for TLS passthrough listeners.
 *
 * Names are compared case-insensitively (ASCII) with one trailing dot ignored on either side.
 * A pattern is an exact name ("api.example.com") or a leading wildcard ("*.example.com") that
 * matches any name with at least one more label in front of the suffix ("a.example.com",
 * "a.b.example.com") but not the bare apex ("example.com"), as in nginx's "*.example.com" and
 * Envoy's server_names. Exact names always win over wildcards; among wildcards that match, the
 * one listed first in the configuration wins (not the longest suffix), so order is the operator's
 * tool. Lookups cost one Map probe for the exact name plus one per label of the name.
 */

/** One configured route. */
export interface SniRoute<T> {
  readonly sni: string;
  readonly target: T;
}

interface Ranked<T> {
  readonly order: number;
  readonly target: T;
}

const LABEL = /^[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?$/;

function normalise(name: string): string {
  const lower = name.toLowerCase();
  return lower.endsWith('.') ? lower.slice(0, -1) : lower;
}

/** Names with an empty label ("a..b", ".a") never match a wildcard. */
function hasEmptyLabel(name: string): boolean {
  return name === '' || name.startsWith('.') || name.includes('..');
}

/** Routes SNI names to targets; immutable once built. */
export class SniRouter<T> {
  private readonly exact = new Map<string, T>();
  private readonly wildcard = new Map<string, Ranked<T>>();

  /**
   * True for a pattern the router can match: DNS-like labels of letters, digits, '-' and '_',
   * optionally preceded by "*." (a single leading wildcard label) and followed by one dot.
   * For config validation; the constructor silently ignores patterns that fail this.
   */
  static isValidPattern(pattern: string): boolean {
    const name = normalise(pattern);
    const body = name.startsWith('*.') ? name.slice(2) : name;
    return (
      body.length > 0 && body.length <= 253 && body.split('.').every((l) => l.length <= 63 && LABEL.test(l))
    );
  }

  /** Routes in configuration order; a later duplicate of a pattern never replaces an earlier one. */
  constructor(routes: readonly SniRoute<T>[]) {
    routes.forEach((route, order) => {
      if (!SniRouter.isValidPattern(route.sni)) return;
      const name = normalise(route.sni);
      if (name.startsWith('*.')) {
        const suffix = name.slice(2);
        if (!this.wildcard.has(suffix)) this.wildcard.set(suffix, { order, target: route.target });
      } else if (!this.exact.has(name)) {
        this.exact.set(name, route.target);
      }
    });
  }

  /** The target for `sni`, or undefined when `sni` is undefined or nothing matches. */
  match(sni: string | undefined): T | undefined {
    if (sni === undefined) return undefined;
    const name = normalise(sni);
    const exact = this.exact.get(name);
    if (exact !== undefined || this.exact.has(name)) return exact;
    if (this.wildcard.size === 0 || hasEmptyLabel(name)) return undefined;
    let best: Ranked<T> | undefined;
    // Each proper suffix after a dot: "a.b.example.com" tries "b.example.com", "example.com", "com".
    for (let dot = name.indexOf('.'); dot >= 0; dot = name.indexOf('.', dot + 1)) {
      const hit = this.wildcard.get(name.slice(dot + 1));
      if (hit !== undefined && (best === undefined || hit.order < best.order)) best = hit;
    }
    return best?.target;
  }
}
