import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import type { PoolConfig } from '../../src/config/schema.js';
import type { Backend } from '../../src/upstream/backend.js';
import { Pool } from '../../src/upstream/pool.js';
import { ManualClock, seededRandom } from '../../src/util/clock.js';

function poolConfig(extra: string, backends = ['10.0.0.1:80', '10.0.0.2:80']): PoolConfig {
  const cfg = parseConfigText(`listeners: [{ name: l, bind: "127.0.0.1:1", pool: p }]
pools:
  - name: p
    ${extra.includes('health:') ? '' : 'health: { active: { type: none } }'}
    backends: [${backends.map((b) => `{ address: "${b}", weight: 10 }`).join(', ')}]
    ${extra}`);
  const p = cfg.pools[0];
  if (p === undefined) throw new Error('no pool');
  return p;
}

const ctx = { clientIp: '192.0.2.1', clientPort: 1, sni: undefined };

function share(pool: Pool, address: string, picks = 2000): number {
  let n = 0;
  for (let i = 0; i < picks; i++) if (pool.pick(ctx, undefined)?.address === address) n++;
  return n / picks;
}

describe('pool', () => {
  it('ramps a returning backend linearly over slow_start, from 10 % of its weight', () => {
    const clock = new ManualClock(1_000);
    const pool = new Pool(poolConfig('slow_start: 10s'), clock, seededRandom(1));
    const b = pool.get('10.0.0.2:80');
    if (b === undefined) throw new Error('missing');
    // Present at start-up: no ramp.
    expect(b.weight).toBe(10);
    b.checked = true;
    pool.setHealth(b, 'down');
    expect(share(pool, b.address)).toBe(0);
    pool.setHealth(b, 'up');
    expect(b.weight).toBe(1); // 10 % of 10
    expect(share(pool, b.address)).toBeCloseTo(1 / 11, 1);
    clock.advance(5_000);
    expect(b.weight).toBe(5);
    clock.advance(5_000);
    expect(b.weight).toBe(10);
    expect(share(pool, b.address)).toBeCloseTo(0.5, 1);
    // The ramp timer stops once everyone is at full weight.
    expect(clock.pending).toBe(0);
  });

  it('drains a backend removed from the members, closing what is left at the deadline', () => {
    const clock = new ManualClock();
    const pool = new Pool(poolConfig('drain_timeout: 30s'), clock, seededRandom(2));
    const gone = pool.get('10.0.0.2:80');
    if (gone === undefined) throw new Error('missing');
    const closed: string[] = [];
    const holder = { close: (reason: string) => closed.push(reason) };
    pool.acquire(gone, holder);
    pool.update(poolConfig('drain_timeout: 30s', ['10.0.0.1:80']));
    expect(gone.state(clock.now())).toBe('draining');
    for (let i = 0; i < 20; i++) expect(pool.pick(ctx, undefined)?.address).toBe('10.0.0.1:80');
    clock.advance(29_000);
    expect(closed).toEqual([]);
    clock.advance(1_000);
    expect(closed).toEqual(['backend_drained']);
    pool.release(gone, holder);
    expect(pool.get('10.0.0.2:80')).toBeUndefined();
    expect(gone.local).toBe(0);
  });

  it('forgets a removed backend at once when nothing holds it', () => {
    const pool = new Pool(poolConfig(''), new ManualClock(), seededRandom(3));
    pool.update(poolConfig('', ['10.0.0.1:80']));
    expect(pool.get('10.0.0.2:80')).toBeUndefined();
  });

  it('gives a backend added later health "unknown" until a check says otherwise', () => {
    const pool = new Pool(poolConfig(''), new ManualClock(), seededRandom(4));
    pool.setMembers('dns', [{ address: '10.0.0.3:80', host: '10.0.0.3', port: 80, weight: 1 }]);
    const b = pool.get('10.0.0.3:80');
    expect(b?.health).toBe('unknown');
    // Without an active check, health is not consulted and it is ready at once.
    expect(b?.readiness(0)).toBe('ready');
    if (b) b.checked = true;
    expect(b?.readiness(0)).toBe('unhealthy');
  });

  it('keeps a backend that two sources report while one of them still does', () => {
    const pool = new Pool(poolConfig('', ['10.0.0.1:80']), new ManualClock(), seededRandom(5));
    pool.setMembers('dns', [{ address: '10.0.0.1:80', host: '10.0.0.1', port: 80, weight: 10 }]);
    pool.update(poolConfig('', ['10.0.0.9:80']));
    expect(pool.get('10.0.0.1:80')?.removed).toBe(false);
    pool.setMembers('dns', []);
    expect(pool.get('10.0.0.1:80')).toBeUndefined();
  });

  it('stops picking a disabled backend but keeps its sessions, and an enabled one comes back', () => {
    const clock = new ManualClock();
    const pool = new Pool(poolConfig(''), clock, seededRandom(6));
    const b = pool.get('10.0.0.1:80');
    if (b === undefined) throw new Error('missing');
    const closed: string[] = [];
    pool.acquire(b, { close: (r) => closed.push(r) });
    pool.setAdmin(b, 'disabled');
    expect(share(pool, b.address)).toBe(0);
    clock.advance(3_600_000);
    expect(closed).toEqual([]);
    pool.setAdmin(b, 'enabled');
    expect(share(pool, b.address)).toBeGreaterThan(0.3);
  });

  it("least-connections sees every count that moves: local, the sibling workers' and the cluster's", () => {
    const backends = ['10.0.0.1:80', '10.0.0.2:80', '10.0.0.3:80'];
    const pool = new Pool(
      poolConfig('algorithm: least-connections', backends),
      new ManualClock(),
      seededRandom(2),
    );
    const [a, b, c] = backends.map((addr) => pool.get(addr)!) as [Backend, Backend, Backend];
    const next = (): string | undefined => pool.pick(ctx, undefined)?.address;
    // Other replicas hold 5 sessions on a and on b (a state-store sync): c is the least loaded.
    a.remote = 5;
    b.remote = 5;
    expect(next()).toBe(c.address);
    // 7 sessions here on c, 1 on b in a sibling worker: a (5) < b (6) < c (7).
    for (let i = 0; i < 7; i++) pool.acquire(c, { close: () => undefined });
    b.siblings = 1;
    expect(next()).toBe(a.address);
    a.remote = 9;
    expect(next()).toBe(b.address);
    // A rebuild (a taken out) builds a new picker, which hears of every change in turn.
    pool.setAdmin(a, 'disabled');
    expect(a.loadWatcher).toBeUndefined();
    b.remote = 100;
    expect(next()).toBe(c.address);
    b.remote = 0;
    expect(next()).toBe(b.address);
  });
});

describe('pool panic mode (health.panic_threshold)', () => {
  const four = ['10.0.0.1:80', '10.0.0.2:80', '10.0.0.3:80', '10.0.0.4:80'];

  function setup(extra = ''): { pool: Pool; down: (i: number) => void; panics: boolean[] } {
    const pool = new Pool(poolConfig(extra, four), new ManualClock(1_000), seededRandom(3));
    const panics: boolean[] = [];
    pool.observer = { panicChanged: (panic) => panics.push(panic) };
    const down = (i: number): void => {
      const b = pool.get(four[i] ?? '');
      if (b === undefined) throw new Error('missing');
      b.checked = true;
      pool.setHealth(b, 'down');
    };
    return { pool, down, panics };
  }

  it('balances over the ready backends while at least the threshold of them is ready', () => {
    const { pool, down, panics } = setup();
    down(0);
    down(1); // 2 of 4 ready: 50 % is not below 50 %
    expect(pool.panic).toBe(false);
    expect(pool.available).toBe(2);
    expect(share(pool, four[0] ?? '')).toBe(0);
    expect(panics).toEqual([]);
  });

  it('below the threshold, balances over every eligible backend and says so once', () => {
    const { pool, down, panics } = setup();
    down(0);
    down(1);
    down(2); // 1 of 4 ready
    expect(pool.panic).toBe(true);
    expect(pool.readyCount).toBe(1);
    expect(pool.available).toBe(4);
    expect(share(pool, four[0] ?? '', 4000)).toBeCloseTo(0.25, 1);
    down(3); // none ready: still all four, not a refusal
    expect(pool.available).toBe(4);
    expect(panics).toEqual([true]);
    const b = pool.get(four[1] ?? '');
    if (b === undefined) throw new Error('missing');
    pool.setHealth(b, 'up');
    pool.setHealth(pool.get(four[2] ?? '') ?? b, 'up'); // 2 of 4 ready again
    expect(pool.panic).toBe(false);
    expect(pool.available).toBe(2);
    expect(panics).toEqual([true, false]);
  });

  it('never sends sessions to backends an operator took out, nor to ones never ready', () => {
    const { pool, down } = setup();
    const disabled = pool.get(four[3] ?? '');
    if (disabled === undefined) throw new Error('missing');
    pool.setAdmin(disabled, 'disabled');
    down(0);
    down(1); // 1 of the 3 eligible ready
    expect(pool.panic).toBe(true);
    expect(pool.available).toBe(3);
    for (let i = 0; i < 200; i++) expect(pool.pick(ctx, undefined)?.address).not.toBe(disabled.address);
    // A backend discovered later that has not passed a check yet takes nothing, even in panic
    // (as health checks do, the observer marks it checked and down before the pool rebuilds).
    pool.observer.added = (b) => {
      b.checked = true;
      b.health = 'down';
    };
    pool.setMembers('dns', [{ address: '10.0.0.9:80', host: '10.0.0.9', port: 80, weight: 10 }]);
    expect(pool.get('10.0.0.9:80')).toBeDefined();
    expect(pool.available).toBe(3);
  });

  it('is off with panic_threshold: 0: no ready backend means nothing to pick', () => {
    const { pool, down, panics } = setup('health: { active: { type: none }, panic_threshold: 0 }');
    for (let i = 0; i < 4; i++) down(i);
    expect(pool.panic).toBe(false);
    expect(pool.available).toBe(0);
    expect(pool.pick(ctx, undefined)).toBeUndefined();
    expect(panics).toEqual([]);
  });

  it('tells passive health whether another backend is ready', () => {
    const { pool, down } = setup();
    const last = pool.get(four[3] ?? '');
    if (last === undefined) throw new Error('missing');
    expect(pool.leavesReady(last)).toBe(true);
    down(0);
    down(1);
    down(2);
    expect(pool.leavesReady(last)).toBe(false);
  });
});
