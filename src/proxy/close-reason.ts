/**
 * Why a TCP session ended; printed as `reason` in its access-log line and counted in
 * sluice_sessions_closed_total. One catalogue for the whole data path.
 */
export type CloseReason =
  /** The client sent FIN first; both directions then finished normally. */
  | 'downstream_closed'
  /** The backend sent FIN first; both directions then finished normally. */
  | 'upstream_closed'
  /** The client reset the connection or its socket failed. */
  | 'downstream_error'
  /** The backend reset the connection or its socket failed after connecting. */
  | 'upstream_error'
  /** No traffic either way for timeouts.idle. */
  | 'idle_timeout'
  /** One side had sent FIN and nothing moved for timeouts.half_closed. */
  | 'half_closed_timeout'
  /** Every connect attempt (1 + connect_retries) failed or timed out. */
  | 'connect_failed'
  /** The pool had no ready backend. */
  | 'no_backend'
  /** The PROXY header or ClientHello did not complete within timeouts.preface. */
  | 'preface_timeout'
  /** A missing, malformed or untrusted PROXY header. */
  | 'proxy_protocol'
  /** Not TLS, an unparseable ClientHello, or no route for its SNI with on_no_match: reject. */
  | 'tls'
  /** Every ready backend was at max_connections_per_backend and the pool's queue was full. */
  | 'queue_full'
  /** Waited queue_timeout in the pool's queue without a backend slot freeing. */
  | 'queue_timeout'
  /** The backend was drained (admin, reload, discovery) and its drain deadline passed. */
  | 'backend_drained'
  /** The process was shutting down and shutdown.drain_timeout passed. */
  | 'shutdown'
  /** Refused before any backend was contacted (ACL, limits); the listener counts the exact reason. */
  | 'rejected';
