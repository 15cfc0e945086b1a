// The proxies under test and the servers behind them, each started from a generated config in
// the run's temp dir, on its own loopback port, and tracked by PID.
//
// A "route" is what every proxy is asked to forward: { name, proto: 'tcp'|'udp', upstreams:
// [port | 'host:port'], algorithm? }. Each start function returns a peer:
// { name, pid, port: { [route]: listenPort }, stop() }.
import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { bound, pin } from './pin.mjs';
import { ROOT, STREAM_MODULE, sluiceNode } from './setup.mjs';
import { HOST, alive, freePort, own, pidFromFile, run, sleep, stopPid, tree, waitTcp } from './sys.mjs';

const addr = (u) => (typeof u === 'number' ? `${HOST}:${u}` : u);

async function listenPorts(routes) {
  const port = {};
  for (const r of routes) port[r.name] = await freePort();
  return port;
}

function peer(name, pid, port, extra = {}) {
  return { name, pid, port, ...extra, stop: () => stopPid(pid) };
}

/** No proxy: clients talk to the (single) upstream itself. */
export function direct(routes) {
  const port = {};
  for (const r of routes) port[r.name] = Number(addr(r.upstreams[0]).split(':')[1]);
  return { name: 'direct', pid: undefined, port, stop: async () => undefined };
}

// ---- HAProxy -----------------------------------------------------------------------------------

export async function startHaproxy(dir, routes, { threads = 1, name = 'haproxy' } = {}) {
  const port = await listenPorts(routes);
  const lines = [
    'global',
    `  nbthread ${threads}`,
    '  maxconn 6000',
    'defaults',
    '  mode tcp',
    '  maxconn 6000',
    '  timeout connect 5s',
    '  timeout client 120s',
    '  timeout server 120s',
    // Splicing is off by default; say so, so that a packaged default can't turn it on.
    '  no option splice-auto',
    '  no option splice-request',
    '  no option splice-response',
  ];
  for (const r of routes) {
    if (r.proto === 'udp') continue; // HAProxy community edition has no UDP proxying
    lines.push(
      `listen ${r.name}`,
      `  bind ${HOST}:${port[r.name]}`,
      `  balance ${r.algorithm === 'least-connections' ? 'leastconn' : 'roundrobin'}`,
    );
    r.upstreams.forEach((u, i) => lines.push(`  server s${i} ${addr(u)}`));
  }
  const cfg = join(dir, `${name}.cfg`);
  const pidfile = join(dir, `${name}.pid`);
  writeFileSync(cfg, `${lines.join('\n')}\n`);
  const r = await run('haproxy', ['-D', '-p', pidfile, '-f', cfg], { limitS: 15 });
  if (r.code !== 0) throw new Error(`haproxy failed to start (exit ${r.code}): ${r.stderr.trim()}`);
  const pid = await pidFromFile(pidfile);
  for (const rt of routes) if (rt.proto !== 'udp') await waitTcp(port[rt.name]);
  pin(pid, 'proxy');
  bound(pid, threads);
  return peer(name, pid, port);
}

// ---- nginx -------------------------------------------------------------------------------------

async function startNginx(dir, name, body, { workers = 1, module = false } = {}) {
  const prefix = join(dir, name);
  const pidfile = join(dir, `${name}.pid`);
  const cfg = join(dir, `${name}.conf`);
  const head = [
    module ? `load_module ${STREAM_MODULE};` : '',
    `worker_processes ${workers};`,
    'worker_rlimit_nofile 20000;',
    'daemon on;',
    `pid ${pidfile};`,
    `error_log ${join(dir, `${name}-error.log`)} warn;`,
    'events { worker_connections 16000; }',
  ];
  writeFileSync(cfg, `${head.join('\n')}\n${body}\n`);
  await run('mkdir', ['-p', prefix]);
  const r = await run('nginx', ['-p', prefix, '-c', cfg, '-e', join(dir, `${name}-error.log`)], {
    limitS: 20,
  });
  if (r.code !== 0) throw new Error(`nginx (${name}) failed to start (exit ${r.code}): ${r.stderr.trim()}`);
  return pidFromFile(pidfile);
}

export async function startNginxStream(dir, routes, { workers = 1, name = 'nginx' } = {}) {
  const port = await listenPorts(routes);
  const blocks = routes.map((r) => {
    const servers = r.upstreams.map((u) => `server ${addr(u)};`).join(' ');
    const lb = r.algorithm === 'least-connections' ? 'least_conn;' : '';
    const udp = r.proto === 'udp' ? ' udp' : '';
    return `  upstream u_${r.name} { ${lb} ${servers} }
  server { listen ${HOST}:${port[r.name]}${udp}; proxy_pass u_${r.name}; proxy_timeout 120s; }`;
  });
  const pid = await startNginx(dir, name, `stream {\n${blocks.join('\n')}\n}`, { workers, module: true });
  for (const r of routes) if (r.proto !== 'udp') await waitTcp(port[r.name]);
  pin(pid, 'proxy');
  bound(pid, workers);
  return peer(name, pid, port);
}

/**
 * The HTTP backend for the connection-rate and request-rate scenarios: `close` answers with
 * keep-alive off (one connection per request), `keepalive` keeps connections open. `extra`
 * lists more host:port addresses served like `close` (many backends on 127.0.0.0/8).
 */
export async function startHttpBackend(dir, { extra = [], name = 'http-backend' } = {}) {
  const close = await freePort();
  const keepalive = await freePort();
  const extraListens = extra.map((a) => `listen ${a};`).join('\n    ');
  const body = `http {
  access_log off;
  server {
    listen ${HOST}:${close};
    ${extraListens}
    keepalive_timeout 0;
    location / { return 200 "ok"; }
  }
  server {
    listen ${HOST}:${keepalive};
    keepalive_timeout 120s;
    keepalive_requests 100000000;
    location / { return 200 "ok"; }
  }
}`;
  const pid = await startNginx(dir, name, body);
  await waitTcp(close);
  await waitTcp(keepalive);
  pin(pid, 'load');
  return peer(name, pid, { close, keepalive });
}

// ---- iperf3 ------------------------------------------------------------------------------------

export async function startIperfServer(dir) {
  const port = await freePort();
  const pidfile = join(dir, `iperf3-${port}.pid`);
  const r = await run('iperf3', [
    '-s',
    '-B',
    HOST,
    '-p',
    String(port),
    '-D',
    '-I',
    pidfile,
    '--logfile',
    join(dir, 'iperf3.log'),
  ]);
  if (r.code !== 0) throw new Error(`iperf3 server failed (exit ${r.code}): ${r.stderr.trim()}`);
  const pid = await pidFromFile(pidfile);
  await waitTcp(port);
  pin(pid, 'load');
  return peer('iperf3-server', pid, { iperf: port });
}

// ---- the minimal Node UDP forwarder -------------------------------------------------------------

/**
 * bench/helpers/udp-forward.mjs in front of the first upstream of each UDP route: the plain Node
 * dgram forwarder that sluice's `relay: stream` is measured against.
 */
export async function startUdpForwarder(routes, { name = 'node-dgram' } = {}) {
  const port = {};
  const children = [];
  for (const r of routes.filter((x) => x.proto === 'udp')) {
    port[r.name] = await freePort();
    const upstream = Number(addr(r.upstreams[0]).split(':')[1]);
    const child = helper('udp-forward.mjs', [port[r.name], upstream]);
    await child.next(10000);
    children.push(child);
  }
  const first = children[0];
  return {
    name,
    pid: first?.pid,
    port,
    stop: async () => {
      for (const c of children) await c.stop();
    },
  };
}

// ---- Node helpers (sinks, connection holders, blasters) ----------------------------------------

/** Spawns bench/helpers/<script> under the Node that runs sluice; stdout is line-delimited JSON. */
export function helper(script, args) {
  const child = spawn(sluiceNode(), [join(ROOT, 'bench/helpers', script), ...args.map(String)], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  own(child.pid);
  const waiting = [];
  let buf = '';
  child.stdout.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      waiting.shift()?.resolve(JSON.parse(line));
    }
  });
  child.on('exit', (code) => {
    for (const w of waiting.splice(0)) w.reject(new Error(`${script} exited (code ${code})`));
  });
  return {
    pid: child.pid,
    /** The next JSON line the helper prints (rejects after `ms`). */
    next(ms = 60000) {
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`${script}: no answer within ${ms} ms`)), ms);
        waiting.push({
          resolve: (v) => (clearTimeout(t), resolve(v)),
          reject: (e) => (clearTimeout(t), reject(e)),
        });
      });
    },
    send(line) {
      child.stdin.write(`${line}\n`);
    },
    stop: () => stopPid(child.pid),
  };
}

// ---- sluice ------------------------------------------------------------------------------------

/**
 * Starts `sluice run` with one listener and one pool per route. Readiness is /readyz on its
 * admin port (the "sluice ready" log line is at info level, below the bench's `warn`). Rejects
 * with sluice's own stderr when it exits during start-up.
 */
export async function startSluice(
  dir,
  routes,
  { workers = 1, accessLog = false, name = 'sluice', relay = 'splice' } = {},
) {
  const port = await listenPorts(routes);
  const admin = await freePort();
  const cfg = {
    admin: { listen: `${HOST}:${admin}` },
    log: { level: accessLog ? 'info' : 'warn', access_log: accessLog },
    workers,
    relay,
    shutdown: { drain_timeout: '1s' },
    listeners: routes.map((r) => ({
      name: r.name,
      protocol: r.proto ?? 'tcp',
      bind: `${HOST}:${port[r.name]}`,
      pool: r.name,
      limits: { max_connections: 20000 },
      timeouts: { connect: '5s', idle: '120s' },
      ...(r.quic !== undefined ? { quic: r.quic } : {}),
    })),
    pools: routes.map((r) => ({
      name: r.name,
      algorithm: r.algorithm ?? 'round-robin',
      backends: r.upstreams.map((u) => ({ address: addr(u) })),
      // No checks, as for HAProxy and nginx: every backend is taken as up.
      health: { active: { type: 'none' }, passive: { consecutive_failures: 0 } },
    })),
  };
  const file = join(dir, `${name}.yaml`);
  // Compact JSON: the "backends" scenario's 22,000 backends stay under the 1 MiB config cap.
  writeFileSync(file, JSON.stringify(cfg));
  const out = openSync(join(dir, `${name}.log`), 'w');
  const errFile = join(dir, `${name}.err`);
  const err = openSync(errFile, 'w');
  const child = spawn(sluiceNode(), [join(ROOT, 'bin/sluice'), 'run', '-c', file], {
    stdio: ['ignore', out, err],
    cwd: ROOT,
  });
  closeSync(out);
  closeSync(err);
  own(child.pid);
  let exited = false;
  child.on('exit', () => (exited = true));
  const why = () => readFileSync(errFile, 'utf8').trim().split('\n').slice(-3).join(' | ') || 'no message';
  const deadline = Date.now() + 30000;
  for (;;) {
    if (exited) throw new Error(`sluice (${name}) exited during start-up: ${why()}`);
    const ok = await fetch(`http://${HOST}:${admin}/readyz`).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) break;
    if (Date.now() > deadline) {
      await stopPid(child.pid);
      throw new Error(`sluice (${name}) not ready within 30 s: ${why()}`);
    }
    await sleep(100);
  }
  for (const r of routes)
    if ((r.proto ?? 'tcp') === 'tcp') await waitTcp(port[r.name], 5000, HOST, () => exited);
  pin(child.pid, 'proxy');
  bound(child.pid, workers);
  return peer(name, child.pid, port, {
    admin: `http://${HOST}:${admin}`,
    logFile: join(dir, `${name}.log`),
    processes: () => tree(child.pid).filter(alive).length,
  });
}
