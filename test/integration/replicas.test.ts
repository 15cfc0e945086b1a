import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import type net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { RedisStore } from '../../src/state/redis.js';
import { silentLogger } from '../../src/telemetry/logger.js';
import type { TestServer } from '../support/net.js';
import { closedPort, echoServer, exchange, holdOpen, startServer, waitFor } from '../support/net.js';
import { runCli, SLUICE, spawnSluice } from '../support/process.js';
import type { SluiceProcess } from '../support/process.js';
import type { RedisCluster, RedisServer } from '../support/redis-server.js';
import { startRedis, startRedisCluster, stopAllRedis } from '../support/redis-server.js';
import { startRuntime } from '../support/runtime.js';
import type { TestRuntime } from '../support/runtime.js';
import { testScope } from '../support/scope.js';

/**
 * Several sluice replicas on distinct ports sharing one redis-server (started here on a free
 * port): counts, election, drains and Redis faults as seen from outside, through the admin API,
 * /metrics and the backends themselves.
 */

const HEARTBEAT = 200;
const scope = testScope();
let redis: RedisServer;

beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await stopAllRedis();
});

interface PoolSpec {
  readonly name: string;
  readonly backends: readonly string[];
  readonly extra?: string;
}

function yamlFor(
  target: string | RedisCluster,
  prefix: string,
  replica: string,
  pools: readonly PoolSpec[],
  health = '{ active: { type: none } }',
): string {
  const poolText = pools
    .map(
      (p) => `  - name: ${p.name}
    algorithm: least-connections
    backends: [${p.backends.map((b) => `{ address: "${b}" }`).join(', ')}]
    health: ${health}
${p.extra ?? ''}`,
    )
    .join('\n');
  return `admin: { listen: "127.0.0.1:0" }
log: { level: info, access_log: false }
state:
  store: redis
  redis: { ${redisTarget(target)}, key_prefix: "${prefix}", command_timeout: 300ms }
  replica_id: ${replica}
  heartbeat: ${HEARTBEAT}ms
listeners:
${pools.map((p) => `  - { name: ${p.name}, protocol: tcp, bind: "127.0.0.1:0", pool: ${p.name} }`).join('\n')}
pools:
${poolText}
`;
}

/**
 * One echo exchange after another, through the replicas and pools in turn, until stop(): how
 * many came back right, and what went wrong with the others.
 */
function echoTraffic(
  replicas: readonly TestRuntime[],
  pools: readonly string[],
): { stop(): Promise<{ ok: number; failures: string[] }> } {
  let running = true;
  let ok = 0;
  const failures: string[] = [];
  const loop = (async () => {
    for (let i = 0; running; i++) {
      const rt = replicas[i % replicas.length]!;
      try {
        const reply = await exchange(rt.port(pools[i % pools.length]!), `ping ${i}`);
        if (reply === `ping ${i}`) ok++;
        else failures.push(`bad reply ${reply}`);
      } catch (err) {
        failures.push(String(err));
      }
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      return { ok, failures };
    },
  };
}

/**
 * Two replicas, a and b, on `cluster`, with six pools of one echo backend each (spread over the
 * primaries), and echo traffic through both already running.
 */
async function clusterFleet(cluster: RedisCluster): Promise<{
  a: TestRuntime;
  b: TestRuntime;
  pfx: string;
  traffic: ReturnType<typeof echoTraffic>;
  /** Opens `n` more sessions through a in every pool, held until the end of the test. */
  openEach: (n: number) => Promise<void>;
  /** Waits until b counts `n` of a's sessions in every pool. */
  countedBy: (n: number) => Promise<void>;
}> {
  const echo = await scope.server(echoServer());
  const pfx = prefix();
  const names = ['app', 'api', 'web', 'dns', 'db', 'mq'];
  const pools = names.map((name) => ({ name, backends: [echo.address] }));
  const [a, b] = (await Promise.all(['a', 'b'].map((id) => replica(yamlFor(cluster, pfx, id, pools))))) as [
    TestRuntime,
    TestRuntime,
  ];
  return {
    a,
    b,
    pfx,
    traffic: echoTraffic([a, b], names),
    openEach: async (n) => {
      for (const name of names) await openSessions(a.port(name), n);
    },
    countedBy: async (n) => {
      for (const name of names)
        await waitFor(
          async () => (await backendOf(b.adminUrl, name, echo.address))?.connections.cluster === n,
          10_000,
          `b counts ${n} of a's sessions in ${name}`,
        );
    },
  };
}

/** A redis-server's URL, or a Cluster's nodes. */
function redisTarget(target: string | RedisCluster): string {
  if (typeof target === 'string') return `url: "${target}"`;
  return `nodes: [${target.nodes.map((n) => `"127.0.0.1:${n.port}"`).join(', ')}]`;
}

/** An in-process replica on its own RedisStore. */
async function replica(yaml: string): Promise<TestRuntime> {
  const cfg = parseConfigText(yaml);
  const store = new RedisStore({ config: cfg.state.redis, logger: silentLogger() });
  const rt = await startRuntime(yaml, { store });
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> => (stopped ??= rt.stop());
  scope.defer(stop);
  return { ...rt, stop };
}

/** A forked `sluice run` (a real process, so that it can be SIGKILLed). */
async function forked(yaml: string): Promise<SluiceProcess> {
  const p = await spawnSluice(yaml);
  scope.defer(async () => {
    p.kill('SIGKILL');
    await p.exited;
  });
  return p;
}

/** A backend that accepts and holds connections open (they stay counted). */
function holdServer(): Promise<TestServer> {
  return scope.server(startServer(() => undefined));
}

interface BackendView {
  address: string;
  state: string;
  connections: { local: number; cluster: number };
}

async function backendsOf(adminUrl: string, pool: string): Promise<BackendView[]> {
  const body = (await (await fetch(`${adminUrl}/api/v1/pools`)).json()) as {
    pools: { name: string; backends: BackendView[] }[];
  };
  return body.pools.find((p) => p.name === pool)?.backends ?? [];
}

async function backendOf(adminUrl: string, pool: string, address: string): Promise<BackendView | undefined> {
  return (await backendsOf(adminUrl, pool)).find((b) => b.address === address);
}

function openSessions(port: number, n: number): Promise<net.Socket[]> {
  return holdOpen(port, n, (fn) => scope.defer(fn));
}

const prefix = (): string => `r-${randomUUID().slice(0, 8)}`;

describe('replicas sharing Redis: connection counts', () => {
  it('every replica sees the sessions open on the others (API and metric)', async () => {
    const x = await holdServer();
    const pfx = prefix();
    const pools = [{ name: 'app', backends: [x.address] }];
    const [a, b, c] = await Promise.all(
      ['a', 'b', 'c'].map((id) => replica(yamlFor(redis.url, pfx, id, pools))),
    );
    await openSessions(a!.port('app'), 3);
    await openSessions(b!.port('app'), 2);
    for (const rt of [a!, b!, c!]) {
      await waitFor(
        async () => (await backendOf(rt.adminUrl, 'app', x.address))?.connections.cluster === 5,
        3000,
        'cluster count 5',
      );
    }
    expect((await backendOf(c!.adminUrl, 'app', x.address))?.connections.local).toBe(0);
    const metric = await c!.metric('sluice_backend_connections', {
      pool: 'app',
      backend: x.address,
      scope: 'cluster',
    });
    expect(metric).toBe(5);
    expect(await c!.metric('sluice_state_sync_lag_seconds')).toBeLessThan(1);
  });

  it('least-connections avoids a backend loaded through another replica', async () => {
    const [x, y] = [await holdServer(), await holdServer()];
    const pfx = prefix();
    // Replica a knows only x, so every session through it lands there.
    const a = await replica(yamlFor(redis.url, pfx, 'a', [{ name: 'app', backends: [x.address] }]));
    const b = await replica(
      yamlFor(redis.url, pfx, 'b', [{ name: 'app', backends: [x.address, y.address] }]),
    );
    await openSessions(a.port('app'), 6);
    await waitFor(
      async () => (await backendOf(b.adminUrl, 'app', x.address))?.connections.cluster === 6,
      3000,
      'b sees 6 on x',
    );
    const before = { x: x.accepted, y: y.accepted };
    await openSessions(b.port('app'), 4);
    await waitFor(() => y.accepted - before.y === 4, 3000, 'four sessions on y');
    expect(x.accepted - before.x).toBe(0);
  });

  it("a SIGKILLed replica's counts expire within 3 heartbeats", async () => {
    const x = await holdServer();
    const pfx = prefix();
    const pools = [{ name: 'app', backends: [x.address] }];
    const a = await replica(yamlFor(redis.url, pfx, 'a', pools));
    const k = await forked(yamlFor(redis.url, pfx, 'k', pools));
    await openSessions(k.ports.get('app') ?? 0, 5);
    await waitFor(
      async () => (await backendOf(a.adminUrl, 'app', x.address))?.connections.cluster === 5,
      3000,
      'a sees 5',
    );
    const killedAt = performance.now();
    k.kill('SIGKILL');
    await k.exited;
    // TTL is 3 heartbeats from k's last publish; a reads once per heartbeat; plus slack for the poll.
    await waitFor(
      async () => (await backendOf(a.adminUrl, 'app', x.address))?.connections.cluster === 0,
      4 * HEARTBEAT + 500,
      'counts of the killed replica gone',
    );
    expect(performance.now() - killedAt).toBeLessThan(4 * HEARTBEAT + 500);
  });
});

describe('replicas sharing Redis: health and admin', () => {
  it('one prober per backend: probe load does not grow with the number of replicas', async () => {
    const x = await holdServer();
    const pfx = prefix();
    const interval = 100;
    const health = `{ active: { type: tcp, interval: ${interval}ms, timeout: 50ms, jitter: 0 } }`;
    const pools = [{ name: 'app', backends: [x.address] }];
    const rts = await Promise.all(
      ['a', 'b', 'c'].map((id) => replica(yamlFor(redis.url, pfx, id, pools, health))),
    );
    const probers = async (): Promise<number> => {
      let n = 0;
      for (const rt of rts) n += await rt.metric('sluice_health_prober', { pool: 'app', backend: x.address });
      return n;
    };
    await waitFor(async () => (await probers()) === 1, 3000, 'one elected prober');
    const start = x.accepted;
    const window = 2000;
    await new Promise((r) => setTimeout(r, window));
    const probes = x.accepted - start;
    // One prober: about window / interval probes (each waits for the previous answer); three would triple it.
    expect(probes).toBeGreaterThan(window / interval / 2);
    expect(probes).toBeLessThan((1.5 * window) / interval);
    expect(await probers()).toBe(1);

    // The same three replicas without a shared store: each probes for itself.
    const y = await holdServer();
    const alone = [{ name: 'app', backends: [y.address] }];
    await Promise.all(
      ['d', 'e', 'f'].map((id) =>
        scope.lb(yamlFor(redis.url, pfx, id, alone, health).replace(/ {2}store: redis\n/, '')),
      ),
    );
    await new Promise((r) => setTimeout(r, interval));
    const startAlone = y.accepted;
    await new Promise((r) => setTimeout(r, window));
    const probesAlone = y.accepted - startAlone;
    expect(probes).toBeLessThan(probesAlone / 2);
    console.info(
      `probes in ${window} ms at ${interval} ms, 3 replicas: elected ${probes}, each for itself ${probesAlone}`,
    );
  });

  it("followers take the prober's verdict; a new prober is elected when it stops", async () => {
    const x = await holdServer();
    const pfx = prefix();
    const health = '{ active: { type: tcp, interval: 100ms, timeout: 50ms, jitter: 0, fall: 1, rise: 1 } }';
    const pools = [{ name: 'app', backends: [x.address] }];
    const rts = await Promise.all(
      ['a', 'b'].map((id) => replica(yamlFor(redis.url, pfx, id, pools, health))),
    );
    const isProber = async (rt: TestRuntime): Promise<boolean> =>
      (await rt.metric('sluice_health_prober', { pool: 'app', backend: x.address })) === 1;
    await waitFor(async () => (await isProber(rts[0]!)) !== (await isProber(rts[1]!)), 3000, 'one prober');
    const prober = (await isProber(rts[0]!)) ? rts[0]! : rts[1]!;
    const follower = prober === rts[0] ? rts[1]! : rts[0]!;
    await x.close(); // the backend dies: only the prober notices, the follower follows
    await waitFor(
      async () => (await backendOf(follower.adminUrl, 'app', x.address))?.state === 'down',
      3000,
      'down',
    );
    await prober.stop(); // releases its lease: the follower takes over
    await waitFor(() => isProber(follower), 3000, 'new prober');
  });

  it('a drain through one replica drains the backend on all; enable undoes it', async () => {
    const x = await holdServer();
    const pfx = prefix();
    const pools = [{ name: 'app', backends: [x.address] }];
    const [a, b, c] = await Promise.all(
      ['a', 'b', 'c'].map((id) => replica(yamlFor(redis.url, pfx, id, pools))),
    );
    const post = async (rt: TestRuntime, verb: string): Promise<number> =>
      (
        await fetch(`${rt.adminUrl}/api/v1/pools/app/backends/${encodeURIComponent(x.address)}/${verb}`, {
          method: 'POST',
        })
      ).status;
    expect(await post(a!, 'drain')).toBe(200);
    for (const rt of [b!, c!])
      await waitFor(
        async () => (await backendOf(rt.adminUrl, 'app', x.address))?.state === 'draining',
        3000,
        'drain',
      );
    expect(await post(c!, 'enable')).toBe(200);
    for (const rt of [a!, b!])
      await waitFor(async () => (await backendOf(rt.adminUrl, 'app', x.address))?.state === 'up', 3000, 'up');
  });
});

describe('replicas sharing a Redis Cluster, pools spread over its primaries', () => {
  it('share counts and drains across pools that live on different primaries', async () => {
    const cluster = await startRedisCluster(3);
    const pfx = prefix();
    const names = ['app', 'api', 'web', 'dns', 'db', 'mq'];
    const servers = await Promise.all(names.map(() => holdServer()));
    const pools = names.map((name, i) => ({ name, backends: [servers[i]!.address] }));
    const [a, b] = await Promise.all(['a', 'b'].map((id) => replica(yamlFor(cluster, pfx, id, pools))));
    for (const [i, name] of names.entries()) await openSessions(a!.port(name), i + 1);
    for (const [i, name] of names.entries())
      await waitFor(
        async () => (await backendOf(b!.adminUrl, name, servers[i]!.address))?.connections.cluster === i + 1,
        3000,
        `cluster count ${i + 1} in ${name}`,
      );
    // The pools' keys are on more than one primary: the fleet's state is spread.
    const perPrimary = await cluster.keys(`{${pfx}[}:]*`);
    expect(perPrimary.filter((n) => n > 0).length).toBeGreaterThan(1);
    // A drain through b, of a backend in each pool, reaches a.
    for (const [i, name] of names.entries()) {
      const address = encodeURIComponent(servers[i]!.address);
      const res = await fetch(`${b!.adminUrl}/api/v1/pools/${name}/backends/${address}/drain`, {
        method: 'POST',
      });
      expect(res.status).toBe(200);
    }
    for (const [i, name] of names.entries())
      await waitFor(
        async () => (await backendOf(a!.adminUrl, name, servers[i]!.address))?.state === 'draining',
        3000,
        `drain in ${name}`,
      );
    expect(await a!.metric('sluice_state_store_up')).toBe(1);
  });
});

/**
 * The primary holding most of the fleet's keys (the prefix is random, so which primaries its
 * pools' slots land on changes from run to run; with six pools, none on a given primary about
 * one run in eleven).
 */
async function busiestPrimary(cluster: RedisCluster, pfx: string): Promise<number> {
  const counts = await cluster.keys(`{${pfx}[}:]*`);
  const most = Math.max(...counts);
  expect(most).toBeGreaterThan(0);
  return counts.indexOf(most);
}

describe('replicas sharing a Redis Cluster: a primary stalls', () => {
  it('serves every client while one primary does not answer; shares again once it does', async () => {
    const cluster = await startRedisCluster(3);
    const { a, b, pfx, traffic, openEach, countedBy } = await clusterFleet(cluster);
    // A session held open through a in every pool, counted by b: the pools' keys are in place.
    await openEach(1);
    await countedBy(1);
    const stalled = cluster.nodes[await busiestPrimary(cluster, pfx)]!;
    scope.defer(() => Promise.resolve(stalled.resume())); // never leave it stopped
    stalled.pause();
    for (const rt of [a, b])
      await waitFor(
        async () => (await rt.metric('sluice_state_sync_failures_total')) > 0,
        5000,
        'sync fails',
      );
    // Down, and it stays down while the primary stalls (the others' replies do not flip it up).
    await waitFor(async () => (await a.metric('sluice_state_store_up')) === 0, 5000, 'store down');
    const seen = new Set<number>();
    for (let t = 0; t < 4 * HEARTBEAT; t += 50) {
      seen.add(await a.metric('sluice_state_store_up'));
      await new Promise((r) => setTimeout(r, 50));
    }
    expect([...seen]).toEqual([0]);
    stalled.resume();
    // Shared again: sessions held open through a, in every pool, are counted by b.
    await waitFor(async () => (await a.metric('sluice_state_store_up')) === 1, 5000, 'store up');
    await openEach(1);
    await countedBy(2);
    const { ok, failures } = await traffic.stop();
    expect(failures).toEqual([]);
    expect(ok).toBeGreaterThan(20);
  });
});

describe('replicas sharing a Redis Cluster: a primary dies and its replica takes over', () => {
  it('serves every client through the failover; counts are shared again on the new primary', async () => {
    const cluster = await startRedisCluster(3, { replicas: true, nodeTimeoutMs: 1000 });
    const { a, b, pfx, traffic, openEach, countedBy } = await clusterFleet(cluster);
    // A session held open through a in every pool, counted by b: the pools' keys are in place,
    // some of them on the primary about to die.
    await openEach(1);
    await countedBy(1);
    const victim = await busiestPrimary(cluster, pfx);
    const killedAt = Date.now();
    await cluster.nodes[victim]!.kill();
    await waitFor(
      async () => (await cluster.replicas[victim]!.command('ROLE'))?.includes('master') ?? false,
      15_000,
      'the replica promoted',
    );
    const promotedAt = Date.now();
    // Shared again on the new primary: one more session through a in every pool, counted by b.
    await openEach(1);
    await countedBy(2);
    const sharedAt = Date.now();
    for (const rt of [a, b])
      await waitFor(async () => (await rt.metric('sluice_state_store_up')) === 1, 5000, 'store up');
    const { ok, failures } = await traffic.stop();
    console.info(
      `redis cluster failover ${promotedAt - killedAt} ms; counts shared again ${sharedAt - promotedAt} ms after the promotion`,
    );
    expect(failures).toEqual([]);
    expect(ok).toBeGreaterThan(20);
  });
});

describe('replicas sharing Redis: Redis killed and restarted', () => {
  it('serves every client connection while Redis dies and comes back empty; counts rebuild', async () => {
    const own = await startRedis(); // its own server: this test kills it
    const echo = await scope.server(echoServer());
    const pfx = prefix();
    const pools = [{ name: 'app', backends: [echo.address] }];
    const a = await replica(yamlFor(own.url, pfx, 'a', pools));
    const b = await replica(yamlFor(own.url, pfx, 'b', pools));
    await openSessions(a.port('app'), 2); // long sessions, to see the counts rebuilt
    await waitFor(
      async () => (await backendOf(b.adminUrl, 'app', echo.address))?.connections.cluster === 2,
      3000,
      'b sees 2',
    );
    const traffic = echoTraffic([a], ['app']);
    await new Promise((r) => setTimeout(r, 300));
    await own.kill();
    await waitFor(async () => (await a.metric('sluice_state_store_up')) === 0, 3000, 'store down');
    await new Promise((r) => setTimeout(r, 4 * HEARTBEAT)); // long enough to go stale
    expect((await backendOf(b.adminUrl, 'app', echo.address))?.connections.cluster).toBe(0);
    await own.launch();
    await waitFor(async () => (await a.metric('sluice_state_store_up')) === 1, 5000, 'store up');
    await waitFor(
      async () => (await backendOf(b.adminUrl, 'app', echo.address))?.connections.cluster === 2,
      3000,
      'counts rebuilt',
    );
    const { ok, failures } = await traffic.stop();
    expect(failures).toEqual([]);
    expect(ok).toBeGreaterThan(20);
    expect(await a.metric('sluice_state_sync_failures_total')).toBeGreaterThan(0);
  });
});

describe('registry discovery and sluice register', () => {
  it('adds a registered backend after its check passes and drains it after deregistration', async () => {
    const echo = await scope.server(echoServer());
    const pfx = prefix();
    const pools = [{ name: 'reg', backends: [], extra: '    discovery: { registry: { ttl: 1s } }' }];
    const health = '{ active: { type: tcp, interval: 100ms, timeout: 50ms, rise: 1 } }';
    const a = await replica(yamlFor(redis.url, pfx, 'a', pools, health));
    const reg = spawn(
      process.execPath,
      [SLUICE, 'register', 'reg', echo.address, '--redis', redis.url, '--ttl', '1s', '--key-prefix', pfx],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const exited = new Promise<number | null>((resolve) => reg.on('exit', (code) => resolve(code)));
    scope.defer(async () => {
      reg.kill('SIGKILL');
      await exited;
    });
    await waitFor(async () => (await backendOf(a.adminUrl, 'reg', echo.address))?.state === 'up', 5000, 'up');
    expect(await exchange(a.port('reg'), 'hello')).toBe('hello');
    reg.kill('SIGTERM');
    expect(await exited).toBe(0);
    await waitFor(async () => (await backendOf(a.adminUrl, 'reg', echo.address)) === undefined, 3000, 'gone');
  });

  it('keeps retrying while Redis is unreachable, and exits 0 on SIGTERM', async () => {
    const port = await closedPort();
    const reg = spawn(
      process.execPath,
      [SLUICE, 'register', 'reg', '127.0.0.1:7001', '--redis', `redis://127.0.0.1:${port}/0`],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    reg.stdout.on('data', (c: Buffer) => (out += c.toString()));
    const exited = new Promise<number | null>((resolve) => reg.on('exit', (code) => resolve(code)));
    await waitFor(() => out.includes('registration failed; retrying'), 5000, 'retry log');
    expect(reg.exitCode).toBeNull();
    reg.kill('SIGTERM');
    expect(await exited).toBe(0);
  });

  it.each([
    [['register', 'reg', 'nope', '--redis', 'redis://127.0.0.1:6399/0'], /address "nope"/],
    [
      ['register', 'reg', '127.0.0.1:80', '--redis', 'redis://127.0.0.1:6399/0', '--ttl', 'soon'],
      /--ttl soon/,
    ],
    [['register', 'reg', '127.0.0.1:80', '--redis', 'http://x'], /--redis: .*scheme/],
    [['register', 'bad pool!', '127.0.0.1:80', '--redis', 'redis://127.0.0.1:6399/0'], /pool "bad pool!"/],
  ])('bad arguments %j exit 64 with one line', async (args, message) => {
    const r = await runCli(args);
    expect(r.code).toBe(64);
    expect(r.stderr).toMatch(message);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
  });
});
