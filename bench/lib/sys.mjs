// Process, /proc and port helpers shared by the benchmark scenarios. Everything the suite starts
// is registered here and stopped by PID on exit or SIGINT; nothing is ever killed by name.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import net from 'node:net';

export const HOST = '127.0.0.1';
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;

// ---- cleanup registry -------------------------------------------------------------------------

const owned = new Set(); // PIDs (of processes we started or daemons whose pidfile we wrote)

export function own(pid) {
  if (Number.isInteger(pid) && pid > 0) owned.add(pid);
  return pid;
}

export function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * SIGTERM, then SIGKILL after `graceMs` to whatever is left of its process tree (nginx workers,
 * sluice workers).
 */
export async function stopPid(pid, graceMs = 3000) {
  if (!owned.delete(pid) || !alive(pid)) return;
  const family = tree(pid);
  signal(pid, 'SIGTERM');
  const deadline = Date.now() + graceMs;
  while (family.some(alive) && Date.now() < deadline) await sleep(50);
  for (const p of family) if (alive(p)) signal(p, 'SIGKILL');
}

function signal(pid, sig) {
  try {
    process.kill(pid, sig);
  } catch {
    /* already gone */
  }
}

/** On exit or SIGINT: SIGTERM to everything we own, up to 2 s to go, then SIGKILL the rest. */
function killAllNow() {
  const family = [...owned].flatMap((p) => (alive(p) ? tree(p) : []));
  owned.clear();
  for (const p of family) signal(p, 'SIGTERM');
  const deadline = Date.now() + 2000;
  const nap = new Int32Array(new SharedArrayBuffer(4));
  while (family.some(alive) && Date.now() < deadline) Atomics.wait(nap, 0, 0, 50);
  for (const p of family) if (alive(p)) signal(p, 'SIGKILL');
}

process.on('exit', killAllNow);
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    process.stderr.write(`\nbench: ${sig}, stopping everything it started\n`);
    killAllNow();
    process.exit(130);
  });
}

/** Reads a daemon's pidfile (waiting up to `ms` for it to appear) and registers the PID. */
export async function pidFromFile(file, ms = 5000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (existsSync(file)) {
      const pid = Number(readFileSync(file, 'utf8').trim().split(/\s+/)[0]);
      if (pid > 0) return own(pid);
    }
    await sleep(50);
  }
  throw new Error(`no pid in ${file} after ${ms} ms`);
}

// ---- /proc ------------------------------------------------------------------------------------

function statFields(pid) {
  const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return s.slice(s.lastIndexOf(')') + 2).split(' '); // fields from #3 (state) on
}

/** PID plus all its descendants (nginx master + workers, sluice primary + workers). */
export function tree(pid) {
  const children = new Map();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const ppid = Number(statFields(d)[1]);
      if (!children.has(ppid)) children.set(ppid, []);
      children.get(ppid).push(Number(d));
    } catch {
      /* exited meanwhile */
    }
  }
  const out = [];
  const stack = [pid];
  while (stack.length > 0) {
    const p = stack.pop();
    out.push(p);
    stack.push(...(children.get(p) ?? []));
  }
  return out;
}

/** utime+stime in seconds, summed over the process tree. */
export function cpuSeconds(pid) {
  let ticks = 0;
  for (const p of tree(pid)) {
    try {
      const f = statFields(p);
      ticks += Number(f[11]) + Number(f[12]); // fields 14 and 15: utime, stime
    } catch {
      /* exited meanwhile */
    }
  }
  return ticks / CLK_TCK;
}

/** VmRSS in KiB, summed over the process tree. */
export function rssKiB(pid) {
  let kib = 0;
  for (const p of tree(pid)) {
    try {
      const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${p}/status`, 'utf8'));
      if (m) kib += Number(m[1]);
    } catch {
      /* exited meanwhile */
    }
  }
  return kib;
}

/** TIME_WAIT sockets on the whole machine, as `ss -s` counts them. */
export function timeWaitCount() {
  const out = execFileSync('ss', ['-s'], { encoding: 'utf8', timeout: 10000 });
  const m = /timewait (\d+)/.exec(out);
  if (!m) throw new Error(`no timewait count in ss -s: ${out.slice(0, 200)}`);
  return Number(m[1]);
}

/** The machine's CPU time so far (the `cpu` line of /proc/stat, in ticks): steal and the total. */
export function cpuTimes() {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0];
  // user nice system idle iowait irq softirq steal; guest time is already counted in user.
  const ticks = line.trim().split(/\s+/).slice(1, 9).map(Number);
  return { steal: ticks[7], total: ticks.reduce((a, b) => a + b, 0) };
}

/** The share of CPU time the hypervisor stole between two cpuTimes() samples, 0–1. */
export const stealShare = (from, to) => (to.steal - from.steal) / (to.total - from.total || 1);

// ---- ports ------------------------------------------------------------------------------------

// Below the ephemeral range (32768-60999) so no outgoing connection can take one of them.
let nextPort = 23100;

function portFree(port) {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen({ host: HOST, port, exclusive: true }, () => s.close(() => resolve(true)));
  });
}

/** A loopback port that nothing listens on right now (checked for TCP). */
export async function freePort() {
  while (nextPort < 32000) {
    const p = nextPort++;
    if (await portFree(p)) return p;
  }
  throw new Error('no free port left in 23100-32000');
}

/** Resolves when a TCP connection to host:port succeeds (then closes it), or throws after `ms`. */
export async function waitTcp(port, ms = 10000, host = HOST, isDead = () => false) {
  const deadline = Date.now() + ms;
  for (;;) {
    const ok = await new Promise((resolve) => {
      const s = net.connect({ host, port });
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (isDead()) throw new Error(`process exited before ${host}:${port} accepted connections`);
    if (Date.now() > deadline) throw new Error(`${host}:${port} did not accept connections within ${ms} ms`);
    await sleep(100);
  }
}

// ---- commands ---------------------------------------------------------------------------------

/**
 * Runs a command to completion with a hard time limit (coreutils `timeout`), returning
 * {code, stdout, stderr}. Never throws on a non-zero exit.
 */
export function run(cmd, args, { limitS = 30, env } = {}) {
  return new Promise((resolve) => {
    const child = spawn('timeout', ['-k', '2', String(limitS), cmd, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: env ?? process.env,
    });
    own(child.pid);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('close', (code) => {
      owned.delete(child.pid);
      resolve({ code, stdout, stderr });
    });
  });
}

export function which(bin) {
  for (const dir of (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/sbin'])) {
    if (dir && existsSync(`${dir}/${bin}`)) return `${dir}/${bin}`;
  }
  return undefined;
}

/** Whether any socket is bound to 127.0.0.1:port in /proc/net/{proto} (tcp: listening only). */
export function bound(proto, port) {
  const local = `0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  return readFileSync(`/proc/net/${proto}`, 'utf8')
    .split('\n')
    .some((l) => {
      const f = l.trim().split(/\s+/);
      return f[1] === local && (proto !== 'tcp' || f[3] === '0A');
    });
}
