import type { Config } from './schema.js';

/** Algorithms that route a QUIC connection ID the same way on every replica. */
const HASHING = new Set(['maglev', 'ring-hash']);

/**
 * The cross-checks of `listeners[].quic` and `backends[].server_id`: QUIC routing only on UDP
 * listeners, over a hashing pool (so replicas agree on the backend of a connection ID without
 * shared state), with server IDs of the configured length and no two alike in a pool.
 */
export function quicProblems(cfg: Config): { path: string; message: string }[] {
  const problems: { path: string; message: string }[] = [];
  cfg.listeners.forEach((l, i) => {
    const q = l.quic;
    if (q === undefined) return;
    if (l.protocol !== 'udp') {
      problems.push({ path: `listeners[${i}].quic`, message: 'only for udp listeners' });
      return;
    }
    if (!q.enabled) return;
    const p = cfg.pools.findIndex((x) => x.name === l.pool);
    const pool = cfg.pools[p];
    if (pool === undefined) return; // reported as an unknown pool
    if (!HASHING.has(pool.algorithm))
      problems.push({
        path: `listeners[${i}].quic`,
        message: `pool "${pool.name}" uses ${pool.algorithm}: routing by connection ID needs algorithm maglev or ring-hash`,
      });
    const length = q.server_id?.length;
    pool.backends.forEach((b, j) => {
      if (b.server_id === undefined || length === undefined) return;
      if (b.server_id.length / 2 !== length)
        problems.push({
          path: `pools[${p}].backends[${j}].server_id`,
          message: `expected ${length} octet(s), as listeners[${i}].quic.server_id.length says`,
        });
    });
    if (length !== undefined && !pool.backends.some((b) => b.server_id !== undefined))
      problems.push({
        path: `listeners[${i}].quic.server_id`,
        message: `no backend of pool "${pool.name}" has a server_id`,
      });
  });
  cfg.pools.forEach((pool, p) => {
    const seen = new Map<string, number>();
    pool.backends.forEach((b, j) => {
      if (b.server_id === undefined) return;
      const id = b.server_id.toLowerCase();
      const other = seen.get(id);
      if (other !== undefined)
        problems.push({
          path: `pools[${p}].backends[${j}].server_id`,
          message: `same server ID as backends[${other}]`,
        });
      else seen.set(id, j);
    });
  });
  return problems;
}
