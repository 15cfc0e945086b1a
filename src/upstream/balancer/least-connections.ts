import type { LoadWatcher, PickContext, Picker, PickerOptions, Target } from './picker.js';

/**
 * Weighted least connections: the allowed target with the lowest (load + 1) / weight wins, that
 * is the lowest load per unit of weight counting the session about to be placed (the "+ 1", as in
 * HAProxy, makes a heavier backend win among idle ones rather than tie at 0).
 *
 * Ties are broken in turn: the search starts just after the previous winner, so backends with
 * equal scores share new sessions evenly instead of the first in the list taking them all.
 *
 * - Guarantees: every pick goes to a least-loaded allowed target (as of `load` at pick time),
 *   the same one a scan from the previous winner would choose.
 * - Cost: build O(N); pick O(log N) plus O(log N) per target whose load changed since the last
 *   pick (a batch of many changes, such as a state-store sync, is folded in at O(N) instead).
 *   The picker keeps the scores in a segment tree and watches its targets' loads (`loadWatcher`):
 *   the pool's backends announce every change of their local, sibling and cluster counts.
 * - Use when: sessions are long or of very uneven length (databases, websockets, streaming).
 */
export class LeastConnectionsPicker<T extends Target> implements Picker<T>, LoadWatcher {
  readonly #targets: readonly T[];
  readonly #position = new Map<Target, number>();
  /** Per target: load + 1 as of its last update, and its weight. */
  readonly #num: Float64Array;
  readonly #den: Float64Array;
  /** Leaves at [size, 2 size): the target index, or -1 (none, or excluded for this pick). */
  readonly #tree: Int32Array;
  readonly #size: number;
  /** Targets whose load changed since the last pick. */
  readonly #dirty: number[] = [];
  readonly #isDirty: Uint8Array;
  /** Where the next search starts; random at first so replicas do not tie-break in step. */
  #next: number;

  constructor(targets: readonly T[], opts: PickerOptions) {
    const n = targets.length;
    this.#targets = targets;
    this.#next = Math.floor(opts.random() * Math.max(1, n));
    let size = 1;
    while (size < n) size *= 2;
    this.#size = size;
    this.#num = new Float64Array(n);
    this.#den = new Float64Array(n);
    this.#isDirty = new Uint8Array(n);
    this.#tree = new Int32Array(2 * size).fill(-1);
    for (let i = 0; i < n; i++) {
      const t = targets[i]!;
      this.#position.set(t, i);
      this.#num[i] = t.load + 1;
      this.#den[i] = t.weight;
      this.#tree[size + i] = i;
      t.loadWatcher = this;
    }
    for (let node = size - 1; node >= 1; node--) this.#combine(node);
  }

  loadChanged(target: Target): void {
    const i = this.#position.get(target);
    if (i === undefined || this.#isDirty[i] === 1) return;
    this.#isDirty[i] = 1;
    this.#dirty.push(i);
  }

  pick(_ctx: PickContext, exclude: ReadonlySet<T> | undefined): T | undefined {
    this.#flush();
    const hidden = exclude === undefined || exclude.size === 0 ? undefined : this.#hide(exclude);
    const best = this.#tree[1]!;
    let index = -1;
    if (best >= 0) {
      index = this.#firstTied(best, this.#next);
      if (index < 0) index = this.#firstTied(best, 0);
    }
    if (hidden !== undefined) for (const i of hidden) this.#setLeaf(i, i);
    if (index < 0) return undefined;
    this.#next = index + 1 === this.#targets.length ? 0 : index + 1;
    return this.#targets[index];
  }

  /** Whether target i scores strictly lower than target j: (load + 1) / weight, cross-multiplied. */
  #less(i: number, j: number): boolean {
    return this.#num[i]! * this.#den[j]! < this.#num[j]! * this.#den[i]!;
  }

  /** A node keeps the lower-scoring of its children's targets; the left (lower index) on a tie. */
  #combine(node: number): void {
    const a = this.#tree[2 * node]!;
    const b = this.#tree[2 * node + 1]!;
    this.#tree[node] = a < 0 ? b : b < 0 ? a : this.#less(b, a) ? b : a;
  }

  #setLeaf(i: number, value: number): void {
    let node = this.#size + i;
    this.#tree[node] = value;
    for (node >>= 1; node >= 1; node >>= 1) this.#combine(node);
  }

  /** Reads the loads that changed since the last pick into the tree. */
  #flush(): void {
    const dirty = this.#dirty;
    if (dirty.length === 0) return;
    for (const i of dirty) {
      this.#num[i] = this.#targets[i]!.load + 1;
      this.#isDirty[i] = 0;
    }
    // Past about N / log N changes, one bottom-up pass is cheaper than a path per change.
    if (dirty.length * 32 > this.#targets.length) {
      for (let node = this.#size - 1; node >= 1; node--) this.#combine(node);
    } else {
      for (const i of dirty) this.#setLeaf(i, i);
    }
    dirty.length = 0;
  }

  /** Takes the excluded targets out of the tree for one pick; returns their indexes. */
  #hide(exclude: ReadonlySet<T>): number[] {
    const hidden: number[] = [];
    for (const t of exclude) {
      const i = this.#position.get(t);
      if (i === undefined) continue;
      hidden.push(i);
      this.#setLeaf(i, -1);
    }
    return hidden;
  }

  /** The first index at or after `from` whose target scores the same as `best`, or -1. */
  #firstTied(best: number, from: number): number {
    return this.#find(1, 0, this.#size, from, best);
  }

  /**
   * Within node (covering [lo, lo + width)): the leftmost index >= from tied with `best`. A node
   * whose lowest score is above best's holds no tie, so only one path is walked down to a leaf,
   * plus the nodes cut by `from`: O(log N).
   */
  #find(node: number, lo: number, width: number, from: number, best: number): number {
    if (lo + width <= from) return -1;
    const v = this.#tree[node]!;
    if (v < 0 || this.#less(best, v)) return -1;
    if (width === 1) return lo;
    const half = width >> 1;
    const left = this.#find(2 * node, lo, half, from, best);
    return left >= 0 ? left : this.#find(2 * node + 1, lo + half, half, from, best);
  }
}
