// What replicas cost the shared Redis: commands/s, bytes/s in and out, and Redis's own CPU, for
// R replicas × B backends at one heartbeat. Every replica is a full sluice runtime (the same
// StateSync, SharedHealth and RedisStore code as `sluice run`), R of them in this one process
// ("light replicas"), against a redis-server of its own on a free loopback port.
//
// Worst case on purpose: every backend is actively checked (so each replica asks for its probe
// lease every heartbeat) and holds one session on every replica (so every count is published
// and read). The checks go to closed ports on 127.1.0.0/16 and fail at once: a check's result
// changes what the prober writes only when a verdict changes, not the steady heartbeat load.
//
//   npm run build && node bench/redis-load.mjs [--replicas 1,3,10] [--backends 100,1000] [--seconds 10]
//     [--heartbeat 1000] [--settle 12] [--cluster-limits] [--cluster 3] [--pools 12] [--json]
// --cluster-limits: the listener's max_connections and the pool's max_connections_per_backend
// are cluster-scoped, so every replica also claims its grants each heartbeat.
// --cluster N: a Redis Cluster of N primaries (each serving an equal range of slots) instead of
// one redis-server; the figures are the sums over the primaries, and the busiest primary's CPU
// is shown beside. --pools P: the backends split over P pools (with a Cluster, each pool's keys
// hash to a slot of their own, so the pools spread over the primaries).
// --settle: seconds between the replicas' start and the measurement (the first checks' verdicts
// are a burst of writes that is not the steady load). Ten replicas of 10,000 backends do not fit
// in one process here (the checks run out of descriptors).
//
// Prints one table (markdown) and, with --json, the raw figures. Loopback only; stops by itself.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { parseArgs } from 'node:util';
import { parseConfigText } from '../dist/config/load.js';
import { Runtime } from '../dist/lifecycle/runtime.js';
import { createStore } from '../dist/state/create.js';
import { createLogger } from '../dist/telemetry/logger.js';
import { systemClock } from '../dist/util/clock.js';
import { freePort, sleep } from './lib/sys.mjs';

const { values } = parseArgs({
  options: {
    replicas: { type: 'string', default: '1,3,10' },
    backends: { type: 'string', default: '100,1000' },
    seconds: { type: 'string', default: '10' },
    heartbeat: { type: 'string', default: '1000' },
    settle: { type: 'string', default: '12' },
    json: { type: 'boolean', default: false },
    'cluster-limits': { type: 'boolean', default: false },
    cluster: { type: 'string', default: '0' },
    pools: { type: 'string', default: '1' },
  },
});
const REPLICAS = values.replicas.split(',').map(Number);
const BACKENDS = values.backends.split(',').map(Number);
const SECONDS = Number(values.seconds);
const HEARTBEAT = Number(values.heartbeat);
const SETTLE = Number(values.settle);
// With cluster-scoped limits every replica also claims a grant per backend and for the listener
// each heartbeat (docs/replicas.md, "Cluster-wide limits").
const CLUSTER_LIMITS = values['cluster-limits'];
const PRIMARIES = Number(values.cluster);
const POOLS = Math.max(1, Number(values.pools));

/** One command to redis-server through redis-cli; its output. */
function cli(port, ...args) {
  return new Promise((resolve, reject) => {
    const p = spawn('redis-cli', ['-p', String(port), ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.on('error', reject);
    p.on('close', () => resolve(out));
  });
}

async function info(port) {
  const text = await cli(port, 'INFO', 'all');
  const f = Object.fromEntries(
    text
      .split('\n')
      .map((l) => l.trim().split(':'))
      .filter((kv) => kv.length === 2),
  );
  return {
    commands: Number(f.total_commands_processed),
    bytesIn: Number(f.total_net_input_bytes),
    bytesOut: Number(f.total_net_output_bytes),
    cpu: Number(f.used_cpu_sys) + Number(f.used_cpu_user),
    calls: Object.fromEntries(
      Object.entries(f)
        .filter(([k]) => k.startsWith('cmdstat_'))
        .map(([k, v]) => [k.slice(8), Number(/calls=(\d+)/.exec(v)?.[1] ?? 0)]),
    ),
  };
}

/** The figures of every server summed, and the busiest one's CPU. */
async function infoAll(ports) {
  const all = await Promise.all(ports.map(info));
  const calls = {};
  for (const x of all) for (const [k, v] of Object.entries(x.calls)) calls[k] = (calls[k] ?? 0) + v;
  const sum = (f) => all.reduce((a, x) => a + x[f], 0);
  return {
    commands: sum('commands'),
    bytesIn: sum('bytesIn'),
    bytesOut: sum('bytesOut'),
    cpu: sum('cpu'),
    cpus: all.map((x) => x.cpu),
    calls,
  };
}

async function startServer(extra) {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'sluice-redisload-'));
  const proc = spawn(
    'redis-server',
    [
      '--port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--save',
      '',
      '--appendonly',
      'no',
      '--dir',
      dir,
      ...extra,
    ],
    { stdio: 'ignore' },
  );
  for (let i = 0; i < 100; i++) {
    if ((await cli(port, 'PING')).startsWith('PONG')) break;
    await sleep(50);
  }
  return {
    port,
    stop: () => {
      proc.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** One redis-server, or a Cluster of PRIMARIES primaries splitting the slots evenly. */
async function startRedis() {
  if (PRIMARIES === 0) {
    const one = await startServer([]);
    return { ports: [one.port], stop: one.stop };
  }
  const nodes = [];
  for (let i = 0; i < PRIMARIES; i++) {
    // The bus port defaults to port + 10,000, which may be taken: name a free one.
    const bus = await freePort();
    const node = await startServer([
      '--cluster-enabled',
      'yes',
      '--cluster-config-file',
      'nodes.conf',
      '--cluster-port',
      String(bus),
      '--cluster-announce-ip',
      '127.0.0.1',
    ]);
    const from = Math.floor((16384 * i) / PRIMARIES);
    const to = Math.floor((16384 * (i + 1)) / PRIMARIES) - 1;
    await cli(node.port, 'CLUSTER', 'ADDSLOTSRANGE', String(from), String(to));
    nodes.push({ ...node, bus });
  }
  for (const n of nodes.slice(1))
    await cli(nodes[0].port, 'CLUSTER', 'MEET', '127.0.0.1', String(n.port), String(n.bus));
  for (let i = 0; i < 200; i++) {
    const infos = await Promise.all(nodes.map((n) => cli(n.port, 'CLUSTER', 'INFO')));
    if (infos.every((t) => t.includes('cluster_state:ok') && t.includes(`cluster_known_nodes:${PRIMARIES}`)))
      break;
    await sleep(50);
  }
  return { ports: nodes.map((n) => n.port), stop: () => nodes.forEach((n) => n.stop()) };
}

const address = (i) => `127.1.${Math.floor(i / 250)}.${(i % 250) + 1}:9`;

function yaml(ports, prefix, replica, backends) {
  const target =
    PRIMARIES === 0
      ? `url: "redis://127.0.0.1:${ports[0]}/0"`
      : `nodes: [${ports.map((p) => `"127.0.0.1:${p}"`).join(', ')}]`;
  const pool = (p) => {
    const from = Math.floor((backends * p) / POOLS);
    const to = Math.floor((backends * (p + 1)) / POOLS);
    return `  - name: app-${p}
    algorithm: least-connections
    max_connections_per_backend: ${CLUSTER_LIMITS ? 1000 : 0}
    max_connections_per_backend_scope: ${CLUSTER_LIMITS ? 'cluster' : 'local'}
    health:
      active: { type: tcp, interval: 10s, timeout: 1s }
      passive: { consecutive_failures: 0 }
      panic_threshold: 0
    backends: [${Array.from({ length: to - from }, (_, i) => `{ address: "${address(from + i)}" }`).join(', ')}]
`;
  };
  return `admin: { listen: "127.0.0.1:0" }
log: { level: error, access_log: false }
state:
  store: redis
  redis: { ${target}, key_prefix: ${prefix} }
  replica_id: ${replica}
  heartbeat: ${HEARTBEAT}ms
listeners:
  - name: app
    protocol: tcp
    bind: "127.0.0.1:0"
    pool: app-0
    limits: { max_connections: 100000, max_connections_scope: ${CLUSTER_LIMITS ? 'cluster' : 'local'} }
pools:
${Array.from({ length: POOLS }, (_, p) => pool(p)).join('')}`;
}

/** What the replicas logged as errors (the store's failures), by context. */
const errors = new Map();
const errorSink = new Writable({
  write(chunk, _enc, done) {
    for (const line of chunk.toString().split('\n')) {
      if (!line) continue;
      const ctx = JSON.parse(line).context ?? 'other';
      errors.set(ctx, (errors.get(ctx) ?? 0) + 1);
    }
    done();
  },
});

async function replica(ports, prefix, id, backends) {
  const config = parseConfigText(yaml(ports, prefix, id, backends));
  const logger = createLogger('error', errorSink);
  const runtime = new Runtime(config, {
    logger,
    clock: systemClock,
    random: Math.random,
    store: await createStore(config, logger),
    reloadConfig: () => Promise.resolve(config),
  });
  await runtime.start();
  // One session on every backend, as far as the counts go.
  for (const { pool } of runtime.pools.entries()) for (const b of pool.backends()) b.local = 1;
  return runtime;
}

/** Sync rounds that failed (a store call not answered in time), summed over the replicas. */
async function syncFailures(runtimes) {
  let n = 0;
  for (const rt of runtimes) n += (await rt.metrics.stateSyncFailures.get()).values[0]?.value ?? 0;
  return n;
}

const rows = [];
for (const b of BACKENDS) {
  for (const r of REPLICAS) {
    const redis = await startRedis();
    const prefix = `load-${r}-${b}`;
    const runtimes = [];
    try {
      for (let i = 0; i < r; i++) runtimes.push(await replica(redis.ports, prefix, `r${i}`, b));
      // Elections settle and every backend's first check (10 s interval) publishes its verdict.
      await sleep(Math.max(3 * HEARTBEAT, SETTLE * 1000));
      const failuresBefore = await syncFailures(runtimes);
      errors.clear();
      const before = await infoAll(redis.ports);
      await sleep(SECONDS * 1000);
      const after = await infoAll(redis.ports);
      const failures = (await syncFailures(runtimes)) - failuresBefore;
      const s = SECONDS;
      const row = {
        replicas: r,
        backends: b,
        commandsPerS: (after.commands - before.commands) / s,
        kbInPerS: (after.bytesIn - before.bytesIn) / s / 1024,
        kbOutPerS: (after.bytesOut - before.bytesOut) / s / 1024,
        redisCpuPct: ((after.cpu - before.cpu) / s) * 100,
        busiestCpuPct: Math.max(...after.cpus.map((c, i) => ((c - (before.cpus[i] ?? 0)) / s) * 100)),
        failedRounds: failures,
        errors: Object.fromEntries(errors),
        perCommand: Object.fromEntries(
          Object.entries(after.calls)
            .map(([k, v]) => [k, (v - (before.calls[k] ?? 0)) / s])
            .filter(([, v]) => v > 0),
        ),
      };
      rows.push(row);
      console.error(JSON.stringify(row));
    } finally {
      for (const rt of runtimes) {
        for (const l of rt.listeners.values()) await l.close();
        await rt.stop();
      }
      redis.stop();
    }
  }
}

const fmt = (v, d = 0) => v.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d });
console.log(
  `Redis load at heartbeat ${HEARTBEAT} ms${CLUSTER_LIMITS ? ', cluster-scoped limits' : ''}, ${PRIMARIES === 0 ? 'one redis-server' : `a Redis Cluster of ${PRIMARIES} primaries`}, ${POOLS} pool(s), measured over ${SECONDS} s per row (node bench/redis-load.mjs).`,
);
console.log('');
console.log(
  '| replicas | backends | script calls/s | Redis commands/s (with those inside scripts) | KiB/s in | KiB/s out | Redis CPU % | busiest server CPU % | failed sync rounds |',
);
console.log('|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
for (const x of rows) {
  const cells = [
    fmt(x.perCommand.evalsha ?? 0),
    fmt(x.commandsPerS),
    fmt(x.kbInPerS, 1),
    fmt(x.kbOutPerS, 1),
    fmt(x.redisCpuPct, 1),
    fmt(x.busiestCpuPct, 1),
  ];
  // A row whose replicas could not complete their rounds measured an overloaded run, not Redis.
  const shown = x.failedRounds > 0 ? cells.map(() => 'FAILED') : cells;
  console.log(`| ${x.replicas} | ${fmt(x.backends)} | ${shown.join(' | ')} | ${x.failedRounds} |`);
}
if (values.json) console.log(JSON.stringify(rows));
process.exit(0);
