import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { RandomPicker, WeightedSampler } from '../../src/upstream/balancer/random.js';
import { seededRandom } from '../../src/util/clock.js';
import { client, options, tally, target } from './balancer-fixtures.js';

describe('WeightedSampler', () => {
  it('draws in proportion to weight', () => {
    const sampler = new WeightedSampler([1, 2, 3, 4]);
    const random = seededRandom(11);
    const counts = [0, 0, 0, 0];
    for (let i = 0; i < 100_000; i++) counts[sampler.sample(random)]!++;
    counts.forEach((c, i) => expect(Math.abs(c / 100_000 - (i + 1) / 10)).toBeLessThan(0.01));
  });

  it('sampleExcept never returns the skipped index and keeps the others in proportion', () => {
    const sampler = new WeightedSampler([1, 2, 3, 4]);
    const random = seededRandom(12);
    const counts = [0, 0, 0, 0];
    for (let i = 0; i < 90_000; i++) counts[sampler.sampleExcept(random, 2)]!++;
    expect(counts[2]).toBe(0);
    expect(Math.abs(counts[0]! / 90_000 - 1 / 7)).toBeLessThan(0.01);
    expect(Math.abs(counts[3]! / 90_000 - 4 / 7)).toBeLessThan(0.01);
  });

  it('sampleExcept stays in range and off skip for any weights and any draw', () => {
    const weights = fc.array(fc.double({ min: 1e-6, max: 1e6, noNaN: true }), {
      minLength: 2,
      maxLength: 50,
    });
    fc.assert(
      fc.property(
        weights,
        fc.nat(),
        fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
        (ws, s, u) => {
          const skip = s % ws.length;
          const i = new WeightedSampler(ws).sampleExcept(() => u, skip);
          expect(i).not.toBe(skip);
          expect(i >= 0 && i < ws.length).toBe(true);
        },
      ),
    );
  });

  it('has nothing to draw when empty or when only the skipped index exists', () => {
    expect(new WeightedSampler([]).sample(seededRandom(1))).toBe(-1);
    expect(new WeightedSampler([5]).sampleExcept(seededRandom(1), 0)).toBe(-1);
  });
});

describe('RandomPicker', () => {
  it('ignores load', () => {
    const pool = [target('a:1', 1, 1000), target('b:1', 1, 0)];
    const picker = new RandomPicker(pool, options('source-ip', 4));
    const counts = tally(Array.from({ length: 10_000 }, (_, i) => picker.pick(client(i), undefined)));
    expect(Math.abs((counts.get('a:1') ?? 0) / 10_000 - 0.5)).toBeLessThanOrEqual(0.03);
  });

  it('falls back to an exact draw when most targets are excluded', () => {
    const pool = Array.from({ length: 100 }, (_, i) => target(`10.3.0.${i}:80`, i === 99 ? 0.001 : 1000));
    const picker = new RandomPicker(pool, options('source-ip', 8));
    const only = pool[99]!;
    const excluded = new Set(pool.filter((t) => t !== only));
    for (let i = 0; i < 100; i++) expect(picker.pick(client(i), excluded)).toBe(only);
  });
});
