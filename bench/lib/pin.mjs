// --pin: each proxy under test alone on CPU 0 (CPUs 0-1 for the scaling scenario's two-core
// proxies), the load generators and backends on the other CPUs, so a connection-rate or CPU
// figure is the proxy cores' own work, not how the scheduler shares the cores between the proxy,
// wrk and nginx (which preempt one another differently for each proxy). Without --pin nothing
// is pinned.
//
// --quota P: each proxy also gets P % of a CPU per core it is configured for (one thread or
// worker: P % of one CPU; two: P % of two) and no more, in a CPU cgroup of its own (10 ms
// period), so the proxy is the bottleneck of every run, as a proxy at capacity is, rather than
// the load generator and backends: the rate is what that share carries, and the CPU per
// connection is the proxy's cost when busy, not how often it idles and wakes.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tree } from './sys.mjs';

let placement; // { proxy: '0', load: '1-N' } once pinning is on
let quota; // { percent, cgroups } once the quota is on
const groups = []; // cgroup directories made for --quota, removed at exit

const PERIOD_US = 10000;
const V1 = '/sys/fs/cgroup/cpu';
const V2 = '/sys/fs/cgroup';

/** Where CPU cgroups are made here, and how a quota is written, or why it cannot be. */
function cpuCgroups() {
  if (existsSync(join(V1, 'cpu.cfs_quota_us')))
    return {
      root: V1,
      limit: (dir, quotaUs) => {
        writeFileSync(join(dir, 'cpu.cfs_period_us'), String(PERIOD_US));
        writeFileSync(join(dir, 'cpu.cfs_quota_us'), String(quotaUs));
      },
    };
  const controllers = join(V2, 'cgroup.controllers');
  if (existsSync(controllers) && readFileSync(controllers, 'utf8').split(/\s+/).includes('cpu')) {
    writeFileSync(join(V2, 'cgroup.subtree_control'), '+cpu');
    return {
      root: V2,
      limit: (dir, quotaUs) => writeFileSync(join(dir, 'cpu.max'), `${quotaUs} ${PERIOD_US}`),
    };
  }
  throw new Error('--quota: no CPU cgroup controller here (cgroup v1 cpu or v2 with cpu); run as root');
}

/** "0", "0-1": CPUs from `a` to `b`, as taskset reads them. */
const span = (a, b) => (a === b ? `${a}` : `${a}-${b}`);

/**
 * Turns pinning on for a scenario whose proxies run on `proxyCpus` CPUs: CPUs 0 to proxyCpus - 1
 * for the proxy under test, the others for the load generators and backends. Needs one CPU more
 * than the proxy's.
 */
export function pinCores(nproc, proxyCpus = 1) {
  if (nproc < proxyCpus + 1)
    throw new Error(
      `--pin: needs at least ${proxyCpus + 1} CPUs (${proxyCpus} for the proxy, one or more for the load), have ${nproc}`,
    );
  placement = { proxy: span(0, proxyCpus - 1), load: span(proxyCpus, nproc - 1) };
  return placement;
}

/** What a placement reads as in the report. */
export function placementText({ proxy, load }) {
  const cpus = (s) => (s.includes('-') ? `CPUs ${s}` : `CPU ${s}`);
  return `\`--pin\`: each proxy alone on ${cpus(proxy)}; wrk, iperf3 and the backends on ${cpus(load)}`;
}

/** Turns the quota on for this run: P % of a CPU per core a proxy is configured for. */
export function quotaCores(percent) {
  quota = { percent, cgroups: cpuCgroups() };
  return quota;
}

/**
 * Moves every thread of `pid` and of its descendants (nginx workers, sluice workers) to the
 * role's CPUs: 'proxy' for a proxy under test, 'load' for a backend. A no-op without --pin.
 */
export function pin(pid, role) {
  if (placement === undefined || pid === undefined) return;
  for (const p of tree(pid))
    execFileSync('taskset', ['-a', '-p', '-c', placement[role], String(p)], { stdio: 'ignore' });
}

/**
 * With --quota, puts a proxy's processes (`pid` and its descendants) into a CPU cgroup of their
 * own limited to P % of `cores` CPUs. A no-op without --quota.
 */
export function bound(pid, cores = 1) {
  if (quota === undefined || pid === undefined) return;
  const { root, limit } = quota.cgroups;
  const dir = join(root, `sluice-bench-${process.pid}-${pid}`);
  mkdirSync(dir);
  groups.push(dir);
  limit(dir, Math.round((PERIOD_US * cores * quota.percent) / 100));
  // cgroup.procs moves a whole process (all its threads) on v1 and v2 alike.
  for (const p of tree(pid)) writeFileSync(join(dir, 'cgroup.procs'), String(p));
}

/** Removes the cgroups --quota made (the processes in them are gone by then). */
export function removeGroups() {
  for (const dir of groups.splice(0)) {
    try {
      // A process still in it (one that outlived its stop) goes back to the root group first.
      const left = readFileSync(join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean);
      for (const p of left) writeFileSync(join(quota.cgroups.root, 'cgroup.procs'), p);
      rmdirSync(dir);
    } catch {
      /* gone already, or still busy: nothing more to do */
    }
  }
}

/** [cmd, args] for a load generator: run through taskset on the load CPUs with --pin. */
export function asLoad(cmd, args) {
  return placement === undefined ? [cmd, args] : ['taskset', ['-c', placement.load, cmd, ...args]];
}
