import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import type { Backend } from '../../src/upstream/backend.js';
import type { QueueWaiter } from '../../src/upstream/wait-queue.js';
import { Pool } from '../../src/upstream/pool.js';
import { ManualClock, seededRandom } from '../../src/util/clock.js';

const ctx = { clientIp: '127.0.0.1', clientPort: 1000, sni: undefined };

function pool(algorithm: string, extra = ''): Pool {
  const cfg = parseConfigText(`listeners: [{ name: t, bind: "127.0.0.1:0", pool: p }]
pools:
  - name: p
    algorithm: ${algorithm}
    max_connections_per_backend: 1
    max_queue: 2
    health: { active: { type: none } }
    backends: [{ address: "127.0.0.1:1001" }, { address: "127.0.0.1:1002" }]
    ${extra}`);
  const p = cfg.pools[0];
  if (p === undefined) throw new Error('no pool');
  return new Pool(p, new ManualClock(), seededRandom(1));
}

/** A waiter that takes whatever free backend the pool offers. */
function waiter(p: Pool, got: Backend[]): QueueWaiter {
  const w: QueueWaiter = {
    retryQueued() {
      const b = p.pickFree(ctx, undefined);
      if (b === 'full' || b === undefined) return false;
      p.acquire(b, { close: () => undefined });
      got.push(b);
      return true;
    },
  };
  return w;
}

describe('per-backend cap and queue', () => {
  it.each(['round-robin', 'least-connections', 'power-of-two', 'random', 'maglev', 'ring-hash'])(
    '%s: a full backend is skipped, and with every backend full the answer is "full"',
    (algorithm) => {
      const p = pool(algorithm);
      const holders = [{ close: () => undefined }, { close: () => undefined }];
      const first = p.pickFree(ctx, undefined);
      if (first === 'full' || first === undefined) throw new Error('expected a backend');
      p.acquire(first, holders[0] ?? { close: () => undefined });
      const second = p.pickFree(ctx, undefined);
      if (second === 'full' || second === undefined) throw new Error('expected a backend');
      expect(second).not.toBe(first);
      p.acquire(second, holders[1] ?? { close: () => undefined });
      expect(p.pickFree(ctx, undefined)).toBe('full');
    },
  );

  it('the queue is bounded and served in arrival order as slots free', () => {
    const p = pool('round-robin');
    const h1 = { close: () => undefined };
    const h2 = { close: () => undefined };
    const a = p.pickFree(ctx, undefined) as Backend;
    p.acquire(a, h1);
    const b = p.pickFree(ctx, undefined) as Backend;
    p.acquire(b, h2);
    const got: Backend[] = [];
    const w1 = waiter(p, got);
    const w2 = waiter(p, got);
    expect(p.enqueue(w1)).toBe(true);
    expect(p.enqueue(w2)).toBe(true);
    expect(p.enqueue(waiter(p, got))).toBe(false);
    p.release(b, h2);
    expect(got).toEqual([b]);
    expect(p.queued).toBe(1);
    p.dequeue(w2);
    p.release(a, h1);
    expect(got).toEqual([b]);
    expect(p.queued).toBe(0);
  });

  it('a cap of 0 turns the check off', () => {
    const p = pool('round-robin');
    p.update({ ...p.config, max_connections_per_backend: 0 });
    for (let i = 0; i < 5; i++) {
      const b = p.pickFree(ctx, undefined);
      if (b === 'full' || b === undefined) throw new Error('expected a backend');
      p.acquire(b, { close: () => undefined });
    }
  });
});
