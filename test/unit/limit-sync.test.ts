import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { configWarnings } from '../../src/config/validate.js';
import { ConfigError } from '../../src/config/validate.js';
import { workerShare } from '../../src/lifecycle/workers.js';
import { fairShare } from '../../src/state/limit-grants.js';
import type { LimitAnswer, LimitClaim, LimitRound } from '../../src/state/limit-grants.js';
import { LimitSync } from '../../src/state/limit-sync.js';
import type { SharedLimit } from '../../src/state/limit-sync.js';
import { MemoryStore } from '../../src/state/memory.js';
import { createLogger } from '../../src/telemetry/logger.js';
import { Pool } from '../../src/upstream/pool.js';
import type { Backend } from '../../src/upstream/backend.js';
import { ManualClock, seededRandom } from '../../src/util/clock.js';
import type { Random } from '../../src/util/clock.js';
import { LogSink } from '../support/log-sink.js';

/**
 * Cluster-wide limits without sockets: replicas are LimitSync instances on one MemoryStore and one
 * ManualClock; their "connections" are counts admitted while below the cap, as the listeners and
 * pools do. Time moves only by advance(), so expiry and fall-back are exact.
 */

const TTL = 3000;
const flush = (): Promise<void> => new Promise((r) => setImmediate(r));

/** One limit as its owner shows it: a count admitted while below `cap`. */
interface Owned extends SharedLimit {
  open: number;
  admitted: number;
  /** Admits up to `n` connections while below the cap; returns how many. */
  admit(n: number): number;
}

function limit(max: number, name = 'app/10.0.0.1:80'): Owned {
  return {
    kind: 'backend',
    name,
    limit: max,
    open: 0,
    admitted: 0,
    cap: 0,
    admit(n: number): number {
      let admitted = 0;
      while (admitted < n && this.open < this.cap) {
        this.open++;
        this.admitted++;
        admitted++;
      }
      return admitted;
    },
  };
}

/**
 * A memory store whose claims wait in a queue: each is applied to the store when the test says
 * (or never), and answered when the test says, or lost on the way back. `wipe` empties the
 * claims, as a Redis restarted without its data would.
 */
class ManualStore extends MemoryStore {
  #claims: MemoryStore;
  readonly #clock: ManualClock;
  readonly queue: {
    apply: () => Promise<LimitAnswer>;
    answered?: LimitAnswer;
    resolve: (a: LimitAnswer) => void;
    reject: (e: Error) => void;
  }[] = [];
  down = false;

  constructor(clock: ManualClock) {
    super(clock);
    this.#clock = clock;
    this.#claims = new MemoryStore(clock);
  }

  wipe(): void {
    this.#claims = new MemoryStore(this.#clock);
  }

  override claimLimits(
    replicaId: string,
    claims: readonly LimitClaim[],
    round: LimitRound,
  ): Promise<LimitAnswer> {
    if (this.down) return Promise.reject(new Error('redis script claim-limits: connection closed'));
    return new Promise<LimitAnswer>((resolve, reject) =>
      this.queue.push({ apply: () => this.#claims.claimLimits(replicaId, claims, round), resolve, reject }),
    );
  }

  override publishCounts(
    replicaId: string,
    counts: ReadonlyMap<string, number>,
    ttlMs: number,
  ): Promise<void> {
    return this.#claims.publishCounts(replicaId, counts, ttlMs);
  }

  /** Applies the claim at `i` in the store (Redis ran the script); its answer is still on the way. */
  async apply(i: number): Promise<void> {
    const c = this.queue[i];
    if (c !== undefined && c.answered === undefined) c.answered = await c.apply();
  }

  /** Delivers the claim at `i`: its answer if applied, else a timeout; `lost` drops an applied answer. */
  settle(i: number, lost = false): void {
    const [c] = this.queue.splice(i, 1);
    if (c === undefined) return;
    if (c.answered !== undefined && !lost) c.resolve(c.answered);
    else c.reject(new Error('redis script claim-limits: command timed out'));
  }
}

interface Replica {
  readonly sync: LimitSync;
  readonly l: Owned;
  round: Promise<void> | undefined;
}

function replicaOn(store: MemoryStore, clock: ManualClock, id: string, max: number, logs?: LogSink): Replica {
  const l = limit(max);
  const sync = new LimitSync({
    store,
    clock,
    logger: createLogger('info', logs ?? new LogSink()),
    replicaId: id,
    ttlMs: TTL,
    limits: () => [l],
  });
  sync.start();
  return { sync, l, round: undefined };
}

/** Applies and answers every claim waiting in `store`, in order. */
async function answerEvery(store: ManualStore): Promise<void> {
  while (store.queue.length > 0) {
    await store.apply(0);
    store.settle(0);
  }
  await flush();
}

/** Starts a round on `r` unless one is in flight (StateSync never overlaps them). */
function startRound(r: Replica): void {
  r.round ??= r.sync
    .sync()
    .catch(() => undefined)
    .finally(() => (r.round = undefined));
}

/**
 * Replicas a, b and c with a cluster-scoped limit of `max` on one ManualStore, registered and
 * through their first round. `heartbeat` moves the clock on a second and runs a round on each of
 * `back`: answered by the store one by one, or with the store down, all started and then failed.
 */
async function manualFleet(max: number, logs?: readonly LogSink[]) {
  const clock = new ManualClock(0);
  const store = new ManualStore(clock);
  const rs = ['a', 'b', 'c'].map((id, i) => replicaOn(store, clock, id, max, logs?.[i]));
  for (const id of ['a', 'b', 'c']) await store.publishCounts(id, new Map(), 60_000);
  const answerAll = (): Promise<void> => answerEvery(store);
  const heartbeat = async (back: readonly Replica[] = rs): Promise<void> => {
    clock.advance(1000);
    if (store.down) {
      for (const r of back) startRound(r);
      await flush();
      return;
    }
    for (const r of back) {
      startRound(r);
      await answerAll();
    }
  };
  for (const r of rs) {
    startRound(r);
    await answerAll();
  }
  return { clock, store, rs, answerAll, heartbeat };
}

describe('fair shares', () => {
  it('split what is free over the replicas, in whole connections that add up to it', () => {
    for (const [free, n] of [
      [30, 3],
      [31, 3],
      [2, 3],
      [7, 4],
      [1, 1],
    ] as const) {
      const shares = Array.from({ length: n }, (_, rank) => fairShare(free, 0, 0, n, rank));
      expect(shares.reduce((a, b) => a + b, 0)).toBe(free);
      expect(Math.max(...shares) - Math.min(...shares)).toBeLessThanOrEqual(1);
    }
    expect(fairShare(30, 20, 15, 3, 0)).toBe(0);
  });
});

describe('LimitSync: the sum of open connections never exceeds the limit', () => {
  it.each([1, 2, 3, 4, 5, 6, 7, 8])(
    'under any order of arrivals, ends, claims, answers, lost answers and store restarts (seed %i)',
    async (seed) => {
      const random: Random = seededRandom(seed);
      const pick = (n: number): number => Math.floor(random() * n);
      const clock = new ManualClock(0);
      const store = new ManualStore(clock);
      const max = 10 + pick(40);
      const replicas = ['r1', 'r2', 'r3', 'r4']
        .slice(0, 2 + pick(3))
        .map((id) => replicaOn(store, clock, id, max));
      let peak = 0;
      let wipes = 0;
      let peakBeforeWipe = 0;
      for (let step = 0; step < 3000; step++) {
        const r = replicas[pick(replicas.length)]!;
        const what = step === 1500 || step === 2250 ? 1 : random();
        if (what < 0.35) r.l.admit(1 + pick(5));
        else if (what < 0.5) r.l.open = Math.max(0, r.l.open - 1 - pick(3));
        else if (what < 0.65) startRound(r);
        else if (what < 0.8 && store.queue.length > 0) await store.apply(pick(store.queue.length));
        else if (what < 0.998 && store.queue.length > 0)
          store.settle(pick(store.queue.length), random() < 0.1);
        else if (what >= 0.998 && step >= 1500) {
          if (wipes === 0) peakBeforeWipe = peak;
          store.wipe();
          wipes++;
        }
        await flush();
        const total = replicas.reduce((n, x) => n + x.l.open, 0);
        peak = Math.max(peak, total);
        expect(total, `step ${step}`).toBeLessThanOrEqual(max);
      }
      // Not a vacuous run: the limit was reached, then the store lost its claims at least once.
      expect(peakBeforeWipe).toBe(max);
      expect(wipes).toBeGreaterThan(0);
    },
  );
});

describe('LimitSync: grants, holds and falling back', () => {
  it('admits nothing before the first grant, then splits the limit and fills it', async () => {
    const clock = new ManualClock(0);
    const store = new MemoryStore(clock);
    const rs = ['a', 'b', 'c'].map((id) => replicaOn(store, clock, id, 30));
    expect(rs.map((r) => r.l.admit(5))).toEqual([0, 0, 0]);
    for (const r of rs)
      await store.publishCounts(r === rs[0] ? 'a' : r === rs[1] ? 'b' : 'c', new Map(), TTL);
    for (const r of rs) await r.sync.sync();
    expect(rs.map((r) => r.l.cap)).toEqual([10, 10, 10]);
    expect(rs.map((r) => r.l.admit(20))).toEqual([10, 10, 10]);
    for (const r of rs) await r.sync.sync();
    expect(rs.map((r) => r.l.cap)).toEqual([10, 10, 10]);
  });

  it('moves the free connections to where sessions arrive, a share per heartbeat', async () => {
    const clock = new ManualClock(0);
    const store = new MemoryStore(clock);
    const rs = ['a', 'b', 'c'].map((id) => replicaOn(store, clock, id, 30));
    for (const id of ['a', 'b', 'c']) await store.publishCounts(id, new Map(), 60_000);
    const caps: number[] = [];
    for (let heartbeat = 0; heartbeat < 20; heartbeat++) {
      for (const r of rs) await r.sync.sync();
      rs[0]!.l.admit(100); // every session arrives through a
      caps.push(rs[0]!.l.cap);
      clock.advance(1000);
    }
    expect(caps[0]).toBe(10);
    expect(caps.every((c, i) => i === 0 || c >= caps[i - 1]!)).toBe(true);
    // The idle ones keep a share of what is free: a reaches all but less than one share each.
    expect(rs[0]!.l.open).toBeGreaterThanOrEqual(28);
    expect(rs.reduce((n, r) => n + r.l.cap, 0)).toBeLessThanOrEqual(30);
    console.info(`one busy replica of 3, limit 30: its cap per heartbeat ${caps.join(' ')}`);
  });

  it('keeps the holds through failed claims, falls back at the TTL, logs each change once', async () => {
    const logs = [new LogSink(), new LogSink(), new LogSink()];
    const { clock, store, rs, answerAll, heartbeat } = await manualFleet(31, logs);
    expect(rs.map((r) => r.l.cap)).toEqual([11, 10, 10]);
    rs.forEach((r) => r.l.admit(4));
    const sentAt = clock.now();
    for (const r of rs) startRound(r);
    await answerAll();
    expect(rs.map((r) => r.l.cap)).toEqual([11, 10, 10]);
    rs.forEach((r) => r.l.admit(2));
    store.down = true;
    clock.advance(1000);
    for (const r of rs) startRound(r);
    await flush();
    // Holds: open + what was admitted in the heartbeat before, at most the share offered last.
    expect(rs.map((r) => r.l.cap)).toEqual([8, 8, 8]);
    expect(rs.map((r) => r.l.admit(5))).toEqual([2, 2, 2]);
    expect(rs.every((r) => !r.sync.fallback)).toBe(true);
    clock.advance(sentAt + TTL - clock.now() - 1);
    expect(rs.every((r) => !r.sync.fallback)).toBe(true);
    clock.advance(1);
    expect(rs.every((r) => r.sync.fallback)).toBe(true);
    expect(rs.map((r) => r.l.cap)).toEqual([10, 10, 10]); // floor(31 / 3)
    for (let i = 0; i < 5; i++) await heartbeat();
    expect(rs.map((r) => r.l.cap)).toEqual([10, 10, 10]);
    const fellBack = 'cluster limits on local shares (limit / live replicas) until the state store answers';
    expect(logs.map((l) => l.find(fellBack).length)).toEqual([1, 1, 1]);
    store.down = false;
    for (const r of rs) {
      startRound(r);
      await answerAll();
    }
    expect(rs.every((r) => !r.sync.fallback)).toBe(true);
    expect(logs.map((l) => l.find('cluster limits shared again').length)).toEqual([1, 1, 1]);
    // Settling: each keeps its local share (now in the store) for 3 heartbeats, then grows again.
    expect(rs.map((r) => r.l.cap)).toEqual([10, 10, 10]);
    for (let i = 0; i < 4; i++) {
      await heartbeat();
      expect(rs.reduce((n, r) => n + r.l.cap, 0)).toBeLessThanOrEqual(31);
    }
    expect(rs.reduce((n, r) => n + r.l.cap, 0)).toBe(31);
  });

  it('back from local shares one by one, grows nothing before the others are back or presumed gone', async () => {
    const { store, rs, heartbeat } = await manualFleet(31);
    rs.forEach((r) => r.l.admit(20));
    expect(rs.map((r) => r.l.open)).toEqual([11, 10, 10]);
    // Redis dies; everyone falls back to 10 (a keeps its 11).
    store.down = true;
    for (let i = 0; i < 4; i++) await heartbeat();
    expect(rs.every((r) => r.sync.fallback)).toBe(true);
    // It comes back empty, and the replicas reconnect one by one, 3 heartbeats apart.
    store.wipe();
    store.down = false;
    const total = (): number => rs.reduce((n, r) => n + Math.max(r.l.open, r.l.cap), 0);
    for (let i = 0; i < 3; i++) {
      await heartbeat([rs[0]!]);
      rs[0]!.l.admit(20);
      expect(total()).toBeLessThanOrEqual(31 + 1); // a's 11 were open before; b and c hold 10 each
      expect(rs[0]!.l.open).toBe(11);
    }
    for (let i = 0; i < 3; i++) {
      await heartbeat([rs[0]!, rs[1]!]);
      rs.forEach((r) => r.l.admit(20));
      expect(rs[0]!.l.open + rs[1]!.l.open).toBe(21);
    }
    for (let i = 0; i < 6; i++) {
      await heartbeat();
      rs.forEach((r) => r.l.admit(20));
      expect(rs.reduce((n, r) => n + r.l.open, 0)).toBeLessThanOrEqual(31);
    }
    expect(rs.reduce((n, r) => n + r.l.open, 0)).toBe(31);
  });

  it('grows without a replica that does not come back, once it is presumed gone', async () => {
    const { store, rs, heartbeat } = await manualFleet(30);
    store.down = true;
    for (let i = 0; i < 4; i++) await heartbeat();
    store.wipe();
    store.down = false;
    const caps: number[] = [];
    for (let i = 0; i < 12; i++) {
      await heartbeat(rs.slice(0, 2));
      for (const r of rs.slice(0, 2)) r.l.admit(30);
      caps.push(rs[0]!.l.cap + rs[1]!.l.cap);
    }
    // Held at their local shares (10 each) for 3 TTLs from the return, then the 30 split over two.
    expect(caps.slice(0, 8).every((c) => c === 20)).toBe(true);
    expect(caps.at(-1)).toBe(30);
  });

  it('falls back to the whole limit when the store never answered since start (no replica seen)', async () => {
    const clock = new ManualClock(0);
    const store = new ManualStore(clock);
    store.down = true;
    const r = replicaOn(store, clock, 'a', 12);
    startRound(r);
    await flush();
    expect(r.l.cap).toBe(0);
    clock.advance(TTL);
    expect(r.sync.fallback).toBe(true);
    expect(r.l.cap).toBe(12);
  });
});

describe('cluster-scoped caps in the pool', () => {
  const yaml = (scope: string, store = 'memory'): string => `state: { store: ${store} }
listeners: [{ name: t, bind: "127.0.0.1:0", pool: p, limits: { max_connections: 100, max_connections_scope: ${scope} } }]
pools:
  - name: p
    max_connections_per_backend: 6
    max_connections_per_backend_scope: ${scope}
    health: { active: { type: none } }
    backends: [{ address: "127.0.0.1:1001" }]
`;
  const ctx = { clientIp: '127.0.0.1', clientPort: 1000, sni: undefined };

  it('skips a backend at its cluster cap and serves the queue when the cap grows', () => {
    const cfg = parseConfigText(yaml('cluster'));
    const p = new Pool(cfg.pools[0]!, new ManualClock(), seededRandom(1));
    expect(p.pickFree(ctx, undefined)).toBe('full'); // no grant yet
    const b = p.get('127.0.0.1:1001') as Backend;
    b.clusterCap = 2;
    for (let i = 0; i < 2; i++) p.acquire(p.pickFree(ctx, undefined) as Backend, { close: () => undefined });
    expect(p.pickFree(ctx, undefined)).toBe('full');
    const served: Backend[] = [];
    p.enqueue({
      retryQueued: () => {
        const got = p.pickFree(ctx, undefined);
        if (got === 'full' || got === undefined) return false;
        served.push(got);
        return true;
      },
    });
    b.clusterCap = 3;
    p.capsChanged();
    expect(served).toEqual([b]);
    // Back to the local scope: the configured cap applies again; back to cluster: no grant yet.
    p.update(parseConfigText(yaml('local')).pools[0]!);
    expect(p.pickFree(ctx, undefined)).toBe(b);
    p.update(cfg.pools[0]!);
    expect(b.clusterCap).toBe(0);
  });

  it('workers: Redis keeps the whole limit for grants; the memory store splits it over the host', () => {
    const redis = workerShare(parseConfigText(yaml('cluster', 'redis')), 4);
    expect(redis.listeners[0]!.limits.max_connections).toBe(100);
    expect(redis.pools[0]!.max_connections_per_backend).toBe(6);
    const memory = workerShare(parseConfigText(yaml('cluster')), 4);
    expect(memory.listeners[0]!.limits.max_connections).toBe(25);
    expect(memory.pools[0]!.max_connections_per_backend).toBe(2);
    const local = workerShare(parseConfigText(yaml('local', 'redis')), 4);
    expect(local.listeners[0]!.limits.max_connections).toBe(25);
    expect(local.pools[0]!.max_connections_per_backend).toBe(6);
  });
});

describe('config', () => {
  it('defaults to the local scope and takes cluster', () => {
    const cfg = parseConfigText(`listeners: [{ name: t, bind: "127.0.0.1:0", pool: p }]
pools: [{ name: p, backends: [{ address: "127.0.0.1:1" }] }]`);
    expect(cfg.listeners[0]!.limits.max_connections_scope).toBe('local');
    expect(cfg.pools[0]!.max_connections_per_backend_scope).toBe('local');
  });

  it.each([
    [
      'listeners: [{ name: t, bind: "127.0.0.1:0", pool: p, limits: { max_connections_scope: everywhere } }]',
      'listeners[0].limits.max_connections_scope: expected one of "local", "cluster"',
    ],
    [
      'listeners: [{ name: t, protocol: udp, bind: "127.0.0.1:0", pool: p, limits: { max_connections_scope: cluster } }]',
      'listeners[0].limits.max_connections_scope: only for tcp listeners (udp.max_flows caps the flows of a udp listener)',
    ],
    [
      'listeners: [{ name: t, bind: "127.0.0.1:0", pool: p, limits: { scope: cluster } }]',
      'listeners[0].limits.scope: unknown key',
    ],
  ])('refuses a bad scope with its key path (%#)', (listeners, expected) => {
    const text = `${listeners}\npools: [{ name: p, backends: [{ address: "127.0.0.1:1" }], health: { active: { type: none } } }]`;
    let got: string[] = [];
    try {
      parseConfigText(text);
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      got = err.problems.map((p) => `${p.path}: ${p.message}`);
    }
    expect(got).toContain(expected);
  });

  it('warns where the cluster scope means less than it says', () => {
    const text = (store: string, max: number): string => `state: { store: ${store} }
listeners: [{ name: t, bind: "127.0.0.1:0", pool: p, limits: { max_connections_scope: cluster } }]
pools: [{ name: p, backends: [{ address: "127.0.0.1:1" }], max_connections_per_backend: ${max}, max_connections_per_backend_scope: cluster }]`;
    expect(configWarnings(parseConfigText(text('memory', 5))).map((w) => w.path)).toEqual([
      'listeners[0].limits.max_connections_scope',
      'pools[0].max_connections_per_backend_scope',
    ]);
    expect(configWarnings(parseConfigText(text('redis', 0)))).toEqual([
      {
        path: 'pools[0].max_connections_per_backend_scope',
        message: 'cluster has no effect: max_connections_per_backend is 0 (no limit)',
      },
    ]);
    expect(configWarnings(parseConfigText(text('redis', 5)))).toEqual([]);
  });
});
