// --pin: each proxy under test alone on CPU 0, the load generators and backends on the other
// CPUs, so a connection-rate or CPU figure is one proxy core's own work, not how the scheduler
// shares two cores between the proxy, wrk and nginx (which preempt one another differently for
// each proxy). Without --pin nothing is pinned.
import { execFileSync } from 'node:child_process';
import { tree } from './sys.mjs';

let placement; // { proxy: '0', load: '1-N' } once pinning is on

/** Turns pinning on for this run: needs at least two CPUs. */
export function pinCores(nproc) {
  if (nproc < 2) throw new Error(`--pin: needs at least 2 CPUs (the proxy's and the load's), have ${nproc}`);
  placement = { proxy: '0', load: nproc === 2 ? '1' : `1-${nproc - 1}` };
  return placement;
}

export const pinning = () => placement;

/**
 * Moves every thread of `pid` and of its descendants (nginx workers, sluice workers) to the
 * role's CPUs: 'proxy' for a proxy under test, 'load' for a backend. A no-op without --pin.
 */
export function pin(pid, role) {
  if (placement === undefined || pid === undefined) return;
  for (const p of tree(pid))
    execFileSync('taskset', ['-a', '-p', '-c', placement[role], String(p)], { stdio: 'ignore' });
}

/** [cmd, args] for a load generator: run through taskset on the load CPUs with --pin. */
export function asLoad(cmd, args) {
  return placement === undefined ? [cmd, args] : ['taskset', ['-c', placement.load, cmd, ...args]];
}
