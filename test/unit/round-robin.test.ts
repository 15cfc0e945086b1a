import { describe, expect, it } from 'vitest';
import { RoundRobinPicker, smoothSchedule } from '../../src/upstream/balancer/round-robin.js';
import { seededRandom } from '../../src/util/clock.js';

const ctx = { clientIp: '192.0.2.1', clientPort: 1000, sni: undefined };
const targets = (weights: number[]) =>
  weights.map((weight, i) => ({ address: `10.0.0.${i}:80`, weight, load: 0 }));

describe('smooth weighted round-robin', () => {
  it('spreads a heavy backend out as nginx does (5,1,1 → a a b a c a a)', () => {
    expect([...smoothSchedule([5, 1, 1])]).toEqual([0, 0, 1, 0, 2, 0, 0]);
  });

  it('honours weights exactly over 10k picks', () => {
    const ts = targets([3, 1, 6]);
    const p = new RoundRobinPicker(ts, { hashKey: 'source-ip', random: seededRandom(1) });
    const counts = new Map<string, number>();
    for (let i = 0; i < 10_000; i++) {
      const t = p.pick(ctx, undefined);
      counts.set(t?.address ?? '', (counts.get(t?.address ?? '') ?? 0) + 1);
    }
    expect(counts.get('10.0.0.0:80')).toBe(3000);
    expect(counts.get('10.0.0.1:80')).toBe(1000);
    expect(counts.get('10.0.0.2:80')).toBe(6000);
  });

  it('gives the 80/20 canary split', () => {
    const ts = targets([80, 20]);
    const p = new RoundRobinPicker(ts, { hashKey: 'source-ip', random: seededRandom(2) });
    let canary = 0;
    for (let i = 0; i < 10_000; i++) if (p.pick(ctx, undefined) === ts[1]) canary++;
    expect(canary).toBe(2000);
  });

  it('skips excluded backends and gives up when all are excluded', () => {
    const ts = targets([1, 1, 1]);
    const p = new RoundRobinPicker(ts, { hashKey: 'source-ip', random: seededRandom(3) });
    const ex = new Set([ts[0], ts[1]].filter((t) => t !== undefined));
    for (let i = 0; i < 10; i++) expect(p.pick(ctx, ex)).toBe(ts[2]);
    expect(p.pick(ctx, new Set(ts))).toBeUndefined();
    expect(
      new RoundRobinPicker([], { hashKey: 'source-ip', random: seededRandom(4) }).pick(ctx, undefined),
    ).toBeUndefined();
  });

  it('keeps the schedule bounded for huge weight sums and keeps ratios', () => {
    const s = smoothSchedule(new Array<number>(10_000).fill(256).map((w, i) => (i === 0 ? 1 : w)));
    expect(s.length).toBeLessThanOrEqual(70_000);
    expect([...s].filter((i) => i === 0).length).toBeGreaterThanOrEqual(1);
  });
});

describe('round-robin on large pools', () => {
  it('keeps exact shares and spreads turns with 1,000 weighted backends', () => {
    const weights = Array.from({ length: 1000 }, (_, i) => 1 + (i % 4));
    const s = smoothSchedule(weights);
    const counts = new Array<number>(1000).fill(0);
    for (const i of s) counts[i] = (counts[i] ?? 0) + 1;
    expect(counts).toEqual(weights);
    // Smooth: a weight-4 backend never gets two turns in a row.
    for (let i = 1; i < s.length; i++) if (s[i] === s[i - 1]) expect(weights[s[i] ?? 0]).toBeLessThan(1);
  });

  it('keeps fractional (slow start) weights in the schedule', () => {
    expect([...smoothSchedule([0.4, 2])].sort()).toEqual([0, 1, 1]);
  });
});
