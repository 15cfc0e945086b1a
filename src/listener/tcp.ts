import net from 'node:net';
import type { ListenerConfig } from '../config/schema.js';
import { formatHostPort } from '../config/values.js';
import type { Session, SessionHost } from '../proxy/session.js';
import { Session as TcpSession } from '../proxy/session.js';
import type { CloseReason } from '../proxy/close-reason.js';
import type { Logger } from '../telemetry/logger.js';
import type { RejectReason } from '../telemetry/metrics.js';
import type { Counter } from 'prom-client';
import type { Backend } from '../upstream/backend.js';
import type { Pool } from '../upstream/pool.js';
import { CidrSet, normalizeIp } from '../util/cidr.js';
import type { Sweeper } from '../util/sweeper.js';
import { SourceLimits } from './source-limits.js';
import { listenError } from './bind-error.js';
import { PrefacePlan } from '../proxy/preface.js';
import type { PrefaceHost } from '../proxy/preface.js';
import { proxyPreamble } from '../proxy/proxy-out.js';
import { escapeForLog } from '../util/escape.js';
import type { Listener, ListenerDeps } from './listener.js';
import type { AcceptOwner, SpliceRelay } from '../proxy/splice-relay.js';
import { errnoName } from '../util/errno.js';

const SERVER_OPTIONS: net.ServerOpts = {
  allowHalfOpen: true,
  pauseOnConnect: true,
  noDelay: true,
  // No SO_KEEPALIVE: timeouts.idle reaps dead peers, and the setsockopt calls cost about a sixth
  // of the CPU per connection (bench connrate: 150 → 125 CPU-ms per 1k connections).
  keepAlive: false,
  highWaterMark: 256 * 1024,
};

/**
 * A TCP listener: accepts, applies the ACL and limits on the client address, and hands each
 * connection to a Session. Reload swaps its config in place; the socket stays bound.
 */
export class TcpListener implements SessionHost, Listener, PrefaceHost, AcceptOwner {
  /**
   * Bind with SO_REUSEPORT (Node >= 22.12): set once by a worker process before anything binds,
   * so the workers of a host share each port and the kernel spreads connections over them.
   */
  static reusePort = false;
  readonly name: string;
  readonly logger: Logger;
  readonly sweeper: Sweeper;
  #cfg: ListenerConfig;
  readonly #deps: ListenerDeps;
  readonly #server: net.Server;
  readonly sessions = new Set<Session>();
  #allow: CidrSet;
  #deny: CidrSet;
  #limits: SourceLimits;
  #bytesUp;
  #bytesDown;
  #spliced;
  #accepted;
  #lastAcceptError = 0;
  #preface: PrefacePlan | undefined;
  #proxyErrors;
  /** Address actually bound (port 0 in the config picks a free one). */
  boundAddress = '';
  /** The splice relay accepting this listener's connections, and its acceptor id. */
  #acceptor: { relay: SpliceRelay; id: number } | undefined;

  constructor(cfg: ListenerConfig, deps: ListenerDeps) {
    this.name = cfg.name;
    this.#cfg = cfg;
    this.#deps = deps;
    this.logger = deps.logger.child({ listener: cfg.name });
    this.sweeper = deps.sweeper;
    this.#allow = CidrSet.parse(cfg.access.allow);
    this.#deny = CidrSet.parse(cfg.access.deny);
    this.#limits = new SourceLimits(cfg.limits.per_source_connections, cfg.limits.per_source_rate);
    this.#bytesUp = deps.metrics.bytes.labels(cfg.name, 'upstream');
    this.#bytesDown = deps.metrics.bytes.labels(cfg.name, 'downstream');
    this.#spliced = deps.metrics.splicedSessions.labels(cfg.name);
    this.#accepted = deps.metrics.listenerConnections.labels(cfg.name);
    this.#proxyErrors = deps.metrics.proxyProtocolErrors;
    this.#preface = PrefacePlan.needed(cfg) ? new PrefacePlan(cfg) : undefined;
    this.#server = net.createServer(SERVER_OPTIONS, (s) => this.#onConnection(s));
    this.#server.on('error', (err: NodeJS.ErrnoException) => this.#onServerError(err));
  }

  get config(): ListenerConfig {
    return this.#cfg;
  }

  /** Read per session, so a reload that turns access logs on or off applies at once. */
  get accessLog(): boolean {
    return this.#deps.accessLog;
  }

  get openCount(): number {
    return this.sessions.size;
  }

  closeAll(reason: 'shutdown'): void {
    for (const s of [...this.sessions]) s.close(reason);
  }

  get splice(): SpliceRelay | undefined {
    return this.#deps.splice;
  }

  spliced(): void {
    this.#spliced.inc();
  }

  get connectTimeoutMs(): number {
    return this.#cfg.timeouts.connect;
  }

  get halfClosedTimeoutMs(): number {
    return this.#cfg.timeouts.half_closed;
  }

  get idleTimeoutMs(): number {
    return this.#cfg.timeouts.idle;
  }

  /** Binds the socket. Rejects with a one-line message such as `listener "web": 0.0.0.0:443 already in use`. */
  listen(): Promise<void> {
    const { host, port } = this.#cfg.bind;
    return new Promise((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException): void => reject(listenError(this.name, host, port, err));
      this.#server.once('error', onError);
      const opts = { host, port, backlog: 4096, ipv6Only: host === '::' ? false : undefined };
      this.#server.listen(TcpListener.reusePort ? { ...opts, reusePort: true } : opts, () => {
        this.#server.off('error', onError);
        const a = this.#server.address();
        this.boundAddress = a !== null && typeof a === 'object' ? formatHostPort(a.address, a.port) : '';
        this.#acceptThroughRelay();
        resolve();
      });
    });
  }

  /**
   * With the splice relay loaded, the relay accepts this listener's connections: it keeps its own
   * copy of the bound socket and the net.Server closes its descriptor (the socket stays bound
   * and listening). An accepted client costs no net.Socket unless it needs one (a preface, Node
   * streams), and a reload keeps accepting through the relay whatever `relay` becomes.
   */
  #acceptThroughRelay(): void {
    const relay = this.#deps.splice;
    const fd = (this.#server as unknown as { _handle?: { fd?: number } | null })._handle?.fd;
    if (relay === undefined || typeof fd !== 'number' || fd < 0) return;
    this.#acceptor = { relay, id: relay.listen(this, fd) };
    this.#server.close();
  }

  /** @internal A connection accepted by the splice relay, or an accept failure (fd = -errno). */
  accepted(fd: number, ip: string, port: number): void {
    if (fd < 0) {
      this.#acceptFailed(errnoName(-fd));
      return;
    }
    this.#admit(new TcpSession(this, fd, normalizeIp(ip), port));
  }

  /** Stops accepting at once; open sessions go on (net.Server's close callback would wait for them). */
  close(): Promise<void> {
    if (this.#acceptor !== undefined) {
      this.#acceptor.relay.unlisten(this.#acceptor.id);
      this.#acceptor = undefined;
    }
    if (this.#server.listening) this.#server.close();
    return Promise.resolve();
  }

  /** Applies a new config with the same bind address (reload). Open sessions keep their backend. */
  update(cfg: ListenerConfig): void {
    this.#cfg = cfg;
    this.#allow = CidrSet.parse(cfg.access.allow);
    this.#deny = CidrSet.parse(cfg.access.deny);
    this.#limits = new SourceLimits(cfg.limits.per_source_connections, cfg.limits.per_source_rate);
    this.#preface = PrefacePlan.needed(cfg) ? new PrefacePlan(cfg) : undefined;
    for (const s of this.sessions)
      if (cfg.limits.per_source_connections > 0) this.#limits.admit(s.clientIp, 0);
  }

  /** The ACL on the client address (the PROXY header's, once trusted). */
  allowed(ip: string): boolean {
    // The default lists (allow everything, deny nothing) cost nothing per connection.
    if (this.#deny.size === 0 && this.#allow.coversAll) return true;
    return this.#allow.has(ip) && !this.#deny.has(ip);
  }

  /** Applies per-source limits to a session's client; closes it and returns false when over. */
  admitSource(session: Session): boolean {
    if (!this.#limits.enabled) return true;
    const verdict = this.#limits.admit(session.clientIp, this.sweeper.now);
    if (verdict === 'ok') {
      sourceCounted.add(session);
      return true;
    }
    this.reject(session, verdict);
    return false;
  }

  /** Closes a session that was turned away before contacting a backend, counting why. */
  reject(session: Session, reason: RejectReason): void {
    this.#deps.metrics.listenerRejected.labels(this.name, reason).inc();
    rejectedFor.set(session, reason);
    session.close(rejectCloseReason(reason));
  }

  countBytes(toUpstream: number, toDownstream: number): void {
    if (toUpstream > 0) this.#bytesUp.inc(toUpstream);
    if (toDownstream > 0) this.#bytesDown.inc(toDownstream);
  }

  connectFailed(pool: Pool, backend: Backend, code: string): void {
    this.#deps.metrics.connectFailures.labels(pool.name, backend.address).inc();
    this.logger.debug({ pool: pool.name, backend: backend.address, code }, 'upstream connect failed');
    // Out of descriptors or local ports is this process's trouble, not the backend's: ejecting
    // healthy backends for it would turn a short squeeze into an outage.
    if (!LOCAL_CONNECT_ERRORS.has(code)) this.#deps.passive(pool, backend, false);
  }

  backendVerdict(pool: Pool, backend: Backend, ok: boolean): void {
    this.#deps.passive(pool, backend, ok);
  }

  upstreamPreamble(session: Session, pool: Pool): Buffer | undefined {
    const r = proxyPreamble(session, pool, this.#cfg);
    if (r?.droppedPassTlvs === true) this.#deps.metrics.proxyTlvsDropped.labels(pool.name).inc();
    return r?.header;
  }

  proxyError(session: Session, reason: string, sample: Buffer): void {
    this.#proxyErrors.labels(this.name, reason).inc();
    this.logger.debug(
      {
        client: formatHostPort(session.clientIp, session.clientPort),
        reason,
        head: escapeForLog(sample.subarray(0, 64), 64),
      },
      'PROXY header refused',
    );
  }

  untrustedHeader(session: Session, sample: Buffer): void {
    this.proxyError(session, 'untrusted_source', sample);
    this.reject(session, 'proxy_protocol');
  }

  /** Routes a session that needs no preface, or whose preface is done, to `pool`. */
  route(session: Session, poolName: string): void {
    const pool = this.#deps.pool(poolName);
    if (pool === undefined || pool.available === 0) {
      this.reject(session, 'no_backend');
      return;
    }
    session.connect(pool);
  }

  sessionClosed(session: Session, reason: CloseReason): void {
    this.sessions.delete(session);
    if (sourceCounted.delete(session)) this.#limits.release(session.clientIp);
    const counted = closeRejectReason(reason);
    if (counted !== undefined) this.#deps.metrics.listenerRejected.labels(this.name, counted).inc();
    this.#closedCounter(reason).inc();
    if (this.accessLog) {
      this.logger.info(
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
          rejected: rejectedFor.get(session),
          error: session.errorCode,
        },
        'session',
      );
    }
  }

  #onConnection(socket: net.Socket): void {
    const remote = socket.remoteAddress;
    if (remote === undefined) {
      socket.destroy();
      return;
    }
    this.#admit(new TcpSession(this, socket, normalizeIp(remote), socket.remotePort ?? 0));
  }

  #admit(session: Session): void {
    this.#accepted.inc();
    this.sessions.add(session);
    if (this.#deps.overload?.active === true) {
      this.reject(session, 'overload');
      return;
    }
    if (this.sessions.size > this.#cfg.limits.max_connections && this.#cfg.limits.max_connections > 0) {
      this.reject(session, 'max_connections');
      return;
    }
    if (this.#preface !== undefined) {
      this.#preface.begin(session, this);
      return;
    }
    if (!this.allowed(session.clientIp)) {
      this.reject(session, 'acl');
      return;
    }
    if (!this.admitSource(session)) return;
    this.route(session, this.#cfg.pool);
  }

  readonly #closed = new Map<CloseReason, Counter.Internal>();

  /** The labelled child of sluice_sessions_closed_total, fetched once per reason. */
  #closedCounter(reason: CloseReason): Counter.Internal {
    let c = this.#closed.get(reason);
    if (c === undefined) {
      c = this.#deps.metrics.sessionsClosed.labels(this.name, reason);
      this.#closed.set(reason, c);
    }
    return c;
  }

  #onServerError(err: NodeJS.ErrnoException): void {
    this.#acceptFailed(err.code ?? 'EIO');
  }

  /**
   * accept() failures (EMFILE, ENFILE, ENOBUFS) once the socket is bound. libuv and the splice
   * relay both keep a spare descriptor to shed the pending connection, so this does not spin;
   * log at most once a second and count every one.
   */
  #acceptFailed(code: string): void {
    this.#deps.metrics.acceptErrors.labels(this.name, code).inc();
    const now = performance.now();
    if (now - this.#lastAcceptError > 1000) {
      this.#lastAcceptError = now;
      this.logger.warn({ code }, 'accept failed');
    }
  }
}

/** Sessions whose source was counted by SourceLimits, so exactly those are released. */
const sourceCounted = new WeakSet<Session>();

/** Why the listener turned a session away, for its access-log line (`rejected`). */
const rejectedFor = new WeakMap<Session, RejectReason>();

/** Connect errors that come from this host running short, not from the backend. */
const LOCAL_CONNECT_ERRORS = new Set(['EMFILE', 'ENFILE', 'ENOBUFS', 'ENOMEM', 'EADDRNOTAVAIL']);

/**
 * Close reasons the session reaches on its own (not through `reject`) that still mean the client
 * was turned away before any byte reached a backend; counted in sluice_listener_rejected_total.
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

function rejectCloseReason(reason: RejectReason): CloseReason {
  switch (reason) {
    case 'no_backend':
      return 'no_backend';
    case 'proxy_protocol':
      return 'proxy_protocol';
    case 'tls':
      return 'tls';
    case 'preface_timeout':
      return 'preface_timeout';
    default:
      return 'rejected';
  }
}
