import type { Random } from '../../util/clock.js';
import type { PickContext, Picker, PickerOptions, Target } from './picker.js';
import { WeightedSampler, drawAllowed } from './random.js';

/**
 * True when `a` is less loaded than `b` relative to weight, counting the session about to be
 * placed: (load + 1) / weight, compared by cross-multiplication (no division). The "+ 1" (as in
 * HAProxy's leastconn and Envoy's least-request) lets a heavier backend win among idle ones
 * instead of tying at 0.
 */
export function lessLoaded(a: Target, b: Target): boolean {
  return (a.load + 1) * b.weight < (b.load + 1) * a.weight;
}

/**
 * Power of two choices: two distinct candidates drawn at random in proportion to weight; the
 * less loaded of the two, by (load + 1) / weight, wins (the first drawn on a tie).
 *
 * - Guarantees: never the most loaded of two or more allowed targets; load stays close to
 *   least-connections' without scanning every backend, and replicas acting on slightly stale
 *   `load` do not all rush to the same idle backend (Mitzenmacher's result).
 * - Cost: build O(N) (prefix sums); pick O(log N) (two binary-search draws), no allocation. With
 *   `exclude`, a few rejected draws, then at worst one O(N) pass.
 * - Use when: pools are large or shared by many replicas and session lengths vary; the default
 *   choice for load-aware balancing at scale.
 */
export class PowerOfTwoPicker<T extends Target> implements Picker<T> {
  readonly #targets: readonly T[];
  readonly #sampler: WeightedSampler;
  readonly #random: Random;

  constructor(targets: readonly T[], opts: PickerOptions) {
    this.#targets = targets;
    this.#sampler = new WeightedSampler(targets.map((t) => t.weight));
    this.#random = opts.random;
  }

  pick(_ctx: PickContext, exclude: ReadonlySet<T> | undefined): T | undefined {
    const first = drawAllowed(this.#sampler, this.#targets, this.#random, exclude, -1);
    const a = this.#targets[first];
    if (a === undefined) return undefined;
    const b = this.#targets[drawAllowed(this.#sampler, this.#targets, this.#random, exclude, first)];
    if (b === undefined) return a;
    return lessLoaded(b, a) ? b : a;
  }
}
