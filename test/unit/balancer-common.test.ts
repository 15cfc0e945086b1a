import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { buildPicker } from '../../src/upstream/balancer/index.js';
import type { Algorithm, HashKey } from '../../src/upstream/balancer/picker.js';
import { client, options, tally, target, targets, type TestTarget } from './balancer-fixtures.js';

const ALL: readonly Algorithm[] = [
  'round-robin',
  'least-connections',
  'power-of-two',
  'random',
  'maglev',
  'ring-hash',
];
const HASHING = new Set<Algorithm>(['maglev', 'ring-hash']);
const PICKS = 10_000;

/**
 * Effective weights are fractional during slow start. round-robin's schedule floors weights (a
 * weight below 1 gets no turn), so it is given whole weights here.
 */
function weightOf(algorithm: Algorithm): fc.Arbitrary<number> {
  return algorithm === 'round-robin'
    ? fc.integer({ min: 1, max: 100 })
    : fc.double({ min: 0.01, max: 100, noNaN: true });
}

/**
 * 10k picks as the pool would make them: load-aware algorithms see each pick's session stay open
 * (load grows), hashing ones see 10k distinct clients.
 */
function run(algorithm: Algorithm, pool: TestTarget[]): Map<string, number> {
  const picker = buildPicker(algorithm, pool, options('source-ip', 7));
  const picks = [];
  for (let i = 0; i < PICKS; i++) {
    const t = picker.pick(client(i), undefined);
    if (t !== undefined) t.load++;
    picks.push(t);
  }
  return tally(picks);
}

describe.each(ALL)('%s', (algorithm) => {
  it('returns undefined for an empty target list', () => {
    const picker = buildPicker(algorithm, [], options());
    expect(picker.pick(client(1), undefined)).toBeUndefined();
    expect(picker.pick(client(1), new Set())).toBeUndefined();
  });

  it('spreads 10k picks evenly over equal backends (20 ± 3 % each of 5)', () => {
    const counts = run(algorithm, targets(5));
    expect(counts.size).toBe(5);
    for (const n of counts.values()) expect(Math.abs(n / PICKS - 0.2)).toBeLessThanOrEqual(0.03);
  });

  it(`sends a weighted canary 80/20 split within ± 3 % ${HASHING.has(algorithm) ? 'of 10k clients' : 'of 10k picks'}`, () => {
    const counts = run(algorithm, [target('10.1.0.1:443', 80), target('10.1.0.2:443', 20)]);
    expect(Math.abs((counts.get('10.1.0.1:443') ?? 0) / PICKS - 0.8)).toBeLessThanOrEqual(0.03);
    expect(Math.abs((counts.get('10.1.0.2:443') ?? 0) / PICKS - 0.2)).toBeLessThanOrEqual(0.03);
  });

  it('never returns an excluded target, and undefined once all are excluded', () => {
    const arbitraryPool = fc.array(fc.record({ weight: weightOf(algorithm), load: fc.nat(1000) }), {
      minLength: 1,
      maxLength: 24,
    });
    const hashKey = fc.constantFrom<HashKey>('source-ip', 'source-ip-port', 'sni');
    fc.assert(
      fc.property(arbitraryPool, fc.array(fc.boolean()), hashKey, fc.nat(), (specs, mask, key, seed) => {
        const pool = specs.map((s, i) => target(`10.2.0.${i}:80`, s.weight, s.load));
        const excluded = new Set(pool.filter((_, i) => mask[i] === true));
        const picker = buildPicker(algorithm, pool, options(key, seed));
        for (let c = 0; c < 20; c++) {
          const t = picker.pick(client(seed + c, c % 2 ? 'api.example.com' : undefined), excluded);
          if (excluded.size === pool.length) expect(t).toBeUndefined();
          else expect(t !== undefined && pool.includes(t) && !excluded.has(t)).toBe(true);
        }
        expect(picker.pick(client(seed), new Set(pool))).toBeUndefined();
      }),
      { numRuns: 200 },
    );
  });
});
