import type { PickContext, Picker, PickerOptions, Target } from './picker.js';

/**
 * Weighted least connections: the allowed target with the lowest (load + 1) / weight wins, that
 * is the lowest load per unit of weight counting the session about to be placed (the "+ 1", as in
 * HAProxy, makes a heavier backend win among idle ones rather than tie at 0).
 *
 * Ties are broken in turn: the scan starts just after the previous winner, so backends with equal
 * scores share new sessions evenly instead of the first in the list taking them all.
 *
 * - Guarantees: every pick goes to a least-loaded allowed target (as of `load` at pick time).
 * - Cost: build O(1); pick O(N), one pass with no sort and no allocation. nginx's least_conn
 *   scans the same way: a heap would need to be told of every load change, and `load` here also
 *   moves with other replicas' counts, which arrive without notice.
 * - Use when: sessions are long or of very uneven length (databases, websockets, streaming) and
 *   pools hold up to a few thousand backends; above that, power-of-two is nearly as even at
 *   O(log N).
 */
export class LeastConnectionsPicker<T extends Target> implements Picker<T> {
  readonly #targets: readonly T[];
  /** Where the next scan starts; random at first so replicas do not tie-break in step. */
  #next: number;

  constructor(targets: readonly T[], opts: PickerOptions) {
    this.#targets = targets;
    this.#next = Math.floor(opts.random() * Math.max(1, targets.length));
  }

  pick(_ctx: PickContext, exclude: ReadonlySet<T> | undefined): T | undefined {
    const n = this.#targets.length;
    let bestIndex = -1;
    let bestLoad = 0;
    let bestWeight = 1;
    for (let k = 0, i = this.#next; k < n; k++, i = i + 1 === n ? 0 : i + 1) {
      const t = this.#targets[i];
      if (t === undefined || (exclude !== undefined && exclude.has(t))) continue;
      // lessLoaded, inlined: this loop is the whole cost of a pick, and `load` may be a getter,
      // so it is read once per target.
      const load = t.load + 1;
      const weight = t.weight;
      // Strictly less: on a tie the earlier in scan order, the one nearest after the last winner, keeps it.
      if (bestIndex < 0 || load * bestWeight < bestLoad * weight) {
        bestIndex = i;
        bestLoad = load;
        bestWeight = weight;
      }
    }
    if (bestIndex < 0) return undefined;
    this.#next = bestIndex + 1 === n ? 0 : bestIndex + 1;
    return this.#targets[bestIndex];
  }
}
