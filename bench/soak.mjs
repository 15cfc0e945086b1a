#!/usr/bin/env node
// Soak: a forked `sluice run` holds N idle sessions while new connections churn through it at a
// fixed rate for a fixed time; RSS and open descriptors of the sluice process are compared
// before and after. Loopback only; bounded (it stops itself, and a watchdog kills it at the
// planned time plus two minutes). Exit 0 when both stay within the tolerance, 1 when not.
//
//   npx node bench/soak.mjs                      # 1,000 connections/s for 5 minutes, 8,000 idle, 2 min warm-up
//   npx node bench/soak.mjs --minutes 0.5 --idle 2000 --rate 500
//
// Each churned connection sends "ping", the backend answers "pong" and closes first, so
// TIME_WAIT lands on listening sockets and no ephemeral port range runs dry.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { clearInterval, setInterval } from 'node:timers';
import { parseArgs } from 'node:util';

const { values: opts } = parseArgs({
  options: {
    minutes: { type: 'string', default: '5' },
    rate: { type: 'string', default: '1000' },
    idle: { type: 'string', default: '8000' },
    tolerance: { type: 'string', default: '5' },
    warmup: { type: 'string', default: '120' },
  },
});
const MINUTES = Number(opts.minutes);
const RATE = Number(opts.rate);
const IDLE = Number(opts.idle);
const TOLERANCE = Number(opts.tolerance);
const WARMUP_S = Number(opts.warmup);
const HOST = '127.0.0.1';
const SLUICE = fileURLToPath(new URL('../bin/sluice', import.meta.url));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const children = [];

function cleanup() {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
}
process.on('exit', cleanup);
process.on('SIGINT', () => process.exit(130));
const watchdog = setTimeout(
  () => {
    console.error('soak: watchdog fired; stopping');
    process.exit(2);
  },
  (MINUTES + WARMUP_S / 60 + 2) * 60_000,
);
watchdog.unref();

// ---- backend: its own process, so descriptors spread over three processes ----

const BACKEND = `
const net = require('node:net');
const s = net.createServer((c) => {
  c.on('error', () => {});
  c.once('data', () => c.end('pong'));
});
s.listen(0, '${HOST}', () => console.log(s.address().port));
`;

async function startBackend() {
  const child = spawn(process.execPath, ['-e', BACKEND], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  const [line] = await once(child.stdout, 'data');
  return Number(String(line).trim());
}

async function startSluice(backendPort) {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-soak-'));
  const cfg = join(dir, 'sluice.yaml');
  writeFileSync(
    cfg,
    `admin: { listen: "${HOST}:0" }
log: { level: info, access_log: false }
listeners:
  - { name: soak, bind: "${HOST}:0", pool: p, limits: { max_connections: 0 }, timeouts: { idle: 1h } }
pools:
  - { name: p, health: { active: { type: none } }, backends: [{ address: "${HOST}:${backendPort}" }] }
`,
  );
  const child = spawn(process.execPath, [SLUICE, 'run', '-c', cfg], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  let buf = '';
  let port = 0;
  for await (const chunk of child.stdout) {
    buf += chunk;
    const m = /"listener":"soak","address":"[^"]*:(\d+)"/.exec(buf);
    if (m) port = Number(m[1]);
    if (port > 0 && buf.includes('sluice ready')) break;
  }
  child.stdout.resume(); // keep draining so logging never blocks it
  const admin = /"admin":"([^"]+)"/.exec(buf)?.[1] ?? '';
  return { pid: child.pid, port, admin };
}

// ---- measurements of the sluice process ----

let peakRssMiB = 0;

/** RSS and descriptors from /proc; V8 heap in use from sluice's own /metrics. */
async function sample({ pid, admin }) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const rssMiB = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024;
  peakRssMiB = Math.max(peakRssMiB, rssMiB);
  const text = await (await fetch(`http://${admin}/metrics`)).text();
  const heap = Number(/^sluice_nodejs_heap_size_used_bytes (\S+)$/m.exec(text)?.[1] ?? NaN);
  const round = (x) => Math.round(x * 10) / 10;
  return {
    rssMiB: round(rssMiB),
    heapUsedMiB: round(heap / 2 ** 20),
    fds: readdirSync(`/proc/${pid}/fd`).length,
  };
}

const pct = (a, b) => ((b - a) / a) * 100;

// ---- load ----

let srcIndex = 0;
/** Source addresses over 127.0.1.0/24–127.0.8.0/24 spread the client-side ports. */
function nextSource() {
  srcIndex = (srcIndex + 1) % 2000;
  return `127.0.${1 + Math.floor(srcIndex / 250)}.${(srcIndex % 250) + 1}`;
}

const churn = { ok: 0, failed: 0, inflight: 0 };

function oneShot(port) {
  churn.inflight++;
  const s = net.connect({ host: HOST, port, localAddress: nextSource() });
  let got = '';
  let done = false;
  const finish = (ok) => {
    if (done) return;
    done = true;
    churn.inflight--;
    if (ok) churn.ok++;
    else churn.failed++;
    s.destroy();
  };
  s.setTimeout(10_000, () => finish(false));
  s.on('connect', () => s.write('ping'));
  s.on('data', (c) => (got += c));
  s.on('end', () => finish(got === 'pong'));
  s.on('error', () => finish(false));
}

/** Opens connections at `rate`/s until `ms` has passed; catches up after a slow tick. */
async function runChurn(port, rate, ms) {
  const start = performance.now();
  let launched = 0;
  await new Promise((resolve) => {
    const timer = setInterval(() => {
      const elapsed = performance.now() - start;
      if (elapsed >= ms) {
        clearInterval(timer);
        resolve();
        return;
      }
      const due = Math.min(Math.floor((elapsed / 1000) * rate) - launched, rate / 10);
      for (let i = 0; i < due; i++) oneShot(port);
      launched += Math.max(0, due);
    }, 5);
  });
  while (churn.inflight > 0) await sleep(50);
  return launched;
}

async function openIdle(port, n) {
  const sockets = [];
  let failed = 0;
  for (let i = 0; i < n; i += 200) {
    await Promise.all(
      Array.from(
        { length: Math.min(200, n - i) },
        () =>
          new Promise((resolve) => {
            const s = net.connect({ host: HOST, port, localAddress: nextSource() });
            s.once('connect', () => {
              sockets.push(s);
              resolve();
            });
            s.once('error', () => {
              failed++;
              resolve();
            });
          }),
      ),
    );
  }
  let closed = 0;
  for (const s of sockets) {
    s.on('error', () => undefined);
    s.once('close', () => closed++);
  }
  return { sockets, failed, closedCount: () => closed };
}

// ---- the run ----

const backendPort = await startBackend();
const sluice = await startSluice(backendPort);
const cold = await sample(sluice);
console.log(`soak: sluice pid ${sluice.pid}; cold ${cold.rssMiB.toFixed(1)} MiB RSS, ${cold.fds} fds`);

const idle = await openIdle(sluice.port, IDLE);
console.log(`soak: ${idle.sockets.length} idle sessions open (${idle.failed} failed)`);
await runChurn(sluice.port, RATE, WARMUP_S * 1000);
await sleep(2000);
const before = await sample(sluice);
console.log(
  `soak: after ${WARMUP_S} s warm-up: ${before.rssMiB.toFixed(1)} MiB RSS, ${before.fds} fds; churning ${RATE}/s for ${MINUTES} min`,
);

const churnStart = { ...churn };
const t0 = performance.now();
const progress = setInterval(async () => {
  const s = await sample(sluice).catch(() => undefined);
  if (s === undefined) return;
  const m = ((performance.now() - t0) / 60_000).toFixed(1);
  console.log(
    `soak: ${m} min: ${s.rssMiB.toFixed(1)} MiB RSS, heap ${s.heapUsedMiB} MiB, ${s.fds} fds, ok ${churn.ok - churnStart.ok}, failed ${churn.failed - churnStart.failed}`,
  );
}, 30_000);
const launched = await runChurn(sluice.port, RATE, MINUTES * 60_000);
clearInterval(progress);
const seconds = (performance.now() - t0) / 1000;
await sleep(2000);
const after = await sample(sluice);

const idleLost = idle.closedCount();
for (const s of idle.sockets) s.destroy();
await sleep(2000);
const released = await sample(sluice);

const result = {
  command: `npx node bench/soak.mjs --minutes ${MINUTES} --rate ${RATE} --idle ${IDLE}`,
  node: process.version,
  churn: {
    launched,
    ok: churn.ok - churnStart.ok,
    failed: churn.failed - churnStart.failed,
    achieved_per_s: Math.round((churn.ok - churnStart.ok) / seconds),
  },
  idle: { held: idle.sockets.length, open_failed: idle.failed, lost_during_soak: idleLost },
  cold,
  before,
  after,
  released,
  peak_rss_mib: Math.round(peakRssMiB * 10) / 10,
  rss_change_pct: Number(pct(before.rssMiB, after.rssMiB).toFixed(2)),
  fds_change_pct: Number(pct(before.fds, after.fds).toFixed(2)),
};
// RSS may fall (V8 and the allocator hand pages back after a major GC); only growth is a leak.
const flat =
  result.rss_change_pct <= TOLERANCE &&
  Math.abs(result.fds_change_pct) <= TOLERANCE &&
  result.churn.failed === 0 &&
  idleLost === 0;
console.log(JSON.stringify(result, null, 2));
console.log(
  `soak: ${flat ? 'flat' : 'NOT flat'} within ${TOLERANCE} % (RSS growth and descriptors, before vs after)`,
);
cleanup();
process.exit(flat ? 0 : 1);
