import { describe, expect, it } from 'vitest';
import type { PickerOptions } from '../../src/upstream/balancer/picker.js';
import { MAX_RING_POINTS, RingHashPicker, buildRing } from '../../src/upstream/balancer/ring-hash.js';
import { client, options, target, targets, type TestTarget } from './balancer-fixtures.js';
import { assignment, itIsConsistent } from './balancer-consistency.js';

const build = (t: readonly TestTarget[], o: PickerOptions): RingHashPicker<TestTarget> =>
  new RingHashPicker(t, o);

describe('buildRing', () => {
  it('places 160 points per unit of weight, sorted', () => {
    const { points, owners } = buildRing(['a:1', 'b:1'], [1, 2], 160);
    expect(points.length).toBe(480);
    expect(owners.filter((j) => j === 1).length).toBe(320);
    for (let i = 1; i < points.length; i++) expect(points[i]! >= points[i - 1]!).toBe(true);
  });

  it('scales a ring that would be too large, keeping at least one point each', () => {
    const { points, owners } = buildRing(['a:1', 'b:1'], [100_000, 0.0001], 160);
    expect(points.length).toBeLessThanOrEqual(MAX_RING_POINTS + 1);
    expect(owners.includes(1)).toBe(true);
  });
});

describe('RingHashPicker', () => {
  itIsConsistent(build);

  it('retries an excluded backend where the key would go if that backend were removed', () => {
    const pool = targets(8);
    const picker = build(pool, options());
    for (let i = 0; i < 1000; i++) {
      const first = picker.pick(client(i), undefined)!;
      const without = build(
        pool.filter((t) => t !== first),
        options(),
      );
      expect(picker.pick(client(i), new Set([first]))).toBe(without.pick(client(i), undefined));
    }
  });

  describe('with bounded load', () => {
    it('keeps every backend within ceil(c × (total + 1) / N) as sessions accumulate', () => {
      const pool = targets(10);
      const c = 1.25;
      const picker = new RingHashPicker(pool, { ...options(), boundedLoadFactor: c });
      let total = 0;
      // A hot key: the same client over and over would pile onto one backend when unbounded.
      for (let i = 0; i < 2000; i++) {
        const t = picker.pick(client(i % 3), undefined)!;
        expect(t.load + 1).toBeLessThanOrEqual(Math.ceil((c * (total + 1)) / pool.length));
        t.load++;
        total++;
      }
      expect(Math.max(...pool.map((t) => t.load))).toBeLessThanOrEqual(Math.ceil((c * total) / pool.length));
    });

    it('leaves the unbounded choice alone while it has room', () => {
      const pool = targets(10);
      const unbounded = assignment(build(pool, options()));
      expect(assignment(new RingHashPicker(pool, { ...options(), boundedLoadFactor: 1.25 }))).toEqual(
        unbounded,
      );
    });

    it('skips a full backend clockwise to the next', () => {
      const pool = [target('a:1'), target('b:1'), target('c:1')];
      const plain = build(pool, options());
      const first = plain.pick(client(1), undefined)!;
      first.load = 100;
      const bounded = new RingHashPicker(pool, { ...options(), boundedLoadFactor: 1.25 });
      expect(bounded.pick(client(1), undefined)).toBe(plain.pick(client(1), new Set([first])));
    });
  });
});
