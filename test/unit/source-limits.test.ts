import { describe, expect, it } from 'vitest';
import { SourceLimits } from '../../src/listener/source-limits.js';

describe('per-source limits', () => {
  it('caps open connections per IP and frees them on release', () => {
    const l = new SourceLimits(2, 0);
    expect(l.admit('a', 0)).toBe('ok');
    expect(l.admit('a', 0)).toBe('ok');
    expect(l.admit('a', 0)).toBe('per_source_limit');
    expect(l.admit('b', 0)).toBe('ok');
    l.release('a');
    expect(l.admit('a', 0)).toBe('ok');
  });

  it('limits the rate with a token bucket that refills', () => {
    const l = new SourceLimits(0, 5);
    for (let i = 0; i < 5; i++) expect(l.admit('a', 1000)).toBe('ok');
    expect(l.admit('a', 1000)).toBe('rate_limit');
    expect(l.admit('a', 1200)).toBe('ok'); // 0.2 s refills one token
    expect(l.admit('a', 1200)).toBe('rate_limit');
  });

  it('bounds the table under a flood of distinct sources', () => {
    const l = new SourceLimits(0, 10, 1000);
    let refused = 0;
    for (let i = 0; i < 5000; i++) if (l.admit(`10.0.${i >> 8}.${i & 255}`, 0) !== 'ok') refused++;
    expect(l.trackedSources).toBe(1000);
    expect(refused).toBe(4000);
    // Once the old buckets have refilled they are evicted to make room.
    expect(l.admit('192.0.2.1', 2000)).toBe('ok');
    expect(l.trackedSources).toBeLessThanOrEqual(1000);
  });
});
