// sluice benchmark suite: sluice against HAProxy (mode tcp) and nginx (stream) side by side on
// loopback. `npm run bench -- --help` for options.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ROOT, buildSluice, ensureTools, machineInfo } from './lib/setup.mjs';
import { fillTimeWait } from './lib/load.mjs';
import { pin, pinCores, placementText, quotaCores, removeGroups } from './lib/pin.mjs';
import { cpuTimes, stealShare, timeWaitCount } from './lib/sys.mjs';
import * as throughput from './scenarios/throughput.mjs';
import * as connrate from './scenarios/connrate.mjs';
import * as keepalive from './scenarios/keepalive.mjs';
import * as rss from './scenarios/rss.mjs';
import * as udp from './scenarios/udp.mjs';
import * as scaling from './scenarios/scaling.mjs';
import * as backends from './scenarios/backends.mjs';
import * as quic from './scenarios/quic.mjs';

const loadavg = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');

const SCENARIOS = [throughput, connrate, keepalive, rss, udp, scaling, backends, quic];

const HELP = `usage: npm run bench -- [--only ${SCENARIOS.map((s) => s.id).join(',')}] [--reps N] [--no-write]

  --only LIST   comma-separated scenarios to run (default: all)
  --reps N      repetitions per scenario; the tables show the median and [min–max] (default 3)
  --no-write    print the tables but leave bench/RESULTS.md alone
  --keep        keep the temp dir with the generated configs and the proxies' logs
  --tw N        before each scenario, top the machine up to about N sockets in TIME_WAIT
                (loopback connections that a local server closes first), as after a busy minute
  --pin         each proxy alone on CPU 0 (CPUs 0-1 for scaling, which then needs 3 CPUs),
                load generators and backends on the other CPUs: per-core figures
                (${SCENARIOS.filter((s) => s.pinCpus)
                  .map((s) => s.id)
                  .join(', ')} only)
  --quota P     each proxy gets P % of a CPU per thread or worker it runs and no more (a CPU
                cgroup of its own), so the proxy, not the load, is the bottleneck of every run
                (${SCENARIOS.filter((s) => s.boundable)
                  .map((s) => s.id)
                  .join(', ')} only)
Runs as root on loopback only; installs haproxy, nginx, iperf3 and wrk with apt-get when missing.`;

const { values } = parseArgs({
  options: {
    only: { type: 'string' },
    reps: { type: 'string', default: '3' },
    'no-write': { type: 'boolean', default: false },
    keep: { type: 'boolean', default: false },
    tw: { type: 'string', default: '0' },
    pin: { type: 'boolean', default: false },
    quota: { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (values.help) {
  console.log(HELP);
  process.exit(0);
}
const reps = Number(values.reps);
if (!Number.isInteger(reps) || reps < 1)
  throw new Error(`--reps: expected a positive integer, got ${values.reps}`);
const tw = Number(values.tw);
// Beyond net.ipv4.tcp_max_tw_buckets the kernel drops TIME_WAIT sockets instead of keeping them.
const twMax = Number(readFileSync('/proc/sys/net/ipv4/tcp_max_tw_buckets', 'utf8'));
if (!Number.isInteger(tw) || tw < 0 || tw >= twMax)
  throw new Error(`--tw: expected an integer from 0 to ${twMax - 1} (tcp_max_tw_buckets), got ${values.tw}`);
const wanted = values.only ? values.only.split(',').map((s) => s.trim()) : SCENARIOS.map((s) => s.id);
const unknown = wanted.filter((w) => !SCENARIOS.some((s) => s.id === w));
if (unknown.length)
  throw new Error(
    `--only: unknown scenario ${unknown.join(', ')}; known: ${SCENARIOS.map((s) => s.id).join(', ')}`,
  );
const unpinnable = wanted.filter((w) => !SCENARIOS.find((s) => s.id === w).pinCpus);
if (values.pin && unpinnable.length)
  throw new Error(
    `--pin: ${unpinnable.join(', ')} cannot run pinned (their proxies pin themselves or run alone)`,
  );
const quota = values.quota === undefined ? undefined : Number(values.quota);
const unboundable = wanted.filter((w) => !SCENARIOS.find((s) => s.id === w).boundable);
if (quota !== undefined && unboundable.length)
  throw new Error(
    `--quota: ${unboundable.join(', ')} cannot run with a quota (their load is not wrk or iperf3 through one proxy)`,
  );
if (quota !== undefined && (!Number.isInteger(quota) || quota < 1 || quota > 100))
  throw new Error(`--quota: expected a whole percentage from 1 to 100, got ${values.quota}`);
const chosen = SCENARIOS.filter((s) => wanted.includes(s.id));
/** With --pin, each scenario's placement, checked for every scenario before anything runs. */
const placements = new Map();
for (const s of values.pin ? chosen : []) {
  try {
    placements.set(s.id, pinCores(availableParallelism(), s.pinCpus));
  } catch (err) {
    throw new Error(`${s.id}: ${err.message}`, { cause: err });
  }
}
const command = `npm run bench${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`;

ensureTools();
buildSluice();
const info = machineInfo();
if (quota !== undefined) quotaCores(quota);
process.on('exit', removeGroups);
const dir = mkdtempSync(join(tmpdir(), 'sluice-bench-'));
console.log(`bench: ${command}\nbench: configs and logs in ${dir}`);
const placed = [...new Set([...placements.values()].map(placementText))];
const pinned =
  placed.length === 0
    ? 'nothing pinned: proxy, load generator and backend share every CPU'
    : placed.length === 1
      ? placed[0]
      : [...placements].map(([id, p]) => `${id}: ${placementText(p)}`).join('; ');
const bounded =
  quota === undefined
    ? ''
    : `; \`--quota ${quota}\`: each proxy held to ${quota} % of a CPU per thread or worker`;
console.log(`bench: ${pinned}${bounded}`);
console.log(
  `bench: ${info.nproc} CPUs (${info.cpu}), ${info.kernel}, Node ${info.node}, ${info.haproxy}, ${info.nginx}`,
);

const count = (n) => n.toLocaleString('en-US');

/** Tops TIME_WAIT up to `target` before a scenario, says so, and returns "before → after". */
async function topUpTimeWait(target) {
  const f = await fillTimeWait(target);
  const counts = `${count(f.before)} → ${count(f.after)}`;
  const how =
    f.made === 0
      ? 'already enough'
      : `${count(f.made)} connections closed first by a local server in ${f.seconds.toFixed(1)} s`;
  console.log(`bench: TIME_WAIT ${counts} (--tw ${target}: ${how})`);
  return counts;
}

const loadBefore = loadavg();
const twBefore = timeWaitCount();
const cpuBefore = cpuTimes();
console.log(`bench: ${count(twBefore)} sockets in TIME_WAIT at the start`);
const fills = [];
const sections = [];
const started = Date.now();
for (const sc of chosen) {
  console.log(`\nbench: running ${sc.id}: ${sc.title}`);
  if (values.pin) {
    pinCores(info.nproc, sc.pinCpus);
    pin(process.pid, 'load');
  }
  if (tw > 0) fills.push(`${sc.id} ${await topUpTimeWait(tw)}`);
  let body;
  try {
    body = await sc.run({ dir, reps });
  } catch (err) {
    body = [`**Not measured:** ${err.message}`];
  }
  const text = [`## ${sc.title}`, '', sc.what, '', ...body.flatMap((b) => [b, ''])].join('\n');
  console.log(`\n${text}`);
  sections.push(text);
}

const twAfter = timeWaitCount();
const steal = `${(100 * stealShare(cpuBefore, cpuTimes())).toFixed(1)} %`;
const twRow = tw > 0 ? `\n| \`--tw ${tw}\` (topped up before each scenario) | ${fills.join('; ')} |` : '';

const sharing =
  quota !== undefined
    ? `Each proxy is held to ${quota} % of a CPU per thread or worker it runs (\`--quota\`, a CPU cgroup each): that\nshare, not the load generator or the backends, bounds every run, so the rate is what it carries\nand the CPU per connection is the proxy's cost when busy. Read the ratios.`
    : placed.length === 0
      ? 'Load generator, proxy and backend share the same\ncores, so absolute numbers are low and noisy (about ±20 %): read the ratios.'
      : `Each proxy has its CPUs to itself (\`--pin\`), so its rate and CPU are those cores'\nwork; the load generator and the backends share the other CPUs. Read the ratios.`;

const header = `# sluice benchmark results

Generated by \`${command}\` on ${info.date} (${Math.round((Date.now() - started) / 60000)} min, ${reps} repetition(s)).

| machine | |
|---|---|
| CPUs | ${info.nproc} × ${info.cpu} |
| kernel | ${info.kernel} |
| memory | ${info.memGiB} GiB |
| Node (runs sluice) | ${info.node} |
| sluice | git ${info.sluice} |
| HAProxy | ${info.haproxy} |
| nginx | ${info.nginx} |
| load average (1/5/15 min) | ${loadBefore} at the start, ${loadavg()} at the end |
| CPU steal (/proc/stat, start → end) | ${steal} of all CPU time |
| TIME_WAIT (\`ss -s\`) | ${count(twBefore)} at the start, ${count(twAfter)} at the end (the kernel keeps at most ${count(twMax)}) |${twRow}
| tools | ${info.iperf3}; ${info.wrk} |
| placement | ${pinned}${bounded} |

Method: every peer listens on its own 127.0.0.1 port and
they run interleaved within each repetition (in a new order each repetition). Cells are the
median of the repetitions with [min–max]. Proxy CPU is utime+stime from /proc/PID/stat (summed
over the process tree) taken around each run. ${sharing} HAProxy runs
\`mode tcp\`, \`nbthread 1\`, splicing off; nginx \`stream {}\` with \`worker_processes 1\`; sluice one
process with \`log: {level: warn, access_log: false}\` unless a row says otherwise; no health checks anywhere.

Failures: every measured run records the errors its load client reported (wrk socket errors and
non-2xx responses; an iperf3 run that ends in an error, or a UDP one that loses datagrams; the
rss client's connections that failed or never reached the sink; the UDP blaster's failed sends).
A run with any error is FAILED and its figures are not used: a cell whose repetitions include one
prints \`FAILED (n errors in k of N runs)\` instead of a median, a ratio with such a cell prints –,
and the errors column is the total over all runs. In the UDP table, datagrams the sink did not
receive are the "lost %" column, not errors: the blaster overdrives on purpose.
`;

// The sections were printed as they finished; the machine table only now that the run is over.
console.log(`\n${header}`);
const doc = [header, ...sections].join('\n');
if (!values['no-write']) {
  writeFileSync(join(ROOT, 'bench/RESULTS.md'), doc);
  console.log('\nbench: wrote bench/RESULTS.md');
}
if (values.keep) console.log(`bench: configs and logs kept in ${dir}`);
else rmSync(dir, { recursive: true, force: true });
process.exit(0);
