import { describe, expect, it } from 'vitest';
import { PowerOfTwoPicker, lessLoaded } from '../../src/upstream/balancer/power-of-two.js';
import { client, options, tally, target, targets } from './balancer-fixtures.js';

describe('PowerOfTwoPicker', () => {
  it('prefers the less loaded of two', () => {
    const pool = [target('busy:1', 1, 10), target('idle:1', 1, 0)];
    const picker = new PowerOfTwoPicker(pool, options());
    for (let i = 0; i < 100; i++) expect(picker.pick(client(i), undefined)?.address).toBe('idle:1');
  });

  it('never picks the most loaded, and picks the least loaded about twice as often as its share', () => {
    const pool = targets(10).map((t, i) => target(t.address, 1, i * 10));
    const picker = new PowerOfTwoPicker(pool, options('source-ip', 3));
    const counts = tally(Array.from({ length: 10_000 }, (_, i) => picker.pick(client(i), undefined)));
    expect(counts.get(pool[9]!.address)).toBeUndefined();
    // The least loaded wins whenever it is one of the two distinct candidates: 2/N = 20 %.
    expect(Math.abs((counts.get(pool[0]!.address) ?? 0) / 10_000 - 0.2)).toBeLessThanOrEqual(0.02);
  });

  it('keeps loads close as sessions accumulate', () => {
    const pool = targets(20);
    const picker = new PowerOfTwoPicker(pool, options('source-ip', 5));
    for (let i = 0; i < 10_000; i++) {
      const t = picker.pick(client(i), undefined);
      if (t) t.load++;
    }
    const loads = pool.map((t) => t.load);
    // Uniform random would spread these by ~±3σ ≈ ±65; two choices keep them within a few.
    expect(Math.max(...loads) - Math.min(...loads)).toBeLessThanOrEqual(10);
  });

  it('draws two distinct candidates: with two backends the better one always wins', () => {
    const pool = [target('a:1', 1, 1), target('b:1', 1, 2)];
    const picker = new PowerOfTwoPicker(pool, options('source-ip', 9));
    const counts = tally(Array.from({ length: 1000 }, (_, i) => picker.pick(client(i), undefined)));
    expect(Object.fromEntries(counts)).toEqual({ 'a:1': 1000 });
  });

  it('respects exclude', () => {
    const pool = [target('a:1', 1, 0), target('b:1', 1, 5), target('c:1', 1, 9)];
    const picker = new PowerOfTwoPicker(pool, options());
    for (let i = 0; i < 100; i++) expect(picker.pick(client(i), new Set([pool[0]!]))?.address).toBe('b:1');
    expect(picker.pick(client(0), new Set([pool[0]!, pool[1]!]))?.address).toBe('c:1');
    expect(picker.pick(client(0), new Set(pool))).toBeUndefined();
  });

  it('lessLoaded weighs load by weight, counting the new session', () => {
    expect(lessLoaded(target('a', 2, 3), target('b', 1, 1))).toBe(false); // 4/2 = 2/1
    expect(lessLoaded(target('a', 4, 3), target('b', 1, 1))).toBe(true); // 1 < 2
    expect(lessLoaded(target('a', 1, 0), target('b', 1, 0))).toBe(false);
  });
});
