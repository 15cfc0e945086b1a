import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { LeastConnectionsPicker } from '../../src/upstream/balancer/least-connections.js';
import type { PickerOptions } from '../../src/upstream/balancer/picker.js';
import { TestTarget, client, options, tally, target, targets } from './balancer-fixtures.js';

/**
 * The definition the indexed picker must match pick for pick: scan every target from just after
 * the previous winner and keep the first with the lowest (load + 1) / weight (cross-multiplied).
 */
class ScanPicker {
  readonly #targets: readonly TestTarget[];
  #next: number;

  constructor(targets: readonly TestTarget[], opts: PickerOptions) {
    this.#targets = targets;
    this.#next = Math.floor(opts.random() * Math.max(1, targets.length));
  }

  pick(exclude: ReadonlySet<TestTarget> | undefined): TestTarget | undefined {
    const n = this.#targets.length;
    let best = -1;
    for (let k = 0, i = this.#next; k < n; k++, i = (i + 1) % n) {
      const t = this.#targets[i]!;
      if (exclude?.has(t)) continue;
      const b = this.#targets[best];
      if (b === undefined || (t.load + 1) * b.weight < (b.load + 1) * t.weight) best = i;
    }
    if (best < 0) return undefined;
    this.#next = (best + 1) % n;
    return this.#targets[best];
  }
}

describe('LeastConnectionsPicker', () => {
  it('picks the least loaded backend', () => {
    const pool = [target('a:1', 1, 7), target('b:1', 1, 2), target('c:1', 1, 5)];
    const picker = new LeastConnectionsPicker(pool, options());
    for (let i = 0; i < 10; i++) expect(picker.pick(client(i), undefined)?.address).toBe('b:1');
  });

  it('compares load per unit of weight, counting the new session', () => {
    // (6+1)/4 = 1.75 beats (1+1)/1 = 2: the heavier backend carries more before it loses.
    const pool = [target('small:1', 1, 1), target('big:1', 4, 6)];
    expect(new LeastConnectionsPicker(pool, options()).pick(client(0), undefined)?.address).toBe('big:1');
    // Idle backends do not tie: the heavier one is the better place for the first session.
    const idle = [target('small:1', 1), target('big:1', 3)];
    expect(new LeastConnectionsPicker(idle, options()).pick(client(0), undefined)?.address).toBe('big:1');
  });

  it('spreads ties evenly when loads do not change', () => {
    const pool = targets(4).map((t) => target(t.address, t.weight, 3));
    const picker = new LeastConnectionsPicker(pool, options());
    const counts = tally(Array.from({ length: 10_000 }, (_, i) => picker.pick(client(i), undefined)));
    expect([...counts.values()]).toEqual([2500, 2500, 2500, 2500]);
  });

  it('spreads ties only among the least loaded', () => {
    const pool = [target('a:1', 1, 0), target('b:1', 1, 9), target('c:1', 1, 0)];
    const picker = new LeastConnectionsPicker(pool, options());
    const counts = tally(Array.from({ length: 1000 }, (_, i) => picker.pick(client(i), undefined)));
    expect(Object.fromEntries(counts)).toEqual({ 'a:1': 500, 'c:1': 500 });
  });

  it('honours weights as sessions accumulate (3:1 → 75 % / 25 %)', () => {
    const pool = [target('a:1', 3), target('b:1', 1)];
    const picker = new LeastConnectionsPicker(pool, options());
    for (let i = 0; i < 10_000; i++) {
      const t = picker.pick(client(i), undefined);
      if (t) t.load++;
    }
    expect(pool.map((t) => t.load)).toEqual([7500, 2500]);
  });

  it('keeps loads level when sessions open and close', () => {
    const pool = targets(10);
    const picker = new LeastConnectionsPicker(pool, options());
    const open: (typeof pool)[number][] = [];
    for (let i = 0; i < 10_000; i++) {
      const t = picker.pick(client(i), undefined);
      if (t) {
        t.load++;
        open.push(t);
      }
      // Close the oldest session now and then, as real sessions end.
      if (i % 3 === 0) {
        const done = open.shift();
        if (done) done.load--;
      }
    }
    const loads = pool.map((t) => t.load);
    expect(Math.max(...loads) - Math.min(...loads)).toBeLessThanOrEqual(1);
  });

  it('skips excluded backends, even the least loaded', () => {
    const pool = [target('a:1', 1, 0), target('b:1', 1, 4), target('c:1', 1, 8)];
    const picker = new LeastConnectionsPicker(pool, options());
    expect(picker.pick(client(0), new Set([pool[0]!]))?.address).toBe('b:1');
    expect(picker.pick(client(0), new Set([pool[0]!, pool[1]!]))?.address).toBe('c:1');
    expect(picker.pick(client(0), new Set(pool))).toBeUndefined();
  });

  it('picks exactly what a scan from the previous winner picks, as loads move and backends are excluded', () => {
    const op = fc.oneof(
      fc.record({ kind: fc.constant('pick' as const), exclude: fc.array(fc.nat(), { maxLength: 4 }) }),
      fc.record({ kind: fc.constant('load' as const), at: fc.nat(), delta: fc.integer({ min: -3, max: 5 }) }),
      fc.record({ kind: fc.constant('sync' as const), loads: fc.array(fc.nat(50), { maxLength: 64 }) }),
    );
    const weight = fc.oneof(
      fc.constant(1),
      fc.integer({ min: 1, max: 8 }),
      fc.double({ min: 0.1, max: 10, noNaN: true }),
    );
    fc.assert(
      fc.property(
        fc.array(fc.record({ weight, load: fc.nat(20) }), { minLength: 1, maxLength: 70 }),
        fc.array(op, { maxLength: 300 }),
        fc.nat(),
        (specs, ops, seed) => {
          const pool = specs.map((s, i) => target(`10.3.${i >> 8}.${i & 255}:80`, s.weight, s.load));
          const indexed = new LeastConnectionsPicker(pool, options('source-ip', seed));
          const scan = new ScanPicker(pool, options('source-ip', seed));
          for (const o of ops) {
            if (o.kind === 'load') {
              const t = pool[o.at % pool.length]!;
              t.load = Math.max(0, t.load + o.delta);
            } else if (o.kind === 'sync') {
              // A state-store sync: many counts move at once, between two picks.
              o.loads.forEach((l, i) => {
                if (i < pool.length) pool[i]!.load = l;
              });
            } else {
              const exclude = new Set(o.exclude.map((i) => pool[i % pool.length]!));
              const got = indexed.pick(client(0), exclude);
              expect(got).toBe(scan.pick(exclude));
              if (got !== undefined) got.load++;
            }
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  it('reads only the loads that changed: 10,000 backends, a load change after every pick', () => {
    // Not a timing: how many loads a pick reads. A scan reads all 10,000 per pick.
    let reads = 0;
    class Counted extends TestTarget {
      override get load(): number {
        reads++;
        return super.load;
      }
      override set load(n: number) {
        super.load = n;
      }
    }
    const pool = targets(10_000).map((t) => new Counted(t.address, 1, 0));
    const picker = new LeastConnectionsPicker(pool, options());
    reads = 0;
    const picked = new Set<TestTarget>();
    for (let i = 0; i < 1000; i++) {
      const t = picker.pick(client(i), undefined)!;
      picked.add(t);
      t.load++; // one read (the ++), and the picker reads it once at the next pick
    }
    expect(reads).toBeLessThanOrEqual(2 * 1000);
    // and the picks still go round the idle backends one by one
    expect(picked.size).toBe(1000);
  });
});
