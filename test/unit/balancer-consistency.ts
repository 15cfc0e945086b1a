import { expect, it } from 'vitest';
import type { Picker, PickerOptions } from '../../src/upstream/balancer/picker.js';
import { client, options, target, targets, type TestTarget } from './balancer-fixtures.js';

export const KEYS = 10_000;

/** Fresh target objects with the same addresses and weights, in reverse order: what another process builds. */
export function copies(pool: readonly TestTarget[]): TestTarget[] {
  return pool.map((t) => target(t.address, t.weight, t.load)).reverse();
}

/** The address each of 10k clients is sent to. */
export function assignment(picker: Picker<TestTarget>): string[] {
  return Array.from({ length: KEYS }, (_, i) => picker.pick(client(i), undefined)?.address ?? 'none');
}

export function moved(before: readonly string[], after: readonly string[]): number {
  return before.filter((a, i) => a !== after[i]).length;
}

type Build = (targets: readonly TestTarget[], opts: PickerOptions) => Picker<TestTarget>;

/**
 * Keys moved when one of `pool` is removed and when one is added. Ideal consistent hashing moves
 * 1/N on removal (the removed backend's keys) and 1/(N+1) on addition.
 */
export function disruption(
  build: Build,
  pool: readonly TestTarget[],
  opts: PickerOptions,
): { removed: number; added: number } {
  const base = assignment(build(pool, opts));
  const without = pool.filter((_, i) => i !== Math.floor(pool.length / 2));
  const withOneMore = [...pool, target('10.9.9.9:8080')];
  return {
    removed: moved(base, assignment(build(without, opts))),
    added: moved(base, assignment(build(withOneMore, opts))),
  };
}

/**
 * What every consistent-hash picker promises: replicas agree without sharing state, and a
 * membership change moves about 1/N of the keys. Call inside a describe block.
 */
export function itIsConsistent(build: Build): void {
  it('sends the same key to the same backend in separately built pickers', () => {
    const pool = targets(10).map((t, i) => target(t.address, 1 + (i % 3)));
    expect(assignment(build(copies(pool), options('source-ip', 2)))).toEqual(
      assignment(build(pool, options())),
    );
  });

  it.each([5, 10])(
    'moves at most 1.2/N of keys when one of %i backends leaves, 1.2/(N+1) when one joins',
    (n) => {
      const { removed, added } = disruption(build, targets(n), options());
      expect(removed / KEYS).toBeLessThanOrEqual(1.2 / n);
      expect(added / KEYS).toBeLessThanOrEqual(1.2 / (n + 1));
    },
  );
}
