import type { Sample } from '../telemetry/history.js';

/** JSON shape of one backend in GET /api/v1/pools. */
export interface BackendJson {
  address: string;
  state: 'up' | 'down' | 'draining' | 'disabled';
  weight: number;
  effective_weight: number;
  health: {
    active: 'unknown' | 'up' | 'down' | 'unchecked';
    ejected_until: string | null;
    admin: 'enabled' | 'draining' | 'disabled';
    readiness: string;
  };
  connections: { local: number; cluster: number };
}

export interface PoolJson {
  name: string;
  algorithm: string;
  /** True while too few backends are ready and the pool balances over all of them (health.panic_threshold). */
  panic: boolean;
  backends: BackendJson[];
}

/** JSON shape of one listener in GET /api/v1/listeners. */
export interface ListenerJson {
  name: string;
  protocol: string;
  bind: string;
  pool: string;
  /** Open TCP sessions or live UDP flows. */
  open: number;
}

/** What the admin server asks of the running process. */
export interface AdminApi {
  readiness(): { ready: boolean; reason: string };
  metricsText(): Promise<{ contentType: string; body: string }>;
  poolsJson(): { pools: PoolJson[] };
  setAdmin(pool: string, address: string, verb: 'drain' | 'enable' | 'disable'): BackendJson | undefined;
  reload(): Promise<{ ok: true } | { ok: false; errors: string[] }>;
  listenersJson(): { listeners: ListenerJson[] };
  historyJson(): { samples: readonly Sample[] };
  statusPage(): string;
}
