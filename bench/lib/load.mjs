// Load generators (iperf3, wrk) with their output parsed, and the proxy CPU taken around a run.
// Every result carries `errors`, the failures the client reported (0 for a clean run), and `why`,
// a one-line account of them: a run with errors is a FAILED sample, never a rate.
import { join } from 'node:path';
import { asLoad } from './pin.mjs';
import { ROOT, sluiceNode } from './setup.mjs';
import { HOST, cpuSeconds, freePort, run, sleep, timeWaitCount } from './sys.mjs';

/** Runs `fn` and returns its result plus the proxy's CPU seconds (utime+stime) spent meanwhile. */
export async function withCpu(pid, fn) {
  const before = pid === undefined ? 0 : cpuSeconds(pid);
  const result = await fn();
  const cpu = pid === undefined ? undefined : cpuSeconds(pid) - before;
  return { ...result, cpu };
}

/**
 * Reads iperf3's `-J` report: the received rate, and as errors an `error` field (the run failed)
 * or, for a UDP run, the datagrams lost on the way (`lost_packets` of `end.sum_received`).
 */
export function parseIperf(j) {
  if (j.error !== undefined) return { errors: 1, why: `iperf3: ${j.error}` };
  const s = j.end?.sum_received;
  if (s === undefined) return { errors: 1, why: 'iperf3: no end.sum_received in its report' };
  const lost = s.lost_packets ?? 0;
  const why = lost ? `iperf3: ${lost} datagrams lost (${s.lost_percent.toFixed(2)} %)` : '';
  return { bps: s.bits_per_second, bytes: s.bytes, errors: lost, why };
}

// iperf3 serves one test at a time and refuses the next while it finishes the last one.
const BUSY = /server is busy/;

/** iperf3 client through `port`; retries once when the server is still busy with the last run. */
export async function iperf(port, { seconds = 4, streams = 1 } = {}) {
  for (let attempt = 0; ; attempt++) {
    const r = await run(
      ...asLoad('iperf3', [
        '-c',
        HOST,
        '-p',
        String(port),
        '-t',
        String(seconds),
        '-P',
        String(streams),
        '-J',
      ]),
      { limitS: seconds + 20 },
    );
    let j;
    try {
      j = JSON.parse(r.stdout);
    } catch {
      j = { error: `no JSON (exit ${r.code}): ${r.stderr.trim().slice(0, 200)}` };
    }
    if (attempt >= 1 || !BUSY.test(j.error ?? '')) return parseIperf(j);
    await sleep(1500);
  }
}

const UNIT = { us: 1e-3, ms: 1, s: 1000, m: 60000 };
const ms = (v, unit) => Number(v) * UNIT[unit];

/**
 * Parses wrk's text output: requests, rate, latency percentiles (ms), and as errors the socket
 * errors (connect, read, write, timeout) plus the non-2xx/3xx responses.
 */
export function parseWrk(text) {
  const out = { requests: 0, rps: 0, errors: 0, why: '' };
  let m = /(\d+) requests in ([\d.]+)(\w+)/.exec(text);
  if (m) out.requests = Number(m[1]);
  m = /Requests\/sec:\s+([\d.]+)/.exec(text);
  if (m) out.rps = Number(m[1]);
  const why = [];
  m = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(text);
  if (m) {
    out.errors += m.slice(1).reduce((a, b) => a + Number(b), 0);
    why.push(`wrk ${m[0].toLowerCase()}`);
  }
  m = /Non-2xx or 3xx responses: (\d+)/.exec(text);
  if (m) {
    out.errors += Number(m[1]);
    why.push(`wrk non-2xx/3xx responses: ${m[1]}`);
  }
  out.why = why.join('; ');
  for (const p of ['50', '99']) {
    m = new RegExp(`^\\s+${p}(?:\\.0+)?%\\s+([\\d.]+)(us|ms|s|m)\\s*$`, 'm').exec(text);
    if (m) out[`p${p}`] = ms(m[1], m[2]);
  }
  return out;
}

/**
 * wrk through `port` for `seconds`. `close: true` sends `Connection: close`, so every request is
 * a new TCP connection (the connection-rate test); otherwise keep-alive with `--latency`. A wrk
 * that fails or makes no request at all counts as (at least) one error.
 */
export async function wrk(port, { seconds = 4, connections = 50, close = false } = {}) {
  const args = ['-t1', `-c${connections}`, `-d${seconds}s`];
  if (close) args.push('-H', 'Connection: close');
  else args.push('--latency');
  args.push(`http://${HOST}:${port}/`);
  const r = await run(...asLoad('wrk', args), { limitS: seconds + 15 });
  const said = (r.stderr || r.stdout).trim().slice(0, 200);
  if (r.code !== 0) return { requests: 0, errors: 1, why: `wrk exit ${r.code}: ${said}` };
  const w = parseWrk(r.stdout);
  if (w.requests === 0)
    return { ...w, errors: Math.max(1, w.errors), why: `wrk made no request: ${w.why || said}` };
  return w;
}

// A fill of 30,000 takes about 3 s here; the bound only matters on a much slower machine.
const FILL_SECONDS = 30;

/**
 * Tops the machine up to about `target` sockets in TIME_WAIT, counting those already there, with
 * bench/helpers/timewait.mjs (loopback only, stops by itself). Returns the counts before and after.
 */
export async function fillTimeWait(target) {
  const before = timeWaitCount();
  if (before >= target) return { before, after: before, made: 0, seconds: 0 };
  const port = await freePort();
  const script = join(ROOT, 'bench/helpers/timewait.mjs');
  const r = await run(sluiceNode(), [script, port, target - before, FILL_SECONDS], {
    limitS: FILL_SECONDS + 10,
  });
  let out;
  try {
    out = JSON.parse(r.stdout);
  } catch {
    throw new Error(`timewait.mjs failed (exit ${r.code}): ${r.stderr.trim().slice(0, 200)}`);
  }
  return { before, after: timeWaitCount(), made: out.made, seconds: out.seconds };
}
