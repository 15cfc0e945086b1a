import type { Config } from '../config/schema.js';
import type { Listener } from '../listener/listener.js';
import { TcpListener, clusterLimited } from '../listener/tcp.js';
import type { SharedLimit } from '../state/sync.js';
import type { Backend } from '../upstream/backend.js';
import type { Pool } from '../upstream/pool.js';
import { clusterCapped } from '../upstream/pool.js';

/** A TCP listener's cluster-scoped `limits.max_connections`, as the state sync claims it. */
function listenerLimit(l: TcpListener): SharedLimit {
  return {
    kind: 'listener',
    name: l.name,
    limit: l.config.limits.max_connections,
    get open() {
      return l.openCount;
    },
    get admitted() {
      return l.admitted;
    },
    get cap() {
      return l.clusterCap;
    },
    set cap(n: number) {
      l.clusterCap = n;
    },
  };
}

/** A backend's share of its pool's cluster-scoped `max_connections_per_backend`. */
function backendLimit(b: Backend, limit: number): SharedLimit {
  return {
    kind: 'backend',
    name: b.key,
    limit,
    get open() {
      return b.local;
    },
    get admitted() {
      return b.placed;
    },
    get cap() {
      return b.clusterCap;
    },
    set cap(n: number) {
      b.clusterCap = n;
    },
  };
}

/**
 * The cluster-scoped limits of the running listeners and pools: one per TCP listener whose
 * `max_connections` is cluster-wide, one per backend (draining ones included: their sessions
 * still count) of a pool whose `max_connections_per_backend` is.
 */
export function sharedLimits(listeners: Iterable<Listener>, pools: Iterable<Pool>): SharedLimit[] {
  const out: SharedLimit[] = [];
  for (const l of listeners)
    if (l instanceof TcpListener && clusterLimited(l.config)) out.push(listenerLimit(l));
  for (const p of pools) {
    if (!clusterCapped(p.config)) continue;
    for (const b of p.backends()) out.push(backendLimit(b, p.config.max_connections_per_backend));
  }
  return out;
}

/** The config has a cluster-scoped limit: start-up waits for its first grants. */
export function hasSharedLimits(cfg: Config): boolean {
  return cfg.listeners.some(clusterLimited) || cfg.pools.some(clusterCapped);
}
