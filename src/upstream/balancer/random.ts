import type { Random } from '../../util/clock.js';
import type { PickContext, Picker, PickerOptions, Target } from './picker.js';

/** Rejection draws tried before an excluded-aware linear draw; retries exclude few backends. */
const MAX_REJECTIONS = 8;

/**
 * Weighted sampling by prefix sums, built once in O(N): a draw is a binary search, O(log N), with
 * no allocation. Chosen over an alias table because it can also draw "any index but one" exactly
 * (power-of-two's second candidate) without rejection loops.
 */
export class WeightedSampler {
  /** cumulative[i] = weight[0] + … + weight[i]. */
  readonly #cumulative: Float64Array;
  readonly total: number;

  constructor(weights: readonly number[]) {
    this.#cumulative = new Float64Array(weights.length);
    let sum = 0;
    for (let i = 0; i < weights.length; i++) {
      sum += weights[i] ?? 0;
      this.#cumulative[i] = sum;
    }
    this.total = sum;
  }

  get size(): number {
    return this.#cumulative.length;
  }

  weight(i: number): number {
    return (this.#cumulative[i] ?? 0) - (this.#cumulative[i - 1] ?? 0);
  }

  /** The index whose cumulative interval holds `u` (0 ≤ u < total): the first i with cumulative[i] > u. */
  #indexAt(u: number): number {
    let lo = 0;
    let hi = this.#cumulative.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((this.#cumulative[mid] ?? 0) > u) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }

  /** An index drawn with probability weight/total; -1 when there are none. */
  sample(random: Random): number {
    if (this.#cumulative.length === 0) return -1;
    return this.#indexAt(random() * this.total);
  }

  /**
   * An index other than `skip`, drawn in proportion to weight among the others: the draw covers
   * total − weight(skip) and jumps over skip's interval. -1 when skip is the only index.
   */
  sampleExcept(random: Random, skip: number): number {
    const n = this.#cumulative.length;
    if (n < 2) return -1;
    const before = this.#cumulative[skip - 1] ?? 0;
    const w = this.weight(skip);
    let u = random() * (this.total - w);
    if (u >= before) u += w;
    const i = this.#indexAt(u);
    // Rounding may land on skip's boundary; a neighbour is then as good as the draw.
    if (i !== skip) return i;
    return skip + 1 < n ? skip + 1 : skip - 1;
  }
}

/**
 * Draws an index not in `exclude` and not `skip` (-1: none to skip), weighted. Rejection first
 * (exclude is usually one or two failed backends); then one exact linear draw over the allowed
 * targets, O(N), so a large exclude set cannot loop. -1 when nothing is allowed.
 */
export function drawAllowed<T extends Target>(
  sampler: WeightedSampler,
  targets: readonly T[],
  random: Random,
  exclude: ReadonlySet<T> | undefined,
  skip: number,
): number {
  for (let attempt = 0; attempt < MAX_REJECTIONS; attempt++) {
    const i = skip < 0 ? sampler.sample(random) : sampler.sampleExcept(random, skip);
    if (i < 0) return -1;
    const t = targets[i];
    if (t !== undefined && (exclude === undefined || !exclude.has(t))) return i;
  }
  return linearDraw(targets, random, exclude, skip);
}

function allowed<T extends Target>(
  t: T | undefined,
  i: number,
  exclude: ReadonlySet<T> | undefined,
  skip: number,
): t is T {
  return t !== undefined && i !== skip && (exclude === undefined || !exclude.has(t));
}

function linearDraw<T extends Target>(
  targets: readonly T[],
  random: Random,
  exclude: ReadonlySet<T> | undefined,
  skip: number,
): number {
  let total = 0;
  for (let i = 0; i < targets.length; i++) {
    const t = targets[i];
    if (allowed(t, i, exclude, skip)) total += t.weight;
  }
  if (total <= 0) return -1;
  let u = random() * total;
  let last = -1;
  for (let i = 0; i < targets.length; i++) {
    const t = targets[i];
    if (!allowed(t, i, exclude, skip)) continue;
    last = i;
    u -= t.weight;
    if (u < 0) return i;
  }
  return last;
}

/**
 * Weighted random: each pick chooses a target with probability weight / total weight,
 * independently of load and of earlier picks.
 *
 * - Guarantees: long-run shares proportional to weight; no state shared between picks, so
 *   replicas need no coordination.
 * - Cost: build O(N) (prefix sums); pick O(log N) (binary search), no allocation. With `exclude`,
 *   a few rejected draws, then at worst one O(N) pass.
 * - Use when: many replicas balance independently and backends are alike; it spreads as well as
 *   round-robin over time without the synchronized bursts of replicas stepping in lockstep, but it
 *   ignores load (prefer power-of-two when session lengths vary).
 */
export class RandomPicker<T extends Target> implements Picker<T> {
  readonly #targets: readonly T[];
  readonly #sampler: WeightedSampler;
  readonly #random: Random;

  constructor(targets: readonly T[], opts: PickerOptions) {
    this.#targets = targets;
    this.#sampler = new WeightedSampler(targets.map((t) => t.weight));
    this.#random = opts.random;
  }

  pick(_ctx: PickContext, exclude: ReadonlySet<T> | undefined): T | undefined {
    const i = drawAllowed(this.#sampler, this.#targets, this.#random, exclude, -1);
    return i < 0 ? undefined : this.#targets[i];
  }
}
