import { describe, expect, it } from 'vitest';
import { LeastConnectionsPicker } from '../../src/upstream/balancer/least-connections.js';
import { client, options, tally, target, targets } from './balancer-fixtures.js';

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
    const pool = targets(4).map((t) => ({ ...t, load: 3 }));
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
});
