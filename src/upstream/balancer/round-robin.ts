import type { PickContext, Picker, PickerOptions, Target } from './picker.js';

/** Largest schedule kept; weights are scaled down proportionally to fit (ratios preserved to ~1/65536). */
const MAX_SCHEDULE = 1 << 16;

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}

/**
 * Builds nginx's smooth weighted round-robin sequence once: each step adds every weight to its
 * current value, takes the largest and subtracts the total. The sequence spreads a heavy backend's
 * turns out (5,1,1 → a a b a c a a) instead of sending it a burst.
 */
export function smoothSchedule(weights: readonly number[]): Uint32Array {
  // Slow start gives fractional weights: round, but keep every positive weight in the schedule.
  let ws = weights.map((w) => (w > 0 ? Math.max(1, Math.round(w)) : 0));
  const g = ws.reduce((a, b) => gcd(a, b), 0);
  if (g > 1) ws = ws.map((w) => w / g);
  let total = ws.reduce((a, b) => a + b, 0);
  if (total > MAX_SCHEDULE) {
    const scale = MAX_SCHEDULE / total;
    ws = ws.map((w) => (w > 0 ? Math.max(1, Math.floor(w * scale)) : 0));
    total = ws.reduce((a, b) => a + b, 0);
  }
  return ws.length <= SMALL_POOL ? nginxSequence(ws, total) : strideSequence(ws, total);
}

/** Pools up to this size use nginx's O(N)-per-step loop; larger ones a heap (O(log N) per step). */
const SMALL_POOL = 32;

function nginxSequence(ws: readonly number[], total: number): Uint32Array {
  const out = new Uint32Array(total);
  const current = new Float64Array(ws.length);
  for (let step = 0; step < total; step++) {
    let best = -1;
    for (let i = 0; i < ws.length; i++) {
      const w = ws[i] ?? 0;
      if (w === 0) continue;
      current[i] = (current[i] ?? 0) + w;
      if (best < 0 || (current[i] ?? 0) > (current[best] ?? 0)) best = i;
    }
    current[best] = (current[best] ?? 0) - total;
    out[step] = best;
  }
  return out;
}

/**
 * Stride scheduling: each backend's next turn is due at pass += total / weight, and the earliest
 * due goes next (ties by index). Same shares and the same smooth spreading as nginx's loop, built
 * in O(total · log N) with a binary heap, so 10,000 backends build in milliseconds.
 */
function strideSequence(ws: readonly number[], total: number): Uint32Array {
  const out = new Uint32Array(total);
  const heap: number[] = [];
  const pass = new Float64Array(ws.length);
  const less = (a: number, b: number): boolean =>
    (pass[a] ?? 0) < (pass[b] ?? 0) || ((pass[a] ?? 0) === (pass[b] ?? 0) && a < b);
  const down = (i: number): void => {
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < heap.length && less(heap[l] ?? 0, heap[m] ?? 0)) m = l;
      if (r < heap.length && less(heap[r] ?? 0, heap[m] ?? 0)) m = r;
      if (m === i) return;
      [heap[i], heap[m]] = [heap[m] ?? 0, heap[i] ?? 0];
      i = m;
    }
  };
  ws.forEach((w, i) => {
    if (w > 0) {
      pass[i] = total / w / 2;
      heap.push(i);
    }
  });
  for (let i = (heap.length >> 1) - 1; i >= 0; i--) down(i);
  for (let step = 0; step < total; step++) {
    const top = heap[0] ?? 0;
    out[step] = top;
    pass[top] = (pass[top] ?? 0) + total / (ws[top] ?? 1);
    down(0);
  }
  return out;
}

/**
 * Weighted round-robin, O(1) per pick: the smooth schedule is built when the ready set changes,
 * and a pick steps through it. The starting offset is random so replicas do not all send their
 * first sessions to the same backend.
 */
export class RoundRobinPicker<T extends Target> implements Picker<T> {
  readonly #targets: readonly T[];
  readonly #schedule: Uint32Array;
  #next: number;

  constructor(targets: readonly T[], opts: PickerOptions) {
    this.#targets = targets;
    this.#schedule = smoothSchedule(targets.map((t) => t.weight));
    this.#next = Math.floor(opts.random() * Math.max(1, this.#schedule.length));
  }

  pick(_ctx: PickContext, exclude: ReadonlySet<T> | undefined): T | undefined {
    const len = this.#schedule.length;
    if (len === 0) return undefined;
    // With exclusions, walk on until an allowed target turns up; each target appears in the
    // schedule, so at most one lap is needed.
    for (let n = 0; n < len; n++) {
      const i = this.#schedule[this.#next] ?? 0;
      this.#next = this.#next + 1 === len ? 0 : this.#next + 1;
      const t = this.#targets[i];
      if (t !== undefined && (exclude === undefined || !exclude.has(t))) return t;
      if (exclude !== undefined && exclude.size >= this.#targets.length) return undefined;
    }
    return undefined;
  }
}
