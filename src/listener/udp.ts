import type dgram from 'node:dgram';
import { isIP } from 'node:net';
import type { Counter } from 'prom-client';
import type { ListenerConfig } from '../config/schema.js';
import { formatHostPort } from '../config/values.js';
import { Flow, type FlowHost } from '../proxy/flow.js';
import { FlowTable } from '../proxy/flow-table.js';
import type { Logger } from '../telemetry/logger.js';
import { accessLogger } from '../telemetry/logger.js';
import type { Backend } from '../upstream/backend.js';
import type { Pool } from '../upstream/pool.js';
import { normalizeIp } from '../util/cidr.js';
import { Admission } from './admission.js';
import { listenError } from './bind-error.js';
import type { Listener, ListenerDeps } from './listener.js';
import type { DatagramOwner, SpliceRelay } from '../relay/binding.js';
import { errnoName } from '../util/errno.js';
import { datagramFd } from '../relay/node-handle.js';
import { flowHeader, listenerSocket, ownAddresses, tuneBuffers } from './udp-socket.js';
import { QuicRouter, type QuicRoute } from './quic-router.js';

/** Source ports below this are refused when `udp.drop_privileged_sources` is on. */
const FIRST_UNPRIVILEGED_PORT = 1024;

/**
 * A UDP listener: one socket bound to the listener address, and a flow per client (address,
 * port) with its own connected upstream socket. Replies leave from the listener socket, so the
 * client sees them come from the address it sent to.
 *
 * Per datagram from a known client the work is a Map lookup by `${address}:${port}` and one
 * send; filters that need no table (loop, privileged source port) come first. A datagram from
 * an unknown client creates a flow after the ACL, `udp.max_flows` and a pick succeed.
 *
 * Drops (sluice_udp_dropped_total{reason}): `loop` (source is the listener's own address and
 * port, or the picked backend is the listener itself), `privileged_source`,
 * `connecting_overflow` (more than a few datagrams while the upstream socket connects),
 * `closing` (a new client while the listener drains), and send/receive errors as the
 * lower-case errno code (`emsgsize`, `enobufs`, `econnrefused`…). Datagrams that would have
 * created a flow and were refused count in sluice_listener_rejected_total instead: `acl`,
 * `flow_limit`, `no_backend`.
 */
export class UdpListener implements Listener, FlowHost, DatagramOwner {
  /**
   * Bind with SO_REUSEPORT (Node >= 22.12): set once by a worker process before anything binds.
   * The kernel hashes each client's 4-tuple to one worker, so a flow stays on one process.
   */
  static reusePort = false;
  readonly name: string;
  readonly logger: Logger;
  /** Flow lines: written when access_log is on, whatever the log level (see accessLogger). */
  readonly #access: Logger;
  readonly downstream: dgram.Socket;
  /** Address actually bound (port 0 in the config picks a free one); '' before listen. */
  boundAddress = '';
  #cfg: ListenerConfig;
  readonly #deps: ListenerDeps;
  readonly #table: FlowTable;
  /** The ACL, shared with TCP listeners (per-source limits apply to TCP connections only). */
  #admission: Admission;
  #boundIp = '';
  #boundPort = -1;
  /** Addresses that mean "this listener" when paired with its port (all local ones for a wildcard bind). */
  #ownIps = new Set<string>();
  #bound = false;
  #closing = false;
  #socketClosed = false;
  #lastSocketError = 0;
  readonly #warnedV1 = new Set<string>();
  readonly #counters;
  readonly #drops = new Map<string, Counter.Internal>();
  /**
   * The flow of the last datagram Node read. Datagrams come in runs from one client, and the
   * address and port compare cheaper than building the table key and hashing it each time.
   */
  #last: Flow | undefined;
  /** The splice relay reading this socket (recvmmsg) and forwarding known flows; see listen(). */
  native: { readonly relay: SpliceRelay; readonly id: number } | undefined;
  /** Routing by QUIC connection ID (`quic`); kept once made, so a reload that turns it off still files out live flows. */
  #quic: QuicRouter | undefined;

  constructor(cfg: ListenerConfig, deps: ListenerDeps) {
    this.name = cfg.name;
    this.#cfg = cfg;
    this.#deps = deps;
    this.logger = deps.logger.child({ listener: cfg.name });
    this.#access = accessLogger(this.logger);
    this.#admission = new Admission(cfg);
    this.#table = new FlowTable(cfg.udp.flow_idle, deps.sweeper.tickMs);
    const m = deps.metrics;
    this.#counters = {
      flowsCreated: m.listenerConnections.labels(cfg.name),
      datagramsUp: m.udpDatagrams.labels(cfg.name, 'upstream'),
      datagramsDown: m.udpDatagrams.labels(cfg.name, 'downstream'),
      bytesUp: m.bytes.labels(cfg.name, 'upstream'),
      bytesDown: m.bytes.labels(cfg.name, 'downstream'),
      acl: m.listenerRejected.labels(cfg.name, 'acl'),
      flowLimit: m.listenerRejected.labels(cfg.name, 'flow_limit'),
      noBackend: m.listenerRejected.labels(cfg.name, 'no_backend'),
      overload: m.listenerRejected.labels(cfg.name, 'overload'),
      loop: m.udpDrops.labels(cfg.name, 'loop'),
      privileged: m.udpDrops.labels(cfg.name, 'privileged_source'),
    };
    const ipv6 = isIP(cfg.bind.host) === 6;
    this.downstream = listenerSocket(ipv6, UdpListener.reusePort);
    this.downstream.on('error', (err: NodeJS.ErrnoException) => this.#onSocketError(err));
    this.downstream.on('message', (msg: Buffer, rinfo: dgram.RemoteInfo) =>
      this.#onMessage(msg, rinfo.address, rinfo.port),
    );
    this.#warnV1(cfg.pool);
    this.#updateQuic(cfg);
  }

  get config(): ListenerConfig {
    return this.#cfg;
  }

  /** Live flows (the sluice_udp_flows gauge). */
  get flows(): number {
    return this.#table.size;
  }

  get openCount(): number {
    return this.#table.size;
  }

  /** Sweeper time of the last tick: flows stamp activity with it. */
  get now(): number {
    return this.#deps.sweeper.now;
  }

  /** Binds the socket. Rejects with a one-line message such as `listener "dns": 0.0.0.0:53 already in use`. */
  listen(): Promise<void> {
    const { host, port } = this.#cfg.bind;
    return new Promise((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException): void => reject(listenError(this.name, host, port, err));
      this.downstream.once('error', onError);
      this.downstream.bind({ address: host, port, exclusive: true }, () => {
        this.downstream.off('error', onError);
        this.#bound = true;
        const a = this.downstream.address();
        this.#boundIp = normalizeIp(a.address);
        this.#boundPort = a.port;
        this.#ownIps = ownAddresses(this.#boundIp);
        this.boundAddress = formatHostPort(a.address, a.port);
        this.#deps.sweeper.add(this.#table);
        this.#readThroughRelay();
        tuneBuffers(this.downstream, this.native !== undefined, this.logger);
        resolve();
      });
    });
  }

  /**
   * Stops creating flows; live flows go on (their replies need this socket), and the socket is
   * closed when the last one ends. Resolves at once, so a drain can wait on `openCount`.
   */
  close(): Promise<void> {
    this.#closing = true;
    if (this.#table.size === 0) this.#closeSocket();
    return Promise.resolve();
  }

  /** Applies a new config with the same bind address (reload). Live flows keep their pool and backend. */
  update(cfg: ListenerConfig): void {
    this.#cfg = cfg;
    this.#admission = new Admission(cfg);
    this.#table.idleMs = cfg.udp.flow_idle;
    this.#warnV1(cfg.pool);
    this.#updateQuic(cfg);
  }

  #updateQuic(cfg: ListenerConfig): void {
    if (cfg.quic === undefined) this.#quic?.update({ enabled: false, unroutable: 'flow' });
    else if (this.#quic !== undefined) this.#quic.update(cfg.quic);
    else if (cfg.quic.enabled) this.#quic = new QuicRouter(cfg.name, cfg.quic, this.#deps.metrics);
  }

  closeAll(reason: 'shutdown'): void {
    for (const flow of this.#table.all()) flow.close(reason);
  }

  /** The ACL on the client address. */
  allowed(ip: string): boolean {
    return this.#admission.allowed(ip);
  }

  /**
   * With the splice relay loaded, it reads this socket instead of Node: datagrams in batches
   * (recvmmsg), those of known flows straight to their backend's connected socket (sendmmsg)
   * and replies back the same way; a datagram from a new client comes to datagram() below,
   * which runs the same checks and creates the flow in the relay.
   */
  #readThroughRelay(): void {
    const relay = this.#deps.splice;
    if (relay === undefined) return;
    const socket = datagramFd(this.downstream);
    if (socket === undefined) return;
    this.native = { relay, id: relay.udpListen(this, socket.fd) };
    socket.stopReading();
  }

  /** @internal A datagram of a client without a flow, read by the splice relay (port < 0: -errno). */
  datagram(ip: string, port: number, payload: Buffer): void {
    if (port < 0) {
      this.#onSocketError(Object.assign(new Error('recvmmsg'), { code: errnoName(-port) }));
      return;
    }
    this.#onMessage(payload, ip, port);
  }

  // ---- FlowHost ----

  drop(reason: string, count = 1): void {
    let c = this.#drops.get(reason);
    if (c === undefined) {
      c = this.#deps.metrics.udpDrops.labels(this.name, reason);
      this.#drops.set(reason, c);
    }
    c.inc(count);
  }

  relayed(direction: 'upstream' | 'downstream', datagrams: number, bytes: number): void {
    const c = this.#counters;
    if (direction === 'upstream') {
      c.datagramsUp.inc(datagrams);
      if (bytes > 0) c.bytesUp.inc(bytes);
    } else {
      c.datagramsDown.inc(datagrams);
      if (bytes > 0) c.bytesDown.inc(bytes);
    }
  }

  passive(flow: Flow, ok: boolean): void {
    this.#deps.passive(flow.pool, flow.backend, ok);
  }

  closed(flow: Flow, reason: string): void {
    if (this.#last === flow) this.#last = undefined;
    this.#table.delete(flow);
    flow.pool.release(flow.backend, flow);
    if (this.#deps.accessLog) this.#accessLine(flow, reason);
    this.#quic?.detach(flow);
    if (this.#closing && this.#table.size === 0) this.#closeSocket();
  }

  serverCid(flow: Flow, bytes: Uint8Array, offset: number, length: number): void {
    this.#quic?.learn(flow, bytes, offset, length);
  }

  // ---- datagram path ----

  #onMessage(msg: Buffer, address: string, port: number): void {
    const last = this.#last;
    // The last client again: it passed every check below when its flow was found or created.
    if (last !== undefined && last.clientPort === port && last.replyAddress === address) {
      last.fromClient(msg);
      return;
    }
    // Only a source on our own port can be ourselves: the address test runs for those alone.
    if (port === this.#boundPort && this.#ownIps.has(normalizeIp(address))) {
      this.#counters.loop.inc();
      return;
    }
    if (port < FIRST_UNPRIVILEGED_PORT && this.#cfg.udp.drop_privileged_sources) {
      this.#counters.privileged.inc();
      return;
    }
    const key = `${address}:${port}`;
    const flow = this.#table.get(key) ?? this.#newFlow(key, address, port, msg);
    if (flow === undefined) return;
    this.#last = flow;
    flow.fromClient(msg);
  }

  /**
   * Admits a new client: ACL, flow cap, a pick (on a QUIC listener, by the datagram's
   * connection ID first), then a flow with its upstream socket.
   */
  #newFlow(key: string, address: string, port: number, msg: Buffer): Flow | undefined {
    if (this.#closing) {
      this.drop('closing');
      return undefined;
    }
    // Above the memory threshold no new flow is created; live flows go on, as TCP sessions do.
    if (this.#deps.overload?.active === true) return void this.#counters.overload.inc();
    const ip = normalizeIp(address);
    if (!this.allowed(ip)) return void this.#counters.acl.inc();
    if (this.#table.size >= this.#cfg.udp.max_flows) return void this.#counters.flowLimit.inc();
    const pool = this.#deps.pool(this.#cfg.pool);
    if (pool === undefined) return void this.#counters.noBackend.inc();
    const quic = this.#quic?.enabled === true ? this.#quic : undefined;
    const route: QuicRoute | undefined = quic?.route(msg, pool, ip, port);
    if (route?.kind === 'drop') return undefined;
    const backend =
      route?.kind === 'backend'
        ? route.backend
        : pool.pick({ clientIp: ip, clientPort: port, sni: undefined }, undefined);
    if (backend === undefined) return void this.#counters.noBackend.inc();
    if (this.#isSelf(backend)) return void this.#counters.loop.inc();
    try {
      const flow = new Flow(
        this,
        key,
        { replyAddress: address, ip, port },
        pool,
        backend,
        this.#header(pool, ip, port),
        this.#cfg.udp.max_replies_per_datagram,
        route?.kind === 'backend',
      );
      this.#table.add(flow);
      pool.acquire(backend, flow);
      this.#counters.flowsCreated.inc();
      quic?.attach(flow, route);
      flow.start();
      return flow;
    } catch (err) {
      // Not expected (socket creation and header encoding do not throw on valid input); a bug
      // here must cost one datagram, not the process.
      this.logger.error({ err, client: formatHostPort(ip, port) }, 'flow setup failed');
      this.drop('internal');
      return undefined;
    }
  }

  /** A backend that is this listener would loop every datagram back to us. */
  #isSelf(b: Backend): boolean {
    return b.port === this.#boundPort && this.#ownIps.has(normalizeIp(b.host));
  }

  /** The PROXY v2 header of a flow (v2 pools only; v1 has no UDP form). */
  #header(pool: Pool, ip: string, port: number): Buffer | undefined {
    const mode = pool.config.proxy_protocol;
    if (mode === 'v1') this.#warnV1(pool.name);
    return mode === 'v2' ? flowHeader(this.#boundIp, this.#boundPort, ip, port) : undefined;
  }

  /** PROXY v1 is a TCP text line; a UDP pool gets no header rather than a malformed one. */
  #warnV1(poolName: string): void {
    if (this.#warnedV1.has(poolName) || this.#deps.pool(poolName)?.config.proxy_protocol !== 'v1') return;
    this.#warnedV1.add(poolName);
    this.logger.warn(
      { pool: poolName },
      'proxy_protocol v1 has no UDP form; datagrams are sent without a PROXY header',
    );
  }

  #accessLine(flow: Flow, reason: string): void {
    const quic = this.#quic?.describe(flow);
    this.#access.info(
      {
        ...(quic !== undefined ? { route: quic.route, cid: quic.cid } : {}),
        pool: flow.pool.name,
        client: formatHostPort(flow.clientIp, flow.clientPort),
        backend: flow.backend.address,
        bytes_in: flow.bytesIn,
        bytes_out: flow.bytesOut,
        datagrams_in: flow.datagramsIn,
        datagrams_out: flow.datagramsOut,
        duration_ms: Math.round(performance.now() - flow.started),
        reason,
        error: flow.errorCode,
      },
      'flow',
    );
  }

  #closeSocket(): void {
    if (this.#socketClosed) return;
    this.#socketClosed = true;
    this.#deps.sweeper.delete(this.#table);
    if (this.native !== undefined) {
      this.native.relay.udpUnlisten(this.native.id);
      this.native = undefined;
    }
    try {
      this.downstream.close();
    } catch {
      // Never bound or already closed: nothing to release.
    }
  }

  #onSocketError(err: NodeJS.ErrnoException): void {
    if (!this.#bound) return; // bind failures are listen()'s to report
    // Receive errors (ENOBUFS, ENOMEM) do not close a dgram socket: count each, log once a second.
    const code = err.code ?? 'EIO';
    this.drop(code.toLowerCase());
    const now = performance.now();
    if (now - this.#lastSocketError > 1000) {
      this.#lastSocketError = now;
      this.logger.warn({ code }, 'UDP socket error');
    }
  }
}
