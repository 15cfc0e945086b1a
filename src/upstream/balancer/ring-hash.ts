import type { HashKey, PickContext, Picker, PickerOptions, Target } from './picker.js';
import { anyAllowed, hashContext, hashPoints, sortedByAddress } from './hash.js';

export const DEFAULT_POINTS_PER_WEIGHT = 160;
/** Most points on a ring; weights are scaled down to fit (Envoy caps its ring at 8M). */
export const MAX_RING_POINTS = 1 << 20;
/** A built ring: point hashes ascending, and the backend index owning each point. */
export interface Ring {
  readonly points: Uint32Array;
  readonly owners: Uint32Array;
}

/** Points per backend: weight × pointsPerWeight, scaled down to fit MAX_RING_POINTS, at least 1. */
function pointCounts(weights: readonly number[], pointsPerWeight: number): number[] {
  const totalWeight = weights.reduce((a, w) => a + w, 0);
  const scale = Math.min(1, MAX_RING_POINTS / Math.max(1, totalWeight * pointsPerWeight));
  return weights.map((w) => Math.max(1, Math.round(w * pointsPerWeight * scale)));
}

/**
 * Places max(1, round(weight · pointsPerWeight · scale)) points per backend on a 32-bit ring, the
 * i-th at murmur3(`address#i`) (ketama's scheme with a better hash); scale < 1 only when the ring
 * would exceed MAX_RING_POINTS. Equal hashes keep backend order, so with backends in canonical
 * order (sortedByAddress) every process builds the same ring.
 */
export function buildRing(
  addresses: readonly string[],
  weights: readonly number[],
  pointsPerWeight: number,
): Ring {
  const counts = pointCounts(weights, pointsPerWeight);
  const total = counts.reduce((a, c) => a + c, 0);
  const hashes = new Uint32Array(total);
  const owners = new Uint32Array(total);
  let at = 0;
  for (let j = 0; j < addresses.length; j++) {
    const count = counts[j] ?? 0;
    hashPoints(addresses[j] ?? '', count, hashes, at);
    owners.fill(j, at, at + count);
    at += count;
  }
  return sortByHash(hashes, owners);
}

/**
 * Stable LSD radix sort on the 32-bit hashes in two 16-bit passes, carrying owners along: O(P),
 * several times faster than a comparison sort of a million points, and stable, so equal hashes
 * stay in backend order. Sorts into fresh arrays and back; the inputs end up sorted.
 */
function sortByHash(hashes: Uint32Array, owners: Uint32Array): Ring {
  let keys: Uint32Array = hashes;
  let values: Uint32Array = owners;
  let toKeys: Uint32Array = new Uint32Array(hashes.length);
  let toValues: Uint32Array = new Uint32Array(hashes.length);
  const starts = new Uint32Array(1 << 16);
  for (const shift of [0, 16]) {
    starts.fill(0);
    for (let i = 0; i < keys.length; i++) {
      const digit = ((keys[i] ?? 0) >>> shift) & 0xffff;
      starts[digit] = (starts[digit] ?? 0) + 1;
    }
    let sum = 0;
    for (let d = 0; d < starts.length; d++) {
      const c = starts[d] ?? 0;
      starts[d] = sum;
      sum += c;
    }
    for (let i = 0; i < keys.length; i++) {
      const key = keys[i] ?? 0;
      const digit = (key >>> shift) & 0xffff;
      const to = starts[digit] ?? 0;
      starts[digit] = to + 1;
      toKeys[to] = key;
      toValues[to] = values[i] ?? 0;
    }
    [keys, toKeys] = [toKeys, keys];
    [values, toValues] = [toValues, values];
  }
  return { points: keys, owners: values };
}

/** The first point at or after `hash`, wrapping to 0 past the last. */
function successor(points: Uint32Array, hash: number): number {
  let lo = 0;
  let hi = points.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if ((points[mid] ?? 0) < hash) lo = mid + 1;
    else hi = mid;
  }
  return lo === points.length ? 0 : lo;
}

/**
 * Ring hash (ketama consistent hashing), optionally with bounded loads.
 *
 * - Guarantees: a key goes to the owner of the first point clockwise from its hash; every replica
 *   that sees the same backends (in any order) builds the same ring, and removing one of N
 *   backends moves only the keys it held (about 1/N). Shares follow weights to within a few
 *   per cent at 160 points per weight unit.
 * - Bounded load (`boundedLoadFactor` c > 0; Mirrokni, Thorup and Zadimoghaddam, "Consistent
 *   Hashing with Bounded Loads"): walking clockwise, a backend is skipped while load + 1 would
 *   exceed ceil(c · (total load + 1) / N), so none carries more than c times the mean. Keys then
 *   move only off hot backends, but placement depends on load, so replicas agree only as far as
 *   their load views do. Some backend always fits (the least loaded), so c ≥ 1 never refuses.
 * - `exclude` (connect retries): continues clockwise to the next allowed backend, the one that
 *   would take the key if the failed one were removed: the same on every replica.
 * - Cost: pick O(log P) binary search over P points (P ≈ 160 · total weight, at most 2^20), no
 *   allocation; with bounded load add O(N) to sum the loads plus the walk past full backends.
 *   Build O(P) time (hashing, then a radix sort), 8·P bytes: about 50 ms for 400k points.
 * - Use when: clients should stick to a backend and hot spots must be capped (bounded load), or
 *   placement must match ketama-style rings elsewhere; otherwise Maglev is cheaper to build, O(1)
 *   per pick and spreads more evenly.
 */
export class RingHashPicker<T extends Target> implements Picker<T> {
  readonly #targets: readonly T[];
  readonly #ring: Ring;
  readonly #hashKey: HashKey;
  readonly #factor: number;
  /** Per-backend "seen in this walk" marks, stamped with #walk so a walk never clears or allocates. */
  readonly #seen: Uint32Array;
  #walk = 0;

  constructor(targets: readonly T[], opts: PickerOptions) {
    this.#targets = sortedByAddress(targets);
    this.#hashKey = opts.hashKey;
    this.#factor = opts.boundedLoadFactor ?? 0;
    this.#ring = buildRing(
      this.#targets.map((t) => t.address),
      this.#targets.map((t) => t.weight),
      opts.ringPointsPerWeight ?? DEFAULT_POINTS_PER_WEIGHT,
    );
    this.#seen = new Uint32Array(this.#targets.length);
  }

  pick(ctx: PickContext, exclude: ReadonlySet<T> | undefined): T | undefined {
    const { points, owners } = this.#ring;
    if (points.length === 0) return undefined;
    const start = successor(points, hashContext(ctx, this.#hashKey));
    const hasExclude = exclude !== undefined && exclude.size > 0;
    if (!hasExclude && this.#factor <= 0) return this.#targets[owners[start] ?? 0];
    if (hasExclude && !anyAllowed(this.#targets, exclude)) return undefined;
    return this.#clockwise(start, exclude, this.#capacity());
  }

  /** The most sessions a backend may hold after this one; Infinity when load is unbounded. */
  #capacity(): number {
    if (this.#factor <= 0) return Infinity;
    let total = 0;
    for (let i = 0; i < this.#targets.length; i++) total += this.#targets[i]?.load ?? 0;
    return Math.ceil((this.#factor * (total + 1)) / this.#targets.length);
  }

  /**
   * Clockwise from `start`, the first allowed backend under `capacity`; if every allowed one is
   * full (possible only with exclusions or c < 1), the first allowed one met, as unbounded would.
   */
  #clockwise(start: number, exclude: ReadonlySet<T> | undefined, capacity: number): T | undefined {
    const { owners } = this.#ring;
    const n = this.#targets.length;
    if (++this.#walk === 0xffffffff) {
      this.#seen.fill(0);
      this.#walk = 1;
    }
    let fallback: T | undefined;
    let seen = 0;
    for (
      let step = 0, p = start;
      step < owners.length && seen < n;
      step++, p = p + 1 === owners.length ? 0 : p + 1
    ) {
      const j = owners[p] ?? 0;
      if (this.#seen[j] === this.#walk) continue;
      this.#seen[j] = this.#walk;
      seen++;
      const t = this.#targets[j];
      if (t === undefined || (exclude !== undefined && exclude.has(t))) continue;
      if (t.load + 1 <= capacity) return t;
      fallback ??= t;
    }
    return fallback;
  }
}
