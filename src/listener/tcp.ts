import net from 'node:net';
import type { ListenerConfig } from '../config/schema.js';
import { formatHostPort } from '../config/values.js';
import type { PrefaceHost } from '../proxy/preface.js';
import { PrefacePlan } from '../proxy/preface.js';
import { Session } from '../proxy/session.js';
import { SOCKET_HIGH_WATER_MARK } from '../proxy/socket-options.js';
import type { SessionContext, SessionEvents } from '../proxy/session-context.js';
import type { AcceptOwner, SpliceRelay } from '../relay/binding.js';
import { streamFd } from '../relay/node-handle.js';
import type { Logger } from '../telemetry/logger.js';
import type { RejectReason } from '../telemetry/metrics.js';
import { normalizeIp } from '../util/cidr.js';
import { errnoName } from '../util/errno.js';
import { escapeForLog } from '../util/escape.js';
import { Admission } from './admission.js';
import { listenError } from './bind-error.js';
import type { Listener, TcpListenerDeps } from './listener.js';

const SERVER_OPTIONS: net.ServerOpts = {
  allowHalfOpen: true,
  pauseOnConnect: true,
  noDelay: true,
  // No SO_KEEPALIVE: timeouts.idle reaps dead peers, and the setsockopt calls cost about a sixth
  // of the CPU per connection (bench connrate: 150 → 125 CPU-ms per 1k connections).
  keepAlive: false,
  highWaterMark: SOCKET_HIGH_WATER_MARK,
};

/** The close reason of a session the listener turned away. */
function rejectCloseReason(
  reason: RejectReason,
): 'no_backend' | 'proxy_protocol' | 'tls' | 'preface_timeout' | 'rejected' {
  switch (reason) {
    case 'no_backend':
    case 'proxy_protocol':
    case 'tls':
    case 'preface_timeout':
      return reason;
    default:
      return 'rejected';
  }
}

/** The listener caps its sessions across the replicas. */
export function clusterLimited(cfg: ListenerConfig): boolean {
  return (
    cfg.protocol === 'tcp' && cfg.limits.max_connections > 0 && cfg.limits.max_connections_scope === 'cluster'
  );
}

/**
 * A TCP listener: accepts (through the splice relay, or a net.Server), applies the ACL and limits
 * on the client address, and routes each connection to a pool, where a Session takes it. Reload
 * swaps its config in place; the socket stays bound.
 */
export class TcpListener implements Listener, PrefaceHost, AcceptOwner {
  /**
   * Bind with SO_REUSEPORT (Node >= 22.12): set once by a worker process before anything binds,
   * so the workers of a host share each port and the kernel spreads connections over them.
   */
  static reusePort = false;
  readonly name: string;
  readonly logger: Logger;
  readonly sessions = new Set<Session>();
  /** What this listener's sessions see of it: settings, the relay, where they report. */
  readonly #context: SessionContext<Session>;
  #cfg: ListenerConfig;
  readonly #deps: TcpListenerDeps;
  readonly #server: net.Server;
  #admission: Admission;
  readonly #accepted;
  #lastAcceptError = 0;
  #preface: PrefacePlan | undefined;
  /** Address actually bound (port 0 in the config picks a free one). */
  boundAddress = '';
  /**
   * Under a cluster-scoped `limits.max_connections`: the most sessions this process may hold now,
   * set by the state sync (its grant, or its local share while the store is out); 0 until the
   * first grant.
   */
  clusterCap = 0;
  /** Sessions admitted past `max_connections` since start (the state sync sizes its holds on it). */
  admitted = 0;
  /** The splice relay accepting this listener's connections, and its acceptor id. */
  #acceptor: { relay: SpliceRelay; id: number } | undefined;
  /** A listening socket systemd passed for this address (socket activation), adopted instead of binding. */
  readonly #passedFd: number | undefined;

  constructor(cfg: ListenerConfig, deps: TcpListenerDeps, passedFd?: number) {
    this.name = cfg.name;
    this.#passedFd = passedFd;
    this.#cfg = cfg;
    this.#deps = deps;
    this.logger = deps.logger.child({ listener: cfg.name });
    this.#context = this.#sessionContext(deps.sessionEvents(cfg.name, this.logger));
    this.#admission = new Admission(cfg);
    this.#accepted = deps.metrics.tally(deps.metrics.listenerConnections, { listener: cfg.name });
    this.#preface = PrefacePlan.needed(cfg) ? new PrefacePlan(cfg) : undefined;
    this.#server = net.createServer(SERVER_OPTIONS, (s) => this.#onConnection(s));
    this.#server.on('error', (err: NodeJS.ErrnoException) => this.#acceptFailed(err.code ?? 'EIO'));
  }

  get config(): ListenerConfig {
    return this.#cfg;
  }

  get openCount(): number {
    return this.sessions.size;
  }

  #sessionContext(events: SessionEvents<Session>): SessionContext<Session> {
    // eslint-disable-next-line @typescript-eslint/no-this-alias -- the getters below read private fields
    const listener = this;
    return {
      get config() {
        return listener.#cfg;
      },
      sweeper: this.#deps.sweeper,
      // The relay for new sessions (config `relay`): a reload applies to new sessions.
      get relay() {
        return listener.#deps.splice;
      },
      events,
      untrustedHeader: (session, sample) => {
        this.proxyError(session, 'untrusted_source', sample);
        this.reject(session, 'proxy_protocol');
      },
      release: (session) => {
        this.sessions.delete(session);
        if (session.sourceCounted) this.#admission.release(session.clientIp);
      },
    };
  }

  closeAll(reason: 'shutdown'): void {
    for (const s of [...this.sessions]) s.close(reason);
  }

  /** True when this listener took a socket systemd passed instead of binding its own. */
  get passed(): boolean {
    return this.#passedFd !== undefined;
  }

  /** Binds the socket. Rejects with a one-line message such as `listener "web": 0.0.0.0:443 already in use`. */
  listen(): Promise<void> {
    const { host, port } = this.#cfg.bind;
    return new Promise((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException): void => reject(listenError(this.name, host, port, err));
      this.#server.once('error', onError);
      const opts = { host, port, backlog: 4096, ipv6Only: host === '::' ? false : undefined };
      // A passed socket is listening already; listen() on it again only sets the same backlog.
      const how =
        this.#passedFd !== undefined
          ? { fd: this.#passedFd, backlog: 4096 }
          : TcpListener.reusePort
            ? { ...opts, reusePort: true }
            : opts;
      this.#server.listen(how, () => {
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
    const fd = streamFd(this.#server);
    if (relay === undefined || fd === undefined) return;
    // A passed socket is shared by every worker of the host; a reuseport socket is this one's.
    this.#acceptor = { relay, id: relay.listen(this, fd, this.#passedFd !== undefined) };
    this.#server.close();
  }

  /** @internal A connection accepted by the splice relay, or an accept failure (fd = -errno). */
  accepted(fd: number, ip: string, port: number): void {
    if (fd < 0) this.#acceptFailed(errnoName(-fd));
    else this.#admit(new Session(this.#context, fd, ip, port));
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
    // A limit becoming cluster-wide starts from no grant (the old cap is not covered by the store).
    if (!clusterLimited(this.#cfg) && clusterLimited(cfg)) this.clusterCap = 0;
    this.#cfg = cfg;
    this.#admission = new Admission(cfg);
    this.#preface = PrefacePlan.needed(cfg) ? new PrefacePlan(cfg) : undefined;
    // The new limits start from the clients open now (counted or not under the old ones).
    for (const s of this.sessions) s.sourceCounted = this.#admission.admitSource(s.clientIp, 0) === 'counted';
  }

  allowed(ip: string): boolean {
    return this.#admission.allowed(ip);
  }

  /** Applies per-source limits to a session's client; refuses it and returns false when over. */
  admitSource(session: Session): boolean {
    const verdict = this.#admission.admitSource(session.clientIp, this.#deps.sweeper.now);
    if (verdict === 'counted' || verdict === 'uncounted') {
      session.sourceCounted = verdict === 'counted';
      return true;
    }
    this.reject(session, verdict);
    return false;
  }

  /** Closes a session that was turned away before contacting a backend, counting why. */
  reject(session: Session, reason: RejectReason): void {
    this.#deps.metrics.listenerRejected.labels(this.name, reason).inc();
    session.rejected = reason;
    session.close(rejectCloseReason(reason));
  }

  proxyError(session: Session, reason: string, sample: Buffer): void {
    this.#deps.metrics.proxyProtocolErrors.labels(this.name, reason).inc();
    this.logger.debug(
      {
        client: formatHostPort(session.clientIp, session.clientPort),
        reason,
        head: escapeForLog(sample.subarray(0, 64), 64),
      },
      'PROXY header refused',
    );
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

  #onConnection(socket: net.Socket): void {
    const remote = socket.remoteAddress;
    if (remote === undefined) {
      socket.destroy();
      return;
    }
    this.#admit(new Session(this.#context, socket, normalizeIp(remote), socket.remotePort ?? 0));
  }

  #admit(session: Session): void {
    this.#accepted.n++;
    this.sessions.add(session);
    if (this.#deps.overload?.active === true) return this.reject(session, 'overload');
    const { max_connections: max, max_connections_scope: scope } = this.#cfg.limits;
    if (max > 0 && this.sessions.size > (scope === 'cluster' ? this.clusterCap : max))
      return this.reject(session, 'max_connections');
    this.admitted++;
    if (this.#preface !== undefined) return this.#preface.begin(session, this);
    if (!this.allowed(session.clientIp)) return this.reject(session, 'acl');
    if (this.admitSource(session)) this.route(session, this.#cfg.pool);
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
