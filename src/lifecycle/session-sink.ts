import { formatHostPort } from '../config/values.js';
import type { CloseReason } from '../proxy/close-reason.js';
import type { Session } from '../proxy/session.js';
import type { SessionEvents } from '../proxy/session-context.js';
import type { Logger } from '../telemetry/logger.js';
import { accessLogger } from '../telemetry/logger.js';
import type { Metrics, RejectReason, Tally } from '../telemetry/metrics.js';
import type { Backend } from '../upstream/backend.js';
import type { Pool } from '../upstream/pool.js';

export interface SessionSinkDeps {
  readonly metrics: Metrics;
  /** The listener's logger (access lines carry its name, at info whatever its level: see accessLogger). */
  readonly logger: Logger;
  /** Read per session, so a reload that turns access logs on or off applies at once. */
  readonly accessLog: () => boolean;
  /** Passive health: a connect or exchange with `backend` failed or succeeded. */
  readonly passive: (pool: Pool, backend: Backend, ok: boolean) => void;
}

/** Connect errors that come from this host running short, not from the backend. */
const LOCAL_CONNECT_ERRORS = new Set(['EMFILE', 'ENFILE', 'ENOBUFS', 'ENOMEM', 'EADDRNOTAVAIL']);

/**
 * Close reasons the session reaches on its own (not through the listener's refusal) that still
 * mean the client was turned away before any byte reached a backend; counted in
 * sluice_listener_rejected_total.
 */
function closeRejectReason(reason: CloseReason): RejectReason | undefined {
  switch (reason) {
    case 'connect_failed':
      return 'no_backend';
    case 'preface_timeout':
    case 'queue_full':
    case 'queue_timeout':
      return reason;
    default:
      return undefined;
  }
}

/**
 * Where one listener's sessions report: Prometheus counters (tallied in plain numbers, summed at
 * scrape time), the access log, and passive health. Built at the composition root.
 */
export class SessionSink implements SessionEvents<Session> {
  readonly #name: string;
  readonly #deps: SessionSinkDeps;
  readonly #bytesUp;
  readonly #bytesDown;
  readonly #spliced;
  readonly #closed = new Map<CloseReason, Tally>();
  readonly #access: Logger;

  constructor(listener: string, deps: SessionSinkDeps) {
    this.#name = listener;
    this.#deps = deps;
    const m = deps.metrics;
    this.#bytesUp = m.tally(m.bytes, { listener, direction: 'upstream' });
    this.#bytesDown = m.tally(m.bytes, { listener, direction: 'downstream' });
    this.#spliced = m.tally(m.splicedSessions, { listener });
    this.#access = accessLogger(deps.logger);
  }

  bytes(toUpstream: number, toDownstream: number): void {
    this.#bytesUp.n += toUpstream;
    this.#bytesDown.n += toDownstream;
  }

  connectFailed(pool: Pool, backend: Backend, code: string): void {
    this.#deps.metrics.connectFailures.labels(pool.name, backend.address).inc();
    this.#deps.logger.debug({ pool: pool.name, backend: backend.address, code }, 'upstream connect failed');
    // Out of descriptors or local ports is this process's trouble, not the backend's: ejecting
    // healthy backends for it would turn a short squeeze into an outage.
    if (!LOCAL_CONNECT_ERRORS.has(code)) this.#deps.passive(pool, backend, false);
  }

  verdict(pool: Pool, backend: Backend, ok: boolean): void {
    this.#deps.passive(pool, backend, ok);
  }

  spliced(): void {
    this.#spliced.n++;
  }

  tlvsDropped(pool: Pool): void {
    this.#deps.metrics.proxyTlvsDropped.labels(pool.name).inc();
  }

  closed(session: Session, reason: CloseReason): void {
    const counted = closeRejectReason(reason);
    if (counted !== undefined) this.#deps.metrics.listenerRejected.labels(this.#name, counted).inc();
    this.#closedCounter(reason).n++;
    if (!this.#deps.accessLog()) return;
    this.#access.info(
      {
        id: session.id,
        pool: session.pool?.name,
        client: formatHostPort(session.clientIp, session.clientPort),
        backend: session.backend?.address,
        sni: session.sni,
        bytes_in: session.bytesIn,
        bytes_out: session.bytesOut,
        duration_ms: Math.round(performance.now() - session.started),
        attempts: session.attempts,
        reason,
        rejected: session.rejected,
        error: session.errorCode,
      },
      'session',
    );
  }

  /** The tally of sluice_sessions_closed_total for `reason`, made once per reason. */
  #closedCounter(reason: CloseReason): Tally {
    let c = this.#closed.get(reason);
    if (c === undefined) {
      const m = this.#deps.metrics;
      c = m.tally(m.sessionsClosed, { listener: this.#name, reason });
      this.#closed.set(reason, c);
    }
    return c;
  }
}
