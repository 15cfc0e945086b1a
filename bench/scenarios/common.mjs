// What every scenario does: start the peers (noting, not throwing, when one fails), interleave
// them within each repetition, stop them at the end.
import { iperf, wrk } from '../lib/load.mjs';
import { Samples } from '../lib/report.mjs';
import { direct, startHaproxy, startNginxStream, startSluice } from '../lib/peers.mjs';

/** Starts each [label, start()] in turn; a failure becomes a note on that peer's row. */
export async function startPeers(samples, starters) {
  const peers = [];
  for (const [label, start] of starters) {
    try {
      const p = await start();
      p.label = label;
      peers.push(p);
    } catch (err) {
      samples.note(label, err.message);
      console.log(`  ${label}: not measured: ${err.message}`);
    }
  }
  return peers;
}

/**
 * The peers in a different order each repetition, so no peer always runs first (or last) and no
 * peer always runs right after the same one (what a run leaves behind, such as its TIME_WAIT
 * sockets, weighs on the next): a shuffle seeded by the repetition, the same on every machine.
 */
export function rotate(list, rep) {
  let seed = (rep + 1) * 0x9e3779b9;
  const next = () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const out = [...list];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

export async function stopAll(procs) {
  for (const p of procs) if (p) await p.stop();
}

export function newSamples() {
  return new Samples();
}

/** Prints one measurement as it happens, so a long run shows progress (and its failures). */
export function progress(rep, label, what, fields, errors = 0) {
  const parts = Object.entries(fields)
    .filter(([, v]) => v !== undefined && (typeof v !== 'number' || Number.isFinite(v)))
    .map(([k, v]) => `${k}=${typeof v === 'number' ? +v.toFixed(3) : v}`);
  const verdict = errors > 0 ? 'FAILED ' : '';
  console.log(`  rep ${rep + 1} ${label.padEnd(20)} ${what.padEnd(10)} ${verdict}${parts.join(' ')}`);
}

/**
 * Records one measured run of `label` and prints it. `result` is a load generator's answer
 * ({errors, why}); with errors the run is FAILED and the first failure's `why` becomes the row's
 * note. `values` go to the table, `shown` only to the progress line.
 */
export function measured(s, rep, label, what, result, values, shown) {
  s.record(label, values, result.errors);
  if (result.errors > 0) s.note(label, `${result.why} (rep ${rep + 1})`);
  const why = result.errors > 0 ? JSON.stringify(result.why) : undefined;
  progress(rep, label, what, { ...shown, errors: result.errors, why }, result.errors);
}

/**
 * The proxy CPU of a run divided by its work, as a `values` entry: none for `direct`, which has
 * no proxy, so its CPU cells stay '–' whatever the run did.
 */
export const cpuPer = (key, cpu, work) => (cpu === undefined ? {} : { [key]: cpu / work });

/**
 * One short unrecorded run per port before the repetitions, so the first measured run is not
 * also the one that warms the JIT, the caches and the backend.
 */
export async function warmUp(ports, kind) {
  for (const port of ports) {
    if (kind === 'iperf') await iperf(port, { seconds: 1 });
    else await wrk(port, { seconds: 1, close: kind === 'close' });
  }
}

/**
 * The usual line-up of a TCP scenario: no proxy, HAProxy, nginx stream and sluice, one core each;
 * sluice twice: with its splice relay (the default) and with `relay: stream` (Node streams).
 */
export function tcpPeers(dir, routes) {
  return [
    ['direct', async () => direct(routes)],
    ['haproxy', () => startHaproxy(dir, routes)],
    ['nginx', () => startNginxStream(dir, routes)],
    ['sluice', () => startSluice(dir, routes)],
    ['sluice-stream', () => startSluice(dir, routes, { relay: 'stream', name: 'sluice-stream' })],
  ];
}

/** The table rows of tcpPeers, and the ratios every TCP table shows. */
export const TCP_ROWS = ['direct', 'haproxy', 'nginx', 'sluice', 'sluice-stream'];
export const TCP_RATIOS = [
  { num: 'sluice', den: 'haproxy' },
  { num: 'sluice', den: 'nginx' },
  { num: 'sluice-stream', den: 'haproxy' },
];
