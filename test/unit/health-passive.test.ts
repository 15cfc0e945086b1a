import { describe, expect, it } from 'vitest';
import { MAX_EJECTION_FACTOR, PassiveHealth } from '../../src/health/passive.js';
import type { Ejectable, PassiveHealthOptions } from '../../src/health/passive.js';
import { Backend } from '../../src/upstream/backend.js';
import { ManualClock } from '../../src/util/clock.js';

const EJECTION = 1000;

interface Harness {
  clock: ManualClock;
  members: Ejectable[];
  passive: PassiveHealth<Ejectable>;
  ejects: { key: string; until: number; count: number }[];
  returns: string[];
}

function harness(n: number, overrides: Partial<PassiveHealthOptions<Ejectable>> = {}): Harness {
  const clock = new ManualClock(10_000);
  const members: Ejectable[] = Array.from({ length: n }, (_, i) => ({
    key: `p/10.0.0.${i}:80`,
    ejectedUntil: 0,
  }));
  const ejects: Harness['ejects'] = [];
  const returns: string[] = [];
  const passive = new PassiveHealth<Ejectable>({
    consecutiveFailures: 3,
    ejection: EJECTION,
    maxEjectionPercent: 50,
    clock,
    members: () => members,
    onEject: (b, until, count) => ejects.push({ key: b.key, until, count }),
    onReturn: (b) => returns.push(b.key),
    ...overrides,
  });
  return { clock, members, passive, ejects, returns };
}

function at(h: Harness, i: number): Ejectable {
  const b = h.members[i];
  if (!b) throw new Error(`no member ${i}`);
  return b;
}

function fail(h: Harness, b: Ejectable, times: number): void {
  for (let i = 0; i < times; i++) h.passive.failure(b);
}

describe('PassiveHealth ejection', () => {
  it('ejects after consecutive failures, not before', () => {
    const h = harness(4);
    const b = at(h, 0);
    fail(h, b, 2);
    expect(b.ejectedUntil).toBe(0);
    h.passive.failure(b);
    expect(b.ejectedUntil).toBe(10_000 + EJECTION);
    expect(h.ejects).toEqual([{ key: b.key, until: 10_000 + EJECTION, count: 1 }]);
  });

  it('a success resets the failure count', () => {
    const h = harness(4);
    const b = at(h, 0);
    fail(h, b, 2);
    h.passive.success(b);
    fail(h, b, 2);
    expect(b.ejectedUntil).toBe(0);
    h.passive.failure(b);
    expect(b.ejectedUntil).toBeGreaterThan(0);
  });

  it('failures while ejected neither extend the ejection nor count', () => {
    const h = harness(4);
    const b = at(h, 0);
    fail(h, b, 3);
    const until = b.ejectedUntil;
    fail(h, b, 10);
    expect(b.ejectedUntil).toBe(until);
    expect(h.ejects).toHaveLength(1);
  });

  it('consecutive_failures 0 disables passive health', () => {
    const h = harness(4, { consecutiveFailures: 0 });
    fail(h, at(h, 0), 100);
    expect(h.passive.disabled).toBe(true);
    expect(at(h, 0).ejectedUntil).toBe(0);
    expect(h.ejects).toEqual([]);
  });

  it('works on Backend objects, whose readiness follows the ejection', () => {
    const clock = new ManualClock(0);
    const b = new Backend('p', '10.0.0.1:80', '10.0.0.1', 80, 1, 'up');
    const passive = new PassiveHealth<Backend>({
      consecutiveFailures: 1,
      ejection: EJECTION,
      maxEjectionPercent: 100,
      clock,
      members: () => [b],
    });
    passive.failure(b);
    expect(b.readiness(clock.now())).toBe('ejected');
    clock.advance(EJECTION);
    expect(b.readiness(clock.now())).toBe('ready');
  });
});

describe('PassiveHealth return timer', () => {
  it('calls onReturn once at the ejection end and clears ejectedUntil', () => {
    const h = harness(4);
    const b = at(h, 1);
    fail(h, b, 3);
    h.clock.advance(EJECTION - 1);
    expect(h.returns).toEqual([]);
    expect(b.ejectedUntil).toBeGreaterThan(h.clock.now());
    h.clock.advance(1);
    expect(h.returns).toEqual([b.key]);
    expect(b.ejectedUntil).toBe(0);
    h.clock.advance(10 * EJECTION);
    expect(h.returns).toEqual([b.key]);
  });

  it('forget() cancels the return timer without onReturn', () => {
    const h = harness(4);
    const b = at(h, 0);
    fail(h, b, 3);
    h.passive.forget(b);
    expect(h.clock.pending).toBe(0);
    h.clock.advance(EJECTION * 2);
    expect(h.returns).toEqual([]);
  });

  it('stop() cancels every return timer', () => {
    const h = harness(4);
    fail(h, at(h, 0), 3);
    fail(h, at(h, 1), 3);
    h.passive.stop();
    expect(h.clock.pending).toBe(0);
  });

  it('a throwing onReturn does not escape the timer', async () => {
    const h = harness(2, {
      onReturn: () => {
        throw new Error('wiring bug');
      },
    });
    fail(h, at(h, 0), 3);
    const seen: unknown[] = [];
    const onWarning = (w: unknown): void => void seen.push(w);
    process.on('warning', onWarning);
    try {
      expect(() => h.clock.advance(EJECTION)).not.toThrow();
      await new Promise((r) => setImmediate(r));
    } finally {
      process.off('warning', onWarning);
    }
    expect(seen).toHaveLength(1);
    expect(at(h, 0).ejectedUntil).toBe(0);
  });
});

describe('PassiveHealth backoff', () => {
  it('doubles each ejection in a row and caps at 10 × ejection', () => {
    const h = harness(2);
    const b = at(h, 0);
    const spans: number[] = [];
    for (let k = 1; k <= 7; k++) {
      const start = h.clock.now();
      fail(h, b, 3);
      spans.push(b.ejectedUntil - start);
      expect(h.passive.ejections(b)).toBe(k);
      h.clock.advance(b.ejectedUntil - start);
    }
    expect(spans).toEqual([1, 2, 4, 8, 10, 10, 10].map((f) => f * EJECTION));
    expect(h.ejects.map((e) => e.count)).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(MAX_EJECTION_FACTOR).toBe(10);
  });

  it('resets k after a success one full ejection period after the return', () => {
    const h = harness(2);
    const b = at(h, 0);
    fail(h, b, 3);
    h.clock.advance(EJECTION);
    fail(h, b, 3);
    expect(h.passive.ejections(b)).toBe(2);
    h.clock.advance(2 * EJECTION);
    // Back in, succeeding, but not yet for a full period: k stays.
    h.clock.advance(EJECTION - 1);
    h.passive.success(b);
    expect(h.passive.ejections(b)).toBe(2);
    h.clock.advance(1);
    h.passive.success(b);
    expect(h.passive.ejections(b)).toBe(0);
    fail(h, b, 3);
    expect(b.ejectedUntil - h.clock.now()).toBe(EJECTION);
  });

  it('keeps k when the backend fails again soon after returning', () => {
    const h = harness(2);
    const b = at(h, 0);
    fail(h, b, 3);
    h.clock.advance(EJECTION);
    h.passive.success(b);
    h.clock.advance(EJECTION / 2);
    fail(h, b, 3);
    expect(h.passive.ejections(b)).toBe(2);
    expect(b.ejectedUntil - h.clock.now()).toBe(2 * EJECTION);
  });

  it('ignores a success while ejected', () => {
    const h = harness(2);
    const b = at(h, 0);
    fail(h, b, 3);
    h.clock.advance(EJECTION / 2);
    h.passive.success(b);
    expect(h.passive.ejections(b)).toBe(1);
    expect(b.ejectedUntil).toBeGreaterThan(h.clock.now());
  });
});

describe('PassiveHealth max ejection percent', () => {
  it('never ejects more than the percent of the pool', () => {
    const h = harness(10, { maxEjectionPercent: 30 });
    for (let i = 0; i < 10; i++) fail(h, at(h, i), 3);
    expect(h.members.filter((m) => m.ejectedUntil > h.clock.now())).toHaveLength(3);
    expect(h.ejects.map((e) => e.key)).toEqual([0, 1, 2].map((i) => at(h, i).key));
  });

  it('a failure refused by the cap keeps its count and ejects once room frees up', () => {
    const h = harness(2, { maxEjectionPercent: 50 });
    const a = at(h, 0);
    const b = at(h, 1);
    fail(h, a, 3);
    fail(h, b, 3);
    expect(b.ejectedUntil).toBe(0);
    h.clock.advance(EJECTION);
    h.passive.failure(b);
    expect(b.ejectedUntil).toBeGreaterThan(h.clock.now());
  });

  it('always allows one ejection, even in a pool of one', () => {
    const h = harness(1, { maxEjectionPercent: 10 });
    fail(h, at(h, 0), 3);
    expect(at(h, 0).ejectedUntil).toBeGreaterThan(0);
  });

  it('percent 0 never ejects', () => {
    const h = harness(5, { maxEjectionPercent: 0 });
    fail(h, at(h, 0), 30);
    expect(h.ejects).toEqual([]);
  });

  it('counts only current members: a removed ejected backend frees its slot', () => {
    const h = harness(4, { maxEjectionPercent: 25 });
    const gone = at(h, 0);
    fail(h, gone, 3);
    fail(h, at(h, 1), 3);
    expect(at(h, 1).ejectedUntil).toBe(0);
    h.members.splice(0, 1);
    h.members.push({ key: 'p/10.0.0.9:80', ejectedUntil: 0 });
    h.passive.forget(gone);
    h.passive.failure(at(h, 0));
    expect(at(h, 0).ejectedUntil).toBeGreaterThan(0);
  });

  it('100 percent may eject the whole pool', () => {
    const h = harness(3, { maxEjectionPercent: 100 });
    for (let i = 0; i < 3; i++) fail(h, at(h, i), 3);
    expect(h.ejects).toHaveLength(3);
  });
});

describe('PassiveHealth and the last ready backend', () => {
  it('never ejects a backend when mayEject says it is the last one ready; tells once per run of failures', () => {
    const held: string[] = [];
    const h = harness(1, { mayEject: () => false, onHeld: (b) => held.push(b.key) });
    const b = at(h, 0);
    fail(h, b, 3);
    fail(h, b, 3);
    expect(b.ejectedUntil).toBe(0);
    expect(h.ejects).toEqual([]);
    expect(held).toEqual([b.key]);
    // A success ends the run: the next run of failures is told again.
    h.passive.success(b);
    fail(h, b, 3);
    expect(held).toEqual([b.key, b.key]);
  });

  it('ejects as before once another backend is ready again', () => {
    let others = false;
    const h = harness(2, { mayEject: () => others });
    const b = at(h, 0);
    fail(h, b, 3);
    expect(b.ejectedUntil).toBe(0);
    others = true;
    h.passive.failure(b); // the count was kept: this failure ejects
    expect(b.ejectedUntil).toBe(10_000 + EJECTION);
  });
});
