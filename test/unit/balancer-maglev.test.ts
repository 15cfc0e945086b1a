import { describe, expect, it } from 'vitest';
import {
  DEFAULT_MAGLEV_TABLE_SIZE,
  MaglevPicker,
  buildMaglevTable,
  isPrime,
} from '../../src/upstream/balancer/maglev.js';
import type { PickerOptions } from '../../src/upstream/balancer/picker.js';
import { client, options, target, targets, type TestTarget } from './balancer-fixtures.js';
import { KEYS, copies, itIsConsistent } from './balancer-consistency.js';

const build = (t: readonly TestTarget[], o: PickerOptions): MaglevPicker<TestTarget> =>
  new MaglevPicker(t, o);

describe('buildMaglevTable', () => {
  it('uses a prime size and fills every entry', () => {
    expect(isPrime(DEFAULT_MAGLEV_TABLE_SIZE)).toBe(true);
    const addresses = targets(7).map((t) => t.address);
    const table = buildMaglevTable(addresses, [1, 1, 1, 1, 1, 1, 1], DEFAULT_MAGLEV_TABLE_SIZE);
    expect(table.length).toBe(DEFAULT_MAGLEV_TABLE_SIZE);
    expect(table.every((j) => j >= 0 && j < 7)).toBe(true);
  });

  it('refuses a size that is not prime', () => {
    expect(() => buildMaglevTable(['a:1'], [1], 65536)).toThrow(RangeError);
  });

  it('gives each backend entries in proportion to its weight', () => {
    const weights = [1, 2, 3, 4];
    const table = buildMaglevTable(['a:1', 'b:1', 'c:1', 'd:1'], weights, 65537);
    const counts = [0, 0, 0, 0];
    for (const j of table) counts[j]!++;
    counts.forEach((c, j) => expect(Math.abs(c / 65537 - weights[j]! / 10)).toBeLessThan(0.001));
  });

  it('gives equal backends equal shares to within one entry each', () => {
    const table = buildMaglevTable(
      targets(10).map((t) => t.address),
      Array<number>(10).fill(1),
      65537,
    );
    const counts = Array<number>(10).fill(0);
    for (const j of table) counts[j]!++;
    expect(Math.max(...counts) - Math.min(...counts)).toBeLessThanOrEqual(1);
  });

  it('fills a small table too', () => {
    const table = buildMaglevTable(['a:1', 'b:1', 'c:1'], [5, 1, 0.5], 13);
    expect(table.every((j) => j >= 0 && j < 3)).toBe(true);
  });
});

describe('MaglevPicker', () => {
  itIsConsistent(build);

  it('retries an excluded backend onto the same next backend in every replica', () => {
    const a = targets(8);
    const b = copies(a);
    const pa = build(a, options());
    const pb = build(b, options());
    for (let i = 0; i < 1000; i++) {
      const first = pa.pick(client(i), undefined)!;
      const firstB = b.find((t) => t.address === first.address)!;
      const retryA = pa.pick(client(i), new Set([first]));
      const retryB = pb.pick(client(i), new Set([firstB]));
      expect(retryA).toBeDefined();
      expect(retryA?.address).not.toBe(first.address);
      expect(retryA?.address).toBe(retryB?.address);
    }
  });

  it('spreads retries of one failed backend over the others', () => {
    const pool = targets(5);
    const picker = build(pool, options());
    const failed = new Set([pool[0]!]);
    const counts = new Map<string, number>();
    for (let i = 0; i < KEYS; i++) {
      const t = picker.pick(client(i), failed)!;
      counts.set(t.address, (counts.get(t.address) ?? 0) + 1);
    }
    expect(counts.size).toBe(4);
    for (const c of counts.values()) expect(Math.abs(c / KEYS - 0.25)).toBeLessThanOrEqual(0.03);
  });

  it('routes on SNI when asked, falling back to the client IP without one', () => {
    const picker = build(targets(10), options('sni'));
    const bySni = new Set(
      Array.from({ length: 100 }, (_, i) => picker.pick(client(i, 'api.example.com'), undefined)),
    );
    expect(bySni.size).toBe(1);
    const byIp = new Set(Array.from({ length: 100 }, (_, i) => picker.pick(client(i), undefined)));
    expect(byIp.size).toBeGreaterThan(1);
  });

  it('still finds a backend that won no slot when it is the only one left', () => {
    const pool = [target('a:1', 1000), target('b:1', 0.001)];
    const picker = new MaglevPicker(pool, { ...options(), maglevTableSize: 7 });
    expect(picker.pick(client(0), new Set([pool[0]!]))).toBe(pool[1]);
  });
});
