import type { ListenerConfig } from '../config/schema.js';
import type { Logger } from '../telemetry/logger.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { Backend } from '../upstream/backend.js';
import type { Pool } from '../upstream/pool.js';
import type { Sweeper } from '../util/sweeper.js';
import type { Session } from '../proxy/session.js';
import type { SessionEvents } from '../proxy/session-context.js';
import type { SpliceRelay } from '../relay/binding.js';

/** What a listener needs from the process around it. */
export interface ListenerDeps {
  readonly metrics: Metrics;
  readonly logger: Logger;
  readonly sweeper: Sweeper;
  readonly accessLog: boolean;
  /** The splice relay for new TCP sessions; absent: Node streams. */
  readonly splice?: SpliceRelay | undefined;
  /** The process-wide overload guard: while `active`, new connections are refused. Absent: never. */
  readonly overload?: { readonly active: boolean };
  /** Pools by name, as of the current config. */
  pool(name: string): Pool | undefined;
  /** Passive health: a connect (TCP) or exchange (UDP) with `backend` failed or succeeded. */
  passive(pool: Pool, backend: Backend, ok: boolean): void;
}

/** What a TCP listener needs beyond that: where its sessions report. */
export interface TcpListenerDeps extends ListenerDeps {
  /** Where the sessions of listener `name` report (metrics, access log, passive health). */
  sessionEvents(name: string, logger: Logger): SessionEvents<Session>;
}

/** A bound socket of either protocol, as the runtime manages it. */
export interface Listener {
  readonly name: string;
  readonly config: ListenerConfig;
  /** The address actually bound (port 0 in the config picks a free one); '' before listen. */
  readonly boundAddress: string;
  /** Open TCP sessions or live UDP flows. */
  readonly openCount: number;
  /** Binds. Rejects with a one-line message such as `listener "web": 0.0.0.0:443 already in use`. */
  listen(): Promise<void>;
  /** Stops accepting (TCP) or receiving new flows (UDP); what is open goes on. */
  close(): Promise<void>;
  /** Applies a new config with the same protocol and bind address (reload). */
  update(cfg: ListenerConfig): void;
  /** Ends everything still open (end of a shutdown drain). */
  closeAll(reason: 'shutdown'): void;
}
