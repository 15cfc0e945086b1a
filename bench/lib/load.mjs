// Load generators (iperf3, wrk) with their output parsed, and the proxy CPU taken around a run.
import { HOST, cpuSeconds, run, sleep } from './sys.mjs';

/** Runs `fn` and returns its result plus the proxy's CPU seconds (utime+stime) spent meanwhile. */
export async function withCpu(pid, fn) {
  const before = pid === undefined ? 0 : cpuSeconds(pid);
  const result = await fn();
  const cpu = pid === undefined ? undefined : cpuSeconds(pid) - before;
  return { ...result, cpu };
}

/** iperf3 client through `port`; retries once when the server is still busy with the last run. */
export async function iperf(port, { seconds = 4, streams = 1 } = {}) {
  for (let attempt = 0; ; attempt++) {
    const r = await run(
      'iperf3',
      ['-c', HOST, '-p', String(port), '-t', String(seconds), '-P', String(streams), '-J'],
      {
        limitS: seconds + 20,
      },
    );
    let j;
    try {
      j = JSON.parse(r.stdout);
    } catch {
      j = { error: `no JSON (exit ${r.code}): ${r.stderr.trim().slice(0, 200)}` };
    }
    if (j.error === undefined && j.end?.sum_received) {
      const s = j.end.sum_received;
      return { bps: s.bits_per_second, bytes: s.bytes };
    }
    if (attempt >= 1) return { error: `iperf3: ${j.error}` };
    await sleep(1500);
  }
}

const UNIT = { us: 1e-3, ms: 1, s: 1000, m: 60000 };
const ms = (v, unit) => Number(v) * UNIT[unit];

/** Parses wrk's text output: requests, rate, socket errors, non-2xx, latency percentiles (ms). */
export function parseWrk(text) {
  const out = { requests: 0, rps: 0, errors: 0, errorText: '', non2xx: 0 };
  let m = /(\d+) requests in ([\d.]+)(\w+)/.exec(text);
  if (m) out.requests = Number(m[1]);
  m = /Requests\/sec:\s+([\d.]+)/.exec(text);
  if (m) out.rps = Number(m[1]);
  m = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(text);
  if (m) {
    out.errors = m.slice(1).reduce((a, b) => a + Number(b), 0);
    out.errorText = m[0];
  }
  m = /Non-2xx or 3xx responses: (\d+)/.exec(text);
  if (m) out.non2xx = Number(m[1]);
  for (const p of ['50', '99']) {
    m = new RegExp(`^\\s+${p}(?:\\.0+)?%\\s+([\\d.]+)(us|ms|s|m)\\s*$`, 'm').exec(text);
    if (m) out[`p${p}`] = ms(m[1], m[2]);
  }
  return out;
}

/**
 * wrk through `port` for `seconds`. `close: true` sends `Connection: close`, so every request is
 * a new TCP connection (the connection-rate test); otherwise keep-alive with `--latency`.
 */
export async function wrk(port, { seconds = 4, connections = 50, close = false } = {}) {
  const args = ['-t1', `-c${connections}`, `-d${seconds}s`];
  if (close) args.push('-H', 'Connection: close');
  else args.push('--latency');
  args.push(`http://${HOST}:${port}/`);
  const r = await run('wrk', args, { limitS: seconds + 15 });
  if (r.code !== 0) return { error: `wrk exit ${r.code}: ${(r.stderr || r.stdout).trim().slice(0, 200)}` };
  const w = parseWrk(r.stdout);
  if (w.requests === 0) return { error: `wrk made no request: ${r.stdout.trim().slice(0, 200)}` };
  return w;
}
