import { describe, expect, it } from 'vitest';
import { ActiveChecker } from '../../src/health/active.js';
import type { ActiveCheckerOptions, ActiveState } from '../../src/health/active.js';
import type { ProbeResult } from '../../src/health/probe.js';
import { ManualClock, seededRandom } from '../../src/util/clock.js';

const PASS: ProbeResult = { ok: true };
const FAIL: ProbeResult = { ok: false, reason: 'refused' };

/** Lets promise callbacks (a probe settling) run. */
async function flush(): Promise<void> {
  for (let i = 0; i < 5; i++) await Promise.resolve();
}

/** Advances the clock in 1 ms steps, letting probes settle between steps. */
async function run(clock: ManualClock, ms: number): Promise<void> {
  for (let i = 0; i < ms; i++) {
    clock.advance(1);
    await flush();
  }
}

interface Harness {
  clock: ManualClock;
  checker: ActiveChecker;
  /** Clock times at which a probe started. */
  calls: number[];
  transitions: [ActiveState, ActiveState, ProbeResult][];
  results: ProbeResult[];
}

/** A checker whose probe answers from `script` (then repeats the last answer). */
function harness(script: ProbeResult[], overrides: Partial<ActiveCheckerOptions> = {}): Harness {
  const clock = new ManualClock(1000);
  const calls: number[] = [];
  const transitions: Harness['transitions'] = [];
  const results: ProbeResult[] = [];
  const checker = new ActiveChecker({
    clock,
    random: seededRandom(7),
    interval: 100,
    jitter: 0,
    rise: 2,
    fall: 3,
    initial: 'up',
    probe: () => {
      calls.push(clock.now());
      const r = script[Math.min(calls.length - 1, script.length - 1)] ?? PASS;
      return Promise.resolve(r);
    },
    onTransition: (from, to, last) => transitions.push([from, to, last]),
    onResult: (r) => results.push(r),
    ...overrides,
  });
  return { clock, checker, calls, transitions, results };
}

/** Runs until `n` probes have settled. */
async function probes(h: Harness, n: number): Promise<void> {
  while (h.results.length < n) await run(h.clock, 10);
}

describe('ActiveChecker hysteresis', () => {
  it('initial up: the first failure turns it down, then rise passes bring it back', async () => {
    const h = harness([FAIL, PASS, PASS, PASS]);
    h.checker.start();
    await probes(h, 1);
    expect(h.checker.state).toBe('down');
    expect(h.transitions).toEqual([['up', 'down', FAIL]]);
    await probes(h, 2);
    expect(h.checker.state).toBe('down');
    await probes(h, 3);
    expect(h.checker.state).toBe('up');
    expect(h.transitions).toEqual([
      ['up', 'down', FAIL],
      ['down', 'up', PASS],
    ]);
  });

  it('initial up confirmed by a pass: then fall failures in a row are needed', async () => {
    const h = harness([PASS, FAIL, FAIL, PASS, FAIL, FAIL, FAIL]);
    h.checker.start();
    await probes(h, 6);
    expect(h.checker.state).toBe('up');
    expect(h.transitions).toEqual([]);
    await probes(h, 7);
    expect(h.checker.state).toBe('down');
    expect(h.transitions).toEqual([['up', 'down', FAIL]]);
  });

  it('initial down (discovered backend): one pass turns it up, then fall applies', async () => {
    const h = harness([PASS, FAIL, FAIL, FAIL], { initial: 'down' });
    expect(h.checker.state).toBe('down');
    h.checker.start();
    await probes(h, 1);
    expect(h.checker.state).toBe('up');
    await probes(h, 3);
    expect(h.checker.state).toBe('up');
    await probes(h, 4);
    expect(h.checker.state).toBe('down');
    expect(h.transitions.map(([f, t]) => `${f}>${t}`)).toEqual(['down>up', 'up>down']);
  });

  it('initial down that fails stays down and needs the full rise', async () => {
    const h = harness([FAIL, PASS, FAIL, PASS, PASS], { initial: 'down', rise: 2 });
    h.checker.start();
    await probes(h, 4);
    expect(h.checker.state).toBe('down');
    await probes(h, 5);
    expect(h.checker.state).toBe('up');
    expect(h.transitions).toHaveLength(1);
  });

  it('a flapping backend (pass, fail, pass, ...) never changes state with rise 2 / fall 3', async () => {
    const script = Array.from({ length: 40 }, (_, i) => (i % 2 === 0 ? PASS : FAIL));
    const h = harness(script);
    h.checker.start();
    await probes(h, 40);
    expect(h.transitions).toEqual([]);
    expect(h.checker.state).toBe('up');
  });

  it('reports every result and each transition exactly once', async () => {
    const script = [PASS, FAIL, FAIL, FAIL, FAIL, FAIL, PASS, PASS, PASS, PASS];
    const h = harness(script);
    h.checker.start();
    await probes(h, script.length);
    expect(h.results).toEqual(script);
    expect(h.transitions.map(([f, t]) => `${f}>${t}`)).toEqual(['up>down', 'down>up']);
    expect(h.checker.lastResult).toEqual(PASS);
  });

  it('a rejecting or throwing probe counts as a failure with reason error', async () => {
    const h = harness([], { probe: () => Promise.reject(new Error('bug')) });
    h.checker.start();
    await probes(h, 1);
    expect(h.results).toEqual([{ ok: false, reason: 'error' }]);
    const t = harness([], {
      probe: () => {
        throw new Error('bug');
      },
    });
    t.checker.start();
    await probes(t, 1);
    expect(t.checker.state).toBe('down');
  });

  it('a throwing callback does not stop the schedule', async () => {
    const warnings: unknown[] = [];
    const onWarning = (w: unknown): void => void warnings.push(w);
    process.on('warning', onWarning);
    try {
      const h = harness([FAIL], {
        onTransition: () => {
          throw new Error('wiring bug');
        },
      });
      h.checker.start();
      await probes(h, 3);
      expect(h.calls.length).toBeGreaterThanOrEqual(3);
      await new Promise((r) => setImmediate(r));
      expect(warnings.length).toBe(1);
    } finally {
      process.off('warning', onWarning);
    }
  });
});

describe('ActiveChecker scheduling', () => {
  it('starts the first probe at a random offset within [0, interval)', async () => {
    for (let seed = 1; seed <= 50; seed++) {
      const h = harness([PASS], { random: seededRandom(seed), interval: 200, jitter: 10 });
      const t0 = h.clock.now();
      h.checker.start();
      await probes(h, 1);
      const offset = (h.calls[0] ?? Infinity) - t0;
      expect(offset).toBeGreaterThanOrEqual(0);
      expect(offset).toBeLessThan(200);
    }
  });

  it('spreads offsets across the interval for a pool', async () => {
    const offsets: number[] = [];
    const random = seededRandom(99);
    for (let i = 0; i < 40; i++) {
      const h = harness([PASS], { random, interval: 100 });
      h.checker.start();
      await probes(h, 1);
      offsets.push((h.calls[0] ?? 0) - 1000);
    }
    expect(Math.min(...offsets)).toBeLessThan(25);
    expect(Math.max(...offsets)).toBeGreaterThan(75);
  });

  it('keeps every gap within interval ± jitter% and uses the whole range', async () => {
    const interval = 100;
    const h = harness([PASS], { interval, jitter: 20, random: seededRandom(3) });
    h.checker.start();
    await probes(h, 301);
    const gaps = h.calls.slice(1).map((t, i) => t - (h.calls[i] ?? 0));
    // The 1 ms step of the test loop can delay a settle by up to 1 ms.
    for (const g of gaps) {
      expect(g).toBeGreaterThanOrEqual(80);
      expect(g).toBeLessThan(121);
    }
    expect(Math.min(...gaps)).toBeLessThan(85);
    expect(Math.max(...gaps)).toBeGreaterThan(115);
  });

  it('with jitter 0 probes exactly every interval', async () => {
    const h = harness([PASS], { interval: 50 });
    h.checker.start();
    await probes(h, 20);
    const gaps = h.calls.slice(1).map((t, i) => t - (h.calls[i] ?? 0));
    for (const g of gaps) expect(g).toBeCloseTo(50, 0);
  });

  it('never has two probes in flight: the next waits for the previous to settle', async () => {
    const pending: ((r: ProbeResult) => void)[] = [];
    const h = harness([], {
      probe: () => {
        h.calls.push(h.clock.now());
        return new Promise<ProbeResult>((resolve) => pending.push(resolve));
      },
    });
    h.checker.start();
    await run(h.clock, 1000);
    expect(h.calls).toHaveLength(1);
    expect(h.checker.inFlight).toBe(true);
    pending[0]?.(FAIL);
    await flush();
    expect(h.checker.inFlight).toBe(false);
    await run(h.clock, 1000);
    expect(h.calls).toHaveLength(2);
  });

  it('stop() cancels the next probe', async () => {
    const h = harness([PASS]);
    h.checker.start();
    await probes(h, 2);
    h.checker.stop();
    expect(h.clock.pending).toBe(0);
    await run(h.clock, 1000);
    expect(h.calls).toHaveLength(2);
  });

  it('stop() before the first probe leaves nothing scheduled', () => {
    const h = harness([PASS]);
    h.checker.start();
    h.checker.stop();
    expect(h.clock.pending).toBe(0);
  });

  it('stop() ignores a probe still in flight and start() after stop does nothing', async () => {
    const pending: ((r: ProbeResult) => void)[] = [];
    const h = harness([], {
      probe: () => {
        h.calls.push(h.clock.now());
        return new Promise<ProbeResult>((resolve) => pending.push(resolve));
      },
    });
    h.checker.start();
    await run(h.clock, 200);
    expect(pending).toHaveLength(1);
    h.checker.stop();
    pending[0]?.(FAIL);
    await flush();
    expect(h.results).toEqual([]);
    expect(h.transitions).toEqual([]);
    expect(h.checker.state).toBe('up');
    h.checker.start();
    expect(h.clock.pending).toBe(0);
  });

  it('start() twice schedules once', async () => {
    const h = harness([PASS]);
    h.checker.start();
    h.checker.start();
    expect(h.clock.pending).toBe(1);
    await probes(h, 1);
    expect(h.calls).toHaveLength(1);
  });
});
