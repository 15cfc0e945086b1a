import { randomUUID } from 'node:crypto';
import net from 'node:net';
import { once } from 'node:events';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { RedisStore, reconnectBackoff } from '../../src/state/redis.js';
import { silentLogger } from '../../src/telemetry/logger.js';
import { startServer, waitFor } from '../support/net.js';
import type { RedisServer } from '../support/redis-server.js';
import { startRedis, stopAllRedis } from '../support/redis-server.js';
import { startRuntime } from '../support/runtime.js';
import type { TestRuntime } from '../support/runtime.js';
import { testScope } from '../support/scope.js';

/**
 * Cluster-wide `max_connections_per_backend` measured from the backend: three sluice replicas in
 * this process, each on its own RedisStore, share a redis-server started here; many long-lived
 * client connections arrive through all three, and the backend counts how many it holds at once.
 * See docs/replicas.md#cluster-wide-limits for the bound these tests hold the code to.
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

function yamlFor(
  url: string,
  prefix: string,
  replica: string,
  backend: string,
  max: number,
  scopeName: string,
  listenerLimits = '{}',
): string {
  return `admin: { listen: "127.0.0.1:0" }
log: { level: info, access_log: false }
relay: stream
state:
  store: redis
  redis: { url: "${url}", key_prefix: "${prefix}", command_timeout: 300ms }
  replica_id: ${replica}
  heartbeat: ${HEARTBEAT}ms
listeners:
  - { name: app, protocol: tcp, bind: "127.0.0.1:0", pool: app, limits: ${listenerLimits} }
pools:
  - name: app
    algorithm: least-connections
    backends: [{ address: "${backend}" }]
    health: { active: { type: none } }
    max_connections_per_backend: ${max}
    max_connections_per_backend_scope: ${scopeName}
    max_queue: 500
    queue_timeout: 60s
`;
}

/** An in-process replica on its own RedisStore. */
async function replica(yaml: string): Promise<TestRuntime> {
  const cfg = parseConfigText(yaml);
  // Reconnecting as `sluice run` does: backoff capped at a heartbeat.
  const store = new RedisStore({
    config: cfg.state.redis,
    logger: silentLogger(),
    backoff: reconnectBackoff(cfg.state.heartbeat),
  });
  const rt = await startRuntime(yaml, { store });
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> => (stopped ??= rt.stop());
  scope.defer(stop);
  return { ...rt, stop };
}

/**
 * A backend that greets every connection and holds it open until the client's FIN comes through,
 * counting the connections it holds now and the most it has held at once (every change is seen:
 * the count moves on its own events).
 */
async function countingBackend(): Promise<{ address: string; open: number; peak: number }> {
  const counts = { open: 0, peak: 0 };
  const srv = await scope.server(
    startServer((s) => {
      counts.open++;
      counts.peak = Math.max(counts.peak, counts.open);
      s.on('close', () => counts.open--);
      s.on('end', () => s.end());
      s.write('hi');
    }),
  );
  return Object.assign(counts, { address: srv.address });
}

/** A client connection; `served` once the backend's greeting came through (it holds a slot). */
interface Client {
  readonly socket: net.Socket;
  served: boolean;
}

/** Opens `n` client connections to `port` and keeps them until the end of the test. */
async function clients(port: number, n: number): Promise<Client[]> {
  const out: Client[] = [];
  for (let i = 0; i < n; i++) {
    const socket = net.connect({ port, host: '127.0.0.1' });
    socket.on('error', () => undefined);
    await once(socket, 'connect');
    const c: Client = { socket, served: false };
    socket.once('data', () => (c.served = true));
    out.push(c);
  }
  scope.defer(() => Promise.resolve(out.forEach((c) => c.socket.destroy())));
  return out;
}

const capOf = (rt: TestRuntime, backend: string): Promise<number> =>
  rt.metric('sluice_limit_cap', { limit: 'backend', name: `app/${backend}` });
const localOf = (rt: TestRuntime, backend: string): Promise<number> =>
  rt.metric('sluice_backend_connections', { pool: 'app', backend, scope: 'local' });
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const prefix = (): string => `cl-${randomUUID().slice(0, 8)}`;

describe('cluster-wide max_connections_per_backend, 3 replicas on one Redis', () => {
  it('the backend never holds more than the limit; without the cluster scope it holds 3 times it', async () => {
    const LIMIT = 30;
    const PER_REPLICA = 60;
    const backend = await countingBackend();
    const pfx = prefix();
    const rts = await Promise.all(
      ['a', 'b', 'c'].map((id) => replica(yamlFor(redis.url, pfx, id, backend.address, LIMIT, 'cluster'))),
    );
    // Every replica has claimed its fair share: a third each.
    await waitFor(
      async () =>
        (await Promise.all(rts.map((rt) => capOf(rt, backend.address)))).every((c) => c === LIMIT / 3),
      5000,
      'caps of 10 each',
    );

    // 180 long-lived connections, 60 through each replica: 30 reach the backend, the rest queue.
    const perReplica = await Promise.all(rts.map((rt) => clients(rt.port('app'), PER_REPLICA)));
    await waitFor(() => backend.open === LIMIT, 5000, 'the backend at the limit');
    await sleep(10 * HEARTBEAT); // ten heartbeats of claims with every replica full
    expect(backend.open).toBe(LIMIT);
    const peakFull = backend.peak;

    // Every client of replica c leaves: a and b take over its share within a few heartbeats.
    const leftAt = performance.now();
    for (const c of perReplica[2] ?? []) c.socket.destroy();
    await waitFor(async () => (await localOf(rts[2]!, backend.address)) === 0, 5000, 'c empty');
    await waitFor(() => backend.open === LIMIT, 10_000, 'a and b at the limit');
    const takeOverMs = performance.now() - leftAt;
    await sleep(5 * HEARTBEAT);
    const locals = await Promise.all(rts.map((rt) => localOf(rt, backend.address)));
    const peakCluster = backend.peak;
    expect(peakCluster).toBeLessThanOrEqual(LIMIT);
    expect(locals[0]! + locals[1]!).toBe(LIMIT);
    expect(locals[2]).toBe(0);

    // The same three replicas' config with the default local scope: each holds its own 30.
    for (const rt of rts) await rt.stop();
    for (const cs of perReplica) for (const c of cs) c.socket.destroy();
    await waitFor(() => backend.open === 0, 5000, 'backend empty');
    backend.peak = 0;
    const local = await Promise.all(
      ['d', 'e', 'f'].map((id) => replica(yamlFor(redis.url, prefix(), id, backend.address, LIMIT, 'local'))),
    );
    await Promise.all(local.map((rt) => clients(rt.port('app'), PER_REPLICA)));
    await waitFor(() => backend.open === 3 * LIMIT, 5000, 'three times the limit');
    await sleep(5 * HEARTBEAT);
    const peakLocal = backend.peak;
    expect(peakLocal).toBe(3 * LIMIT);
    console.info(
      `limit ${LIMIT}, 3 replicas, ${PER_REPLICA} clients each, heartbeat ${HEARTBEAT} ms: backend peak ` +
        `${peakFull} with all full, ${peakCluster} after c's clients left (a and b back at ${LIMIT} ` +
        `in ${Math.round(takeOverMs)} ms); scope local: peak ${peakLocal}`,
    );
  });

  it("caps a listener's sessions across the replicas (limits.max_connections_scope)", async () => {
    const backend = await countingBackend();
    const pfx = prefix();
    const limits = '{ max_connections: 6, max_connections_scope: cluster }';
    const rts = await Promise.all(
      ['a', 'b', 'c'].map((id) => replica(yamlFor(redis.url, pfx, id, backend.address, 0, 'local', limits))),
    );
    const caps = (): Promise<number[]> =>
      Promise.all(rts.map((rt) => rt.metric('sluice_limit_cap', { limit: 'listener', name: 'app' })));
    await waitFor(async () => (await caps()).every((c) => c === 2), 5000, 'caps of 2 each');
    await Promise.all(rts.map((rt) => clients(rt.port('app'), 10)));
    await waitFor(() => backend.open === 6, 5000, 'six sessions');
    await sleep(5 * HEARTBEAT);
    expect(backend.peak).toBe(6);
    const rejected = await Promise.all(
      rts.map((rt) =>
        rt.metric('sluice_listener_rejected_total', { listener: 'app', reason: 'max_connections' }),
      ),
    );
    expect(rejected).toEqual([8, 8, 8]);
  });

  it('falls back to floor(limit / 3) on each replica while Redis is away, logged once each way', async () => {
    const LIMIT = 31;
    const own = await startRedis(); // its own server: this test kills it
    const backend = await countingBackend();
    const pfx = prefix();
    const rts = await Promise.all(
      ['a', 'b', 'c'].map((id) => replica(yamlFor(own.url, pfx, id, backend.address, LIMIT, 'cluster'))),
    );
    await waitFor(
      async () => {
        const caps = await Promise.all(rts.map((rt) => capOf(rt, backend.address)));
        return caps.reduce((a, b) => a + b, 0) === LIMIT && caps.every((c) => c >= 10);
      },
      5000,
      'caps 11, 10, 10',
    );
    const perReplica = await Promise.all(rts.map((rt) => clients(rt.port('app'), 40)));
    await waitFor(() => backend.open === LIMIT, 5000, 'the backend at the limit');

    await own.kill();
    const fellBack = 'cluster limits on local shares (limit / live replicas) until the state store answers';
    for (const rt of rts)
      await waitFor(async () => (await rt.metric('sluice_limit_fallback')) === 1, 5000, 'fallback');
    expect(await Promise.all(rts.map((rt) => capOf(rt, backend.address)))).toEqual([10, 10, 10]);

    // Five served clients leave each replica: the queued ones take their slots up to 10 each.
    for (const cs of perReplica) for (const c of cs.filter((x) => x.served).slice(0, 5)) c.socket.destroy();
    await waitFor(
      async () => (await Promise.all(rts.map((rt) => localOf(rt, backend.address)))).every((n) => n === 10),
      5000,
      '10 on each replica',
    );
    await sleep(5 * HEARTBEAT);
    expect(await Promise.all(rts.map((rt) => localOf(rt, backend.address)))).toEqual([10, 10, 10]);
    expect(backend.open).toBe(30);
    expect(rts.map((rt) => rt.logs.find(fellBack).length)).toEqual([1, 1, 1]);

    await own.launch();
    for (const rt of rts)
      await waitFor(async () => (await rt.metric('sluice_limit_fallback')) === 0, 5000, 'shared again');
    // After settling for 3 heartbeats the free connection is granted again.
    await waitFor(() => backend.open === LIMIT, 5000, 'the backend at the limit again');
    await sleep(5 * HEARTBEAT);
    expect(rts.map((rt) => rt.logs.find('cluster limits shared again').length)).toEqual([1, 1, 1]);
    expect(rts.map((rt) => rt.logs.find(fellBack).length)).toEqual([1, 1, 1]);
    expect(backend.peak).toBe(LIMIT);
  });
});
