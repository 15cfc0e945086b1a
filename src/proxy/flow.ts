import dgram from 'node:dgram';
import { isIP } from 'node:net';
import { errnoName } from '../util/errno.js';
import type { Backend } from '../upstream/backend.js';
import type { SpliceRelay, UdpFlowOwner } from '../relay/binding.js';
import {
  relayStats,
  UDP_ANSWERED,
  UDP_BYTES_IN,
  UDP_BYTES_OUT,
  UDP_DATAGRAMS_IN,
  UDP_DATAGRAMS_OUT,
  UDP_DROPS_AMPLIFICATION,
  UDP_DROPS_FULL,
  UDP_DROPS_SIZE,
  UDP_REFUSED,
  UDP_SERVER_CID,
} from '../relay/binding.js';
import type { Holder, Pool } from '../upstream/pool.js';
import { longHeaderScid, QUIC_LONG_HEADER_BIT } from '../protocol/quic.js';

/**
 * Why a UDP flow ended; printed as `reason` in its access-log line.
 * - `idle_timeout`: no datagram either way for `udp.flow_idle`.
 * - `upstream_error`: the upstream socket could not be opened, or the backend answered
 *   {@link REFUSALS_TO_CLOSE} datagrams in a row with ICMP port unreachable (ECONNREFUSED).
 * - `backend_drained`: the backend was drained and its drain deadline passed.
 * - `backend_down`: the backend failed its health checks or was ejected; the client's next
 *   datagram starts a new flow on a ready backend.
 * - `shutdown`: the process was shutting down and `shutdown.drain_timeout` passed.
 */
export type FlowCloseReason =
  'idle_timeout' | 'upstream_error' | 'backend_drained' | 'backend_down' | 'shutdown';

/**
 * ECONNREFUSED reports in a row (no reply between) after which a flow is closed, so that the
 * client's next datagram creates a new flow and the pool picks again. One report is not enough:
 * an ICMP error can be stale (a backend restarting) and UDP clients retry on their own.
 */
export const REFUSALS_TO_CLOSE = 3;

/** Largest UDP payload over IPv4 (65,535 − 8 UDP − 20 IP) and IPv6 (65,535 − 8 UDP). */
const MAX_UDP4_PAYLOAD = 65_507;
const MAX_UDP6_PAYLOAD = 65_527;

/** Datagrams held while the upstream socket connects; more are dropped (`connecting_overflow`). */
export const MAX_PENDING = 4;

/** What a flow needs from its listener. */
export interface FlowHost {
  /** The listener's socket: replies leave from the address the client sent to. */
  readonly downstream: dgram.Socket;
  /** Time of the last sweeper tick; cheap to read per datagram. */
  readonly now: number;
  /** The splice relay reading the listener's socket, and its listener id; undefined: Node dgram. */
  readonly native: { readonly relay: SpliceRelay; readonly id: number } | undefined;
  /** Datagrams were lost (default one); `reason` is a fixed word or a lower-case errno code. */
  drop(reason: string, count?: number): void;
  /**
   * Datagrams handed to the kernel since the last report: `upstream` is client→backend,
   * `downstream` backend→client. Reported in batches (sweep and close), not per datagram.
   */
  relayed(direction: 'upstream' | 'downstream', datagrams: number, bytes: number): void;
  /** Passive health: the backend answered (true) or refused (false). */
  passive(flow: Flow, ok: boolean): void;
  /** The flow has ended; called exactly once. */
  closed(flow: Flow, reason: string): void;
  /**
   * QUIC flows only: the backend sent a long-header packet whose Source Connection ID is
   * bytes[offset, offset + length) (a connection ID it chose; see QuicRouter.learn).
   */
  serverCid?(flow: Flow, bytes: Uint8Array, offset: number, length: number): void;
}

const enum State {
  Connecting,
  Open,
  Closed,
}

/**
 * One client (address, port) bound to one backend through a connected upstream dgram socket.
 * The socket is connected so that the kernel filters replies to the backend's address and an
 * ICMP port unreachable surfaces as ECONNREFUSED. Nothing here throws: every socket error is
 * classified by `err.code`, counted and, where it matters, ends the flow.
 */
export class Flow implements Holder, UdpFlowOwner {
  readonly key: string;
  /** The address as the listener socket reports it (IPv4-mapped on a dual-stack socket); replies go there. */
  readonly replyAddress: string;
  /** The client address in plain form (ACL, picks, logs, PROXY header). */
  readonly clientIp: string;
  readonly clientPort: number;
  readonly pool: Pool;
  readonly backend: Backend;
  readonly started = performance.now();
  /** Sweeper time of the last datagram in either direction. */
  lastActive: number;
  bytesIn = 0;
  bytesOut = 0;
  datagramsIn = 0;
  datagramsOut = 0;
  /** The errno code behind an `upstream_error` close. */
  errorCode: string | undefined;
  readonly #host: FlowHost;
  /** The Node socket to the backend, or undefined when the splice relay carries the flow. */
  #socket: dgram.Socket | undefined;
  /** The splice relay's flow id; -1 when Node carries it. */
  #nativeId = -1;
  #dropsSize = 0;
  #dropsFull = 0;
  #dropsAmplification = 0;
  /** Replies allowed per datagram from the client (0: no cap), and those still allowed. */
  readonly #maxReplies: number;
  #credits = 0;
  readonly #header: Buffer | undefined;
  /** Reused [header, payload] list: dgram copies the list on send, so one array serves every datagram. */
  readonly #pair: Buffer[];
  readonly #headerBytes: number;
  readonly #maxPayload: number;
  #pending: Buffer[] = [];
  #state = State.Connecting;
  #refusals = 0;
  #answered = false;
  /** QUIC: report the Source Connection IDs of the backend's long-header replies. */
  readonly #watchCids: boolean;

  /**
   * @param header PROXY v2 header sent before every payload, in the same datagram; undefined for none.
   * @param maxReplies reply datagrams allowed per datagram from the client; 0 for no cap.
   * @param watchCids tell the host the Source Connection ID of each long-header QUIC reply.
   */
  constructor(
    host: FlowHost,
    key: string,
    client: { replyAddress: string; ip: string; port: number },
    pool: Pool,
    backend: Backend,
    header: Buffer | undefined,
    maxReplies = 0,
    watchCids = false,
  ) {
    this.#host = host;
    this.#watchCids = watchCids;
    this.#maxReplies = maxReplies;
    this.key = key;
    this.replyAddress = client.replyAddress;
    this.clientIp = client.ip;
    this.clientPort = client.port;
    this.pool = pool;
    this.backend = backend;
    this.#header = header;
    this.#pair = header === undefined ? [] : [header, header];
    this.#headerBytes = header?.length ?? 0;
    this.#maxPayload = isIP(backend.host) === 6 ? MAX_UDP6_PAYLOAD : MAX_UDP4_PAYLOAD;
    this.lastActive = host.now;
  }

  /**
   * Opens the upstream socket: through the splice relay when it reads the listener (a connected
   * UDP socket is ready at once; called while the relay holds this client's first datagram),
   * else a Node socket whose first datagrams wait (bounded) until it is connected.
   */
  start(): void {
    const native = this.#host.native;
    if (native !== undefined && isIP(this.backend.host) !== 0) {
      const { host, port } = this.backend;
      const id = native.relay.udpFlow(
        this,
        native.id,
        host,
        port,
        this.#header,
        this.#maxReplies,
        this.#watchCids,
      );
      if (id < 0) {
        this.#connectFailed(errnoName(-id));
      } else {
        this.#nativeId = id;
        this.#state = State.Open;
      }
      return;
    }
    const socket = dgram.createSocket({ type: isIP(this.backend.host) === 6 ? 'udp6' : 'udp4' });
    this.#socket = socket;
    socket.on('error', (err: NodeJS.ErrnoException) => this.#onError(err));
    socket.on('message', (msg: Buffer) => this.#onReply(msg));
    socket.once('connect', () => this.#onConnect());
    try {
      socket.connect(this.backend.port, this.backend.host);
    } catch (err) {
      this.#connectFailed(errorCode(err));
    }
  }

  /** @internal The splice relay reports on this flow (UDP_SERVER_CID: `data` holds the ID). */
  udpEvent(kind: number, data?: Buffer): void {
    if (this.#state !== State.Open) return;
    if (kind === UDP_SERVER_CID) {
      if (data !== undefined) this.#host.serverCid?.(this, data, 0, data.length);
    } else if (kind === UDP_REFUSED) {
      this.#host.drop('econnrefused');
      this.#refused();
    } else if (kind === UDP_ANSWERED) {
      this.#refusals = 0;
      this.#answered = true;
      this.#host.passive(this, true);
    }
  }

  /** Stamps activity the splice relay saw since the last call (sweeper scans). */
  poll(now: number): void {
    if (this.#nativeId < 0) return;
    const before = this.datagramsIn + this.datagramsOut;
    this.#readNative();
    if (this.datagramsIn + this.datagramsOut !== before) this.lastActive = now;
  }

  #readNative(): void {
    const relay = this.#host.native?.relay;
    if (relay === undefined || !relay.udpRead(this.#nativeId)) return;
    this.datagramsIn = relayStats[UDP_DATAGRAMS_IN]!;
    this.bytesIn = relayStats[UDP_BYTES_IN]!;
    this.datagramsOut = relayStats[UDP_DATAGRAMS_OUT]!;
    this.bytesOut = relayStats[UDP_BYTES_OUT]!;
    const size = relayStats[UDP_DROPS_SIZE]!;
    const full = relayStats[UDP_DROPS_FULL]!;
    const amplification = relayStats[UDP_DROPS_AMPLIFICATION]!;
    if (size > this.#dropsSize) this.#host.drop('emsgsize', size - this.#dropsSize);
    if (full > this.#dropsFull) this.#host.drop('enobufs', full - this.#dropsFull);
    if (amplification > this.#dropsAmplification)
      this.#host.drop('amplification', amplification - this.#dropsAmplification);
    this.#dropsSize = size;
    this.#dropsFull = full;
    this.#dropsAmplification = amplification;
  }

  /** A datagram from the client. */
  fromClient(msg: Buffer): void {
    this.lastActive = this.#host.now;
    if (this.#state === State.Open && this.#nativeId >= 0) this.#sendNative(msg);
    else if (this.#state === State.Open) this.#send(msg);
    else if (this.#state === State.Closed) this.#host.drop('upstream_error');
    else if (this.#pending.length < MAX_PENDING) this.#pending.push(msg);
    else this.#host.drop('connecting_overflow');
  }

  /** @internal The backend is no longer ready (health): end, so the next datagram picks again. */
  backendLost(): void {
    this.close('backend_down');
  }

  /** Ends the flow now; `reason` (a {@link FlowCloseReason}) goes to the access line. */
  close(reason: string): void {
    if (this.#state === State.Closed) return;
    this.#state = State.Closed;
    this.#pending = [];
    this.flushCounters();
    if (this.#nativeId >= 0) {
      this.#host.native?.relay.udpClose(this.#nativeId);
      this.#nativeId = -1;
    }
    try {
      this.#socket?.close();
    } catch {
      // Already closed by the runtime (ERR_SOCKET_DGRAM_NOT_RUNNING): nothing left to release.
    }
    this.#host.closed(this, reason);
  }

  #onConnect(): void {
    if (this.#state !== State.Connecting) return;
    this.#state = State.Open;
    const queued = this.#pending;
    this.#pending = [];
    for (const msg of queued) this.#send(msg);
  }

  /**
   * Sends without a completion callback, so Node tries a synchronous send and calls back into
   * JS no more per datagram (measured: 74 → 93 kpps of 64-byte datagrams through one process).
   * Node then drops a synchronous send error silently; the oversize case is checked before
   * sending, and what else a kernel refuses (ENOBUFS under memory pressure) is not counted.
   * The counters here count datagrams handed to the kernel.
   */
  /** The first datagram of a flow (later ones the relay forwards by itself), or a fallback. */
  #sendNative(msg: Buffer): void {
    const relay = this.#host.native?.relay;
    if (relay === undefined) return;
    const r = relay.udpSend(this.#nativeId, msg);
    if (r === 0) return;
    const code = errnoName(-r).toLowerCase();
    if (code !== 'emsgsize') this.#host.drop(code); // emsgsize is counted by the relay
  }

  #send(msg: Buffer): void {
    const socket = this.#socket;
    if (socket === undefined) return;
    // Without a callback Node reports no synchronous send error, so the one error a proxy can
    // cause itself, a datagram that the header makes too big, is caught here.
    if (msg.length + this.#headerBytes > this.#maxPayload) {
      this.#host.drop('emsgsize');
      return;
    }
    try {
      if (this.#header === undefined) socket.send(msg);
      else {
        this.#pair[1] = msg;
        socket.send(this.#pair);
      }
      this.datagramsIn++;
      this.bytesIn += msg.length;
      this.#credits += this.#maxReplies;
    } catch (err) {
      this.#host.drop(errorCode(err).toLowerCase());
    }
  }

  #flushedIn = 0;
  #flushedInBytes = 0;
  #flushedOut = 0;
  #flushedOutBytes = 0;

  /** Reports the datagrams and bytes relayed since the last call to the listener's counters. */
  flushCounters(): void {
    if (this.#nativeId >= 0) this.#readNative();
    if (this.datagramsIn !== this.#flushedIn) {
      this.#host.relayed('upstream', this.datagramsIn - this.#flushedIn, this.bytesIn - this.#flushedInBytes);
      this.#flushedIn = this.datagramsIn;
      this.#flushedInBytes = this.bytesIn;
    }
    if (this.datagramsOut !== this.#flushedOut) {
      this.#host.relayed(
        'downstream',
        this.datagramsOut - this.#flushedOut,
        this.bytesOut - this.#flushedOutBytes,
      );
      this.#flushedOut = this.datagramsOut;
      this.#flushedOutBytes = this.bytesOut;
    }
  }

  #onReply(msg: Buffer): void {
    if (this.#state !== State.Open) return;
    this.lastActive = this.#host.now;
    this.#refusals = 0;
    if (!this.#answered) {
      // One success per answering streak is enough for passive health; not one per datagram.
      this.#answered = true;
      this.#host.passive(this, true);
    }
    // Long headers come from a backend during handshakes only: one bit test per reply otherwise.
    if (this.#watchCids && msg.length > 0 && (msg[0]! & QUIC_LONG_HEADER_BIT) !== 0) {
      const at = longHeaderScid(msg);
      if (at !== undefined) this.#host.serverCid?.(this, msg, at[0], at[1]);
    }
    if (this.#maxReplies > 0) {
      // More replies than the client's datagrams allow: a backend (or a spoofed source's
      // backend) amplifying towards the client.
      if (this.#credits === 0) return this.#host.drop('amplification');
      this.#credits--;
    }
    try {
      // No callback, as in #send; a refused reply is an 'error' on the listener's socket.
      this.#host.downstream.send(msg, this.clientPort, this.replyAddress);
      this.datagramsOut++;
      this.bytesOut += msg.length;
    } catch (err) {
      this.#host.drop(errorCode(err).toLowerCase());
    }
  }

  /** Socket 'error' events and failed sends: recvmsg/sendmsg codes, or a failed implicit bind/connect. */
  #onError(err: NodeJS.ErrnoException): void {
    const code = errorCode(err);
    if (this.#state === State.Closed) return;
    if (this.#state === State.Connecting) {
      this.#connectFailed(code);
      return;
    }
    this.#host.drop(code.toLowerCase());
    if (code === 'ECONNREFUSED') this.#refused();
  }

  #refused(): void {
    this.#refusals++;
    this.#answered = false;
    this.#host.passive(this, false);
    if (this.#refusals >= REFUSALS_TO_CLOSE) {
      this.errorCode = 'ECONNREFUSED';
      this.close('upstream_error');
    }
  }

  /** The socket could not be bound or connected (EMFILE, a bad address): a local failure, not the backend's. */
  #connectFailed(code: string): void {
    this.errorCode = code;
    const reason = code.toLowerCase();
    for (let i = 0; i < this.#pending.length; i++) this.#host.drop(reason);
    this.close('upstream_error');
  }
}

function errorCode(err: unknown): string {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === 'string' && code !== '' ? code : 'EIO';
}
