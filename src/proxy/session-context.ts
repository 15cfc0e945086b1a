import type { ListenerConfig } from '../config/schema.js';
import type { SpliceRelay } from '../relay/binding.js';
import type { Backend } from '../upstream/backend.js';
import type { Pool } from '../upstream/pool.js';
import type { Sweeper } from '../util/sweeper.js';
import type { CloseReason } from './close-reason.js';

/**
 * What happens to sessions, for the outside: metrics, the access log, passive health. One sink
 * per listener, built at the composition root; the session reports, and never reads back. `S` is
 * the session (session.ts), left open so that this contract does not import it.
 */
export interface SessionEvents<S> {
  /** Bytes relayed since the last report (at most once per sweeper tick per session). */
  bytes(toUpstream: number, toDownstream: number): void;
  /** A connect attempt to `backend` failed. */
  connectFailed(pool: Pool, backend: Backend, code: string): void;
  /** Passive health: the backend answered (true) or reset before answering (false); once per session. */
  verdict(pool: Pool, backend: Backend, ok: boolean): void;
  /** The splice relay carries the session. */
  spliced(): void;
  /** The PROXY header sent upstream left out the relayed TLVs (they would not fit). */
  tlvsDropped(pool: Pool): void;
  /** The session is over; called exactly once. */
  closed(session: S, reason: CloseReason): void;
}

/** What a session needs from the listener that accepted it: its settings, and where to report. */
export interface SessionContext<S> {
  /** The listener's current config (timeouts, PROXY settings): read at each use, so a reload applies at once. */
  readonly config: ListenerConfig;
  readonly sweeper: Sweeper;
  /** The splice relay for new sessions (config `relay`); undefined relays through Node streams. */
  readonly relay: SpliceRelay | undefined;
  readonly events: SessionEvents<S>;
  /** A PROXY header arrived from a source that is not trusted: count it and refuse the session. */
  untrustedHeader(session: S, sample: Buffer): void;
  /** The session is over (after events.closed): the listener forgets it and releases its source. */
  release(session: S): void;
}
