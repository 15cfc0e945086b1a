// 1. Bulk throughput: an iperf3 server behind each proxy, one and four streams for 4 s.
// Primary metric: proxy CPU seconds per GB moved.
import { startIperfServer } from '../lib/peers.mjs';
import { iperf, withCpu } from '../lib/load.mjs';
import { ERRORS, table } from '../lib/report.mjs';
import { sleep } from '../lib/sys.mjs';
import {
  cpuPer,
  measured,
  newSamples,
  rotate,
  startPeers,
  stopAll,
  warmUp,
  tcpPeers,
  TCP_ROWS,
  TCP_RATIOS,
} from './common.mjs';

/** With --pin: the CPUs each proxy gets to itself. */
export const pinCpus = 1;
export const boundable = true;
export const id = 'throughput';
export const title = 'Bulk throughput (iperf3, 4 s)';
export const what =
  'iperf3 -c 127.0.0.1 -p PROXY -t 4 -P 1 and -P 4, -J (end.sum_received). CPU-s/GB = proxy utime+stime per GB received. "errors" = iperf3 runs that ended in an error, over all runs.';

export async function run({ dir, reps }) {
  const s = newSamples();
  const server = await startIperfServer(dir);
  const routes = [{ name: 'iperf', upstreams: [server.port.iperf] }];
  const peers = await startPeers(s, tcpPeers(dir, routes));
  try {
    await warmUp(
      peers.map((p) => p.port.iperf),
      'iperf',
    );
    for (let rep = 0; rep < reps; rep++) {
      for (const streams of [1, 4]) {
        for (const p of rotate(peers, rep)) {
          const r = await withCpu(p.pid, () => iperf(p.port.iperf, { streams }));
          const values = {
            [`gbps${streams}`]: r.bps / 1e9,
            ...cpuPer(`cpu${streams}`, r.cpu, r.bytes / 1e9),
          };
          measured(s, rep, p.label, `-P ${streams}`, r, values, {
            gbps: r.bps / 1e9,
            cpu_s_per_GB: values[`cpu${streams}`],
          });
          await sleep(500);
        }
      }
    }
  } finally {
    await stopAll([...peers, server]);
  }
  const metrics = [
    { key: 'gbps1', label: '-P1 Gbit/s' },
    { key: 'cpu1', label: '-P1 CPU-s/GB' },
    { key: 'gbps4', label: '-P4 Gbit/s' },
    { key: 'cpu4', label: '-P4 CPU-s/GB' },
    ERRORS,
  ];
  return [table(s, TCP_ROWS, metrics, TCP_RATIOS)];
}
