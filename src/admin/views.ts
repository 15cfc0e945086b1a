import type { BackendSample } from '../telemetry/metrics.js';
import type { Backend } from '../upstream/backend.js';
import type { Pool } from '../upstream/pool.js';
import type { BackendJson, PoolJson } from './api.js';

/** One backend as GET /api/v1/pools shows it (`now` on the runtime's clock). */
export function backendJson(b: Backend, now: number): BackendJson {
  return {
    address: b.address,
    state: b.state(now),
    weight: b.configWeight,
    effective_weight: b.weight,
    health: {
      active: b.checked ? b.health : 'unchecked',
      ejected_until:
        b.ejectedUntil > now ? new Date(Date.now() + (b.ejectedUntil - now)).toISOString() : null,
      admin: b.admin,
      readiness: b.readiness(now),
    },
    connections: { local: b.local, cluster: b.local + b.remote },
  };
}

/** One pool as GET /api/v1/pools shows it. */
export function poolJson(p: Pool, now: number): PoolJson {
  return {
    name: p.name,
    algorithm: p.config.algorithm,
    panic: p.panic,
    backends: [...p.backends()].map((b) => backendJson(b, now)),
  };
}

/** Every backend's sample for the sluice_backend_up, _state and _connections gauges. */
export function* backendSamples(pools: Iterable<Pool>, now: number): Iterable<BackendSample> {
  for (const p of pools)
    for (const b of p.backends()) {
      const readiness = b.readiness(now);
      yield {
        pool: p.name,
        address: b.address,
        up: readiness === 'ready',
        readiness,
        local: b.local,
        remote: b.remote,
      };
    }
}
