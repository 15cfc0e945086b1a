import type { HashKey, PickContext, Picker, PickerOptions, Target } from './picker.js';
import { anyAllowed, hashContext, hashPoint, sortedByAddress } from './hash.js';

export const DEFAULT_POINTS_PER_WEIGHT = 160;
/** Most points on a ring; weights are scaled down to fit (Envoy caps its ring at 8M). */
export const MAX_RING_POINTS = 1 << 20;
/** Ring entries pack hash·2^21 + backend index into one float64 (exact below 2^53). */
const INDEX_BITS = 21;
const INDEX_SCALE = 2 ** INDEX_BITS;

/** A built ring: point hashes ascending, and the backend index owning each point. */
export interface Ring {
  readonly points: Uint32Array;
  readonly owners: Uint32Array;
}

/**
 * Places max(1, round(weight · pointsPerWeight · scale)) points per backend on a 32-bit ring, the
 * i-th at murmur3(`address#i`) (ketama's scheme with a better hash); scale < 1 only when the ring
 * would exceed MAX_RING_POINTS. Equal hashes are ordered by backend index, so with backends in
 * canonical order (sortedByAddress) every process builds the same ring.
 */
export function buildRing(
  addresses: readonly string[],
  weights: readonly number[],
  pointsPerWeight: number,
): Ring {
  const n = addresses.length;
  if (n >= INDEX_SCALE) throw new RangeError(`ring-hash supports at most ${INDEX_SCALE - 1} backends`);
  const totalWeight = weights.reduce((a, w) => a + w, 0);
  const scale = Math.min(1, MAX_RING_POINTS / Math.max(1, totalWeight * pointsPerWeight));
  const counts = weights.map((w) => Math.max(1, Math.round(w * pointsPerWeight * scale)));
  const packed = new Float64Array(counts.reduce((a, c) => a + c, 0));
  let k = 0;
  for (let j = 0; j < n; j++) {
    const address = addresses[j] ?? '';
    for (let i = 0; i < (counts[j] ?? 0); i++) packed[k++] = hashPoint(address, i) * INDEX_SCALE + j;
  }
  packed.sort();
  const points = new Uint32Array(packed.length);
  const owners = new Uint32Array(packed.length);
  for (let p = 0; p < packed.length; p++) {
    const v = packed[p] ?? 0;
    points[p] = Math.floor(v / INDEX_SCALE);
    owners[p] = v % INDEX_SCALE;
  }
  return { points, owners };
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
 *   Build O(P log P) time, 8·P bytes.
 * - Use when: clients should stick to a backend and hot spots must be capped (bounded load), or
 *   when weights are uneven and small pools must keep their exact ketama-like behaviour; Maglev is
 *   cheaper per pick and spreads more evenly otherwise.
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
