import type { Config } from '../config/schema.js';
import type { Logger } from '../telemetry/logger.js';
import { systemClock } from '../util/clock.js';
import { MemoryStore } from './memory.js';
import type { StateStore } from './store.js';

/** Builds the state store the config asks for: the embedded memory store, or Redis (loaded only then). */
export async function createStore(cfg: Config, logger: Logger): Promise<StateStore> {
  if (cfg.state.store === 'memory') return new MemoryStore(systemClock);
  const { RedisStore, reconnectBackoff } = await import('./redis.js');
  return new RedisStore({
    config: cfg.state.redis,
    logger: logger.child({ component: 'state' }),
    backoff: reconnectBackoff(cfg.state.heartbeat),
  });
}
