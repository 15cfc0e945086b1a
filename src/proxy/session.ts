import net from 'node:net';
import type { Logger } from '../telemetry/logger.js';
import type { Backend } from '../upstream/backend.js';
import type { PickContext } from '../upstream/balancer/picker.js';
import type { FreePick, Holder, Pool, QueueWaiter } from '../upstream/pool.js';
import type { Sweepable, Sweeper } from '../util/sweeper.js';
import type { CloseReason } from './close-reason.js';
import type { Tagged } from './session-sockets.js';
import {
  CLIENT_SOCKET_OPTIONS,
  CLOSED_SOCKET,
  handleOf,
  kSession,
  onDownError,
  onSocketClose,
  onUpConnect,
  onUpError,
  onDownData,
  onDownEnd,
  onUpData,
  onUpEnd,
  onUpDrain,
  onDownDrain,
  UPSTREAM_SOCKET_OPTIONS,
} from './session-sockets.js';
import { normalizeIp } from '../util/cidr.js';
import { closeSync } from 'node:fs';
import { errnoName } from '../util/errno.js';
import type { RelayEnd, RelayOwner, SpliceRelay } from './splice-relay.js';
import {
  ABORT_CLIENT_CLOSED,
  loadedSpliceRelay,
  RELAY_CONNECTING,
  RELAY_RELAYING,
  relayStats,
  STAT_BYTES_DOWN,
  STAT_BYTES_UP,
  STAT_FIRST_FIN,
} from './splice-relay.js';

/** What a session needs from the listener that accepted it. */
export interface SessionHost {
  readonly name: string;
  readonly logger: Logger;
  readonly accessLog: boolean;
  readonly sweeper: Sweeper;
  readonly connectTimeoutMs: number;
  readonly idleTimeoutMs: number;
  /** Inactivity allowed once either side has sent FIN; 0 = idleTimeoutMs. */
  readonly halfClosedTimeoutMs: number;
  /** Adds relayed bytes to the listener's counters (called at most once per tick per session). */
  countBytes(toUpstream: number, toDownstream: number): void;
  /** A connect attempt to `backend` failed (passive health, metrics). */
  connectFailed(pool: Pool, backend: Backend, code: string): void;
  /**
   * Passive health verdict of the backend for this session: true once it sent a byte or closed
   * cleanly, false when it reset the connection before sending anything.
   */
  backendVerdict(pool: Pool, backend: Backend, ok: boolean): void;
  /** The session is over; called exactly once. */
  sessionClosed(session: Session, reason: CloseReason): void;
  /** A PROXY header arrived from a source that is not trusted: count it and close. */
  untrustedHeader(session: Session, sample: Buffer): void;
  /** Bytes to write upstream before any client byte (PROXY header); undefined for none. */
  upstreamPreamble(session: Session, pool: Pool): Buffer | undefined;
  /** The splice relay for new sessions (config `relay`); undefined relays through Node streams. */
  readonly splice: SpliceRelay | undefined;
  /** The session was handed to the splice relay (metrics). */
  spliced(): void;
}

const enum State {
  Preface,
  /** Every ready backend is at max_connections_per_backend: waiting in the pool's queue. */
  Queued,
  Connecting,
  /** A connect failed and every ready backend has been tried: waiting to try one again. */
  Backoff,
  Open,
  Closed,
}

/** The wait before a backend already tried by this session is tried again (HAProxy's turn-around). */
const MAX_TURNAROUND_MS = 1000;

/** Runs deferred connect deadlines after the loop's I/O of this turn (see `sweep`). */
function expireConnect(session: Session): void {
  session.connectDeadline();
}

let sequence = 0;
const idPrefix = `${process.pid.toString(36)}${Date.now().toString(36).slice(-4)}`;

/**
 * One client connection pinned to one backend for its whole life. Reads from the client stay
 * paused until the upstream connects; a connect failure is retried on a backend not yet tried,
 * which is safe because no client byte has gone upstream yet. Then bytes flow both ways with
 * backpressure (a write that returns false pauses the other side until 'drain'), FIN is relayed
 * each way on its own (half-close), and the session ends when both sockets have closed.
 *
 * With the splice relay (config `relay`), the relay connects the upstream and, once the client is
 * attached, carries the bytes in the kernel; the session keeps the decisions (retries, verdicts),
 * the deadlines (read from the relay's counters on the sweeper tick) and the access line. A client
 * the relay accepted stays a bare descriptor unless something needs a net.Socket (see `down`).
 *
 * Socket events reach the session through shared handler functions (the session hangs off the
 * socket), so a session costs no closures.
 */
export class Session implements Holder, Sweepable, QueueWaiter, PickContext, RelayOwner {
  readonly id = `${idPrefix}-${(++sequence).toString(36)}`;
  readonly host: SessionHost;
  /** The client's socket; undefined while the client is a bare descriptor (#clientFd). */
  #down: Tagged | undefined;
  /**
   * A client accepted by the splice relay: a descriptor with no net.Socket, attached to the
   * relay as it is. -1 once attached, closed or made a net.Socket (by the `down` getter).
   */
  #clientFd = -1;
  /** The client as seen after a trusted PROXY header. */
  clientIp: string;
  clientPort: number;
  #localIp: string | undefined;
  #localPort: number | undefined;
  sni: string | undefined;
  alpn: readonly string[] = [];
  /** Client bytes read during the preface (PROXY header stripped), replayed upstream first. */
  pending: Buffer | undefined;
  /** TLVs received in a trusted PROXY v2 header, for relaying. */
  receivedTlvs: readonly { type: number; value: Buffer }[] = [];
  /** Refuse a PROXY signature at the start of the client's bytes (untrusted source on a PROXY-in listener). */
  guardProxySignature = false;
  pool: Pool | undefined;
  backend: Backend | undefined;
  up: Tagged | undefined;
  attempts = 0;
  readonly started = performance.now();
  #state = State.Preface;
  #tried: Set<Backend> | undefined;
  #deadline = 0;
  #lastActive = 0;
  #seenBytes = 0;
  #countedUp = 0;
  #countedDown = 0;
  /** Set by close(): a timeout, an error, a drain. Wins over who sent FIN first. */
  #reason: CloseReason | undefined;
  /** Who sent FIN first, for a session that ends normally. */
  #finFirst: 'downstream_closed' | 'upstream_closed' | undefined;
  #errorCode: string | undefined;
  #openSockets = 0;
  /** The splice relay's handle while it connects or carries this session; -1 otherwise. */
  #relay = -1;
  #splice: SpliceRelay | undefined;
  /** The bare client descriptor went to connect(): the relay attaches it itself once connected. */
  #handsOver = false;
  /** A connect deadline passed; it is judged after this turn's I/O (a completion may be waiting). */
  #expiring = false;
  /** The client's socket went to the splice relay: the byte counts are the relay's. */
  #attached = false;
  /** Client bytes read before the hand-off (PROXY header and preface). */
  #baseUp = 0;

  /** `down` is the client's socket, or its descriptor when the splice relay accepted it. */
  constructor(host: SessionHost, down: net.Socket | number, clientIp: string, clientPort: number) {
    this.host = host;
    this.clientIp = clientIp;
    this.clientPort = clientPort;
    this.#openSockets = 1;
    if (typeof down === 'number') this.#clientFd = down;
    else this.#adopt(down);
  }

  #adopt(socket: net.Socket): Tagged {
    const down = socket as Tagged;
    this.#down = down;
    down[kSession] = this;
    down.on('error', onDownError);
    down.on('close', onSocketClose);
    return down;
  }

  /**
   * The client's net.Socket. A client the splice relay accepted gets one here on first use (the
   * preface, Node streams); once its descriptor went to the relay, a closed placeholder.
   */
  get down(): Tagged {
    if (this.#down !== undefined) return this.#down;
    if (this.#clientFd < 0) return CLOSED_SOCKET;
    const fd = this.#clientFd;
    this.#clientFd = -1;
    return this.#adopt(new net.Socket({ ...CLIENT_SOCKET_OPTIONS, fd }));
  }

  get reason(): CloseReason | undefined {
    return this.#reason ?? this.#finFirst;
  }

  get errorCode(): string | undefined {
    return this.#errorCode;
  }

  /**
   * The address the client connected to (the PROXY header's destination when trusted). Read
   * from the socket only when needed (a PROXY header upstream): it costs a getsockname call.
   */
  get localIp(): string {
    if (this.#localIp === undefined) this.#readLocalAddress();
    return this.#localIp ?? '';
  }

  #readLocalAddress(): void {
    const relay = this.#clientFd >= 0 ? loadedSpliceRelay() : undefined;
    if (relay !== undefined) {
      const { ip, port } = relay.sockname(this.#clientFd);
      this.#localIp ??= normalizeIp(ip);
      this.#localPort ??= port;
    } else {
      this.#localIp ??= normalizeIp(this.down.localAddress ?? '');
      this.#localPort ??= this.down.localPort ?? 0;
    }
  }

  set localIp(ip: string) {
    this.#localIp = ip;
  }

  get localPort(): number {
    if (this.#localPort === undefined) this.#readLocalAddress();
    return this.#localPort ?? 0;
  }

  set localPort(port: number) {
    this.#localPort = port;
  }

  /** The session is its own pick context (client address and SNI): no object per pick. */
  get pickContext(): PickContext {
    return this;
  }

  /** Sets a deadline for the preface stage (PROXY header, ClientHello); checked by the sweeper. */
  armPreface(ms: number): void {
    // performance.now(), not the sweeper's time of its last tick: a deadline may be late by a
    // tick, never early.
    this.#deadline = performance.now() + ms;
    this.host.sweeper.add(this);
  }

  /** Starts connecting to a backend of `pool`. */
  connect(pool: Pool): void {
    if (this.#state === State.Closed) return;
    this.pool = pool;
    this.#state = State.Connecting;
    this.host.sweeper.add(this);
    this.#attempt();
  }

  /** Ends the session now: both sockets are destroyed and the access line says `reason`. */
  close(reason: CloseReason): void {
    if (this.#state === State.Closed) return;
    if (this.#state === State.Queued) this.pool?.dequeue(this);
    this.#reason ??= reason;
    this.#state = State.Closed;
    if (this.#relay >= 0 && this.#splice !== undefined) {
      const found = this.#splice.abort(this.#relay);
      this.#relay = -1;
      if (found === ABORT_CLIENT_CLOSED && !this.#attached) this.#relayHasClient();
      if (this.#attached) this.#takeRelayCounters();
    }
    if (this.#down !== undefined) {
      this.#down.destroy();
    } else if (this.#clientFd >= 0) {
      closeSync(this.#clientFd);
      this.#clientFd = -1;
      this.#openSockets--;
    }
    this.up?.destroy();
    if (this.#openSockets === 0) this.#finish();
  }

  sweep(now: number): void {
    if (this.#state === State.Open) {
      let seen: number;
      let halfClosed = this.#halfClosed;
      if (this.#attached && this.#relay >= 0 && this.#splice !== undefined) {
        this.#splice.read(this.#relay);
        halfClosed = relayStats[STAT_FIRST_FIN]! >= 0;
        this.#takeRelayCounters();
        if (this.#countedDownTotal > 0) this.sawUpstreamData();
        seen = this.#countedUpTotal + this.#countedDownTotal;
      } else {
        seen = (this.#down?.bytesRead ?? 0) + (this.up?.bytesRead ?? 0);
      }
      if (seen !== this.#seenBytes) {
        this.#seenBytes = seen;
        this.#lastActive = now;
        this.#flushBytes();
      } else if (now - this.#lastActive >= this.host.idleTimeoutMs) {
        this.close('idle_timeout');
      } else if (
        halfClosed &&
        this.host.halfClosedTimeoutMs > 0 &&
        now - this.#lastActive >= this.host.halfClosedTimeoutMs
      ) {
        this.close('half_closed_timeout');
      }
    } else if (this.#state === State.Connecting) {
      // A relay given the client's descriptor starts relaying without telling: ask each tick.
      if (this.#handsOver && this.#splice?.read(this.#relay) === RELAY_RELAYING) this.#opened();
      else if (now >= this.#deadline && !this.#expiring) {
        // The sweeper runs before this turn's I/O: a connect that completed meanwhile (the loop
        // was busy) is still waiting to be reported. Judge it once that I/O has been handled.
        this.#expiring = true;
        setImmediate(expireConnect, this);
      }
    } else if (this.#state === State.Backoff) {
      if (now >= this.#deadline) this.#retry();
    } else if (this.#state === State.Queued) {
      if (now >= this.#deadline) this.close('queue_timeout');
    } else if (this.#state === State.Preface) {
      if (this.#deadline > 0 && now >= this.#deadline) this.close('preface_timeout');
    }
  }

  /** @internal The connect deadline passed (deferred from the sweep): fail it unless it completed. */
  connectDeadline(): void {
    this.#expiring = false;
    if (this.#state !== State.Connecting || performance.now() < this.#deadline) return;
    if (this.#relay >= 0 && this.#splice !== undefined) {
      const state = this.#splice.read(this.#relay);
      if (state === RELAY_RELAYING && this.#handsOver) this.#opened();
      // Connected, or ended with its record on the way: that record decides, not the clock.
      if (state !== RELAY_CONNECTING) return;
    }
    this.#connectFailed('ETIMEDOUT');
  }

  /**
   * Picks the backend for the next connect attempt: one this session has not tried yet, at once;
   * when every ready backend has failed for it already (a pool of one, most often), one of them
   * again after a turn-around of min(timeouts.connect, 1 s), as HAProxy's `retries` does, so a
   * backend that is restarting or briefly overloaded gets another chance before the client is
   * turned away.
   */
  #attempt(): void {
    const pool = this.pool;
    if (pool === undefined) return;
    const backend = pool.pickFree(this.pickContext, this.#tried);
    if (backend === undefined && this.#tried !== undefined && pool.available > 0) {
      this.#state = State.Backoff;
      this.#deadline = performance.now() + Math.min(this.host.connectTimeoutMs, MAX_TURNAROUND_MS);
      return;
    }
    this.#connectOrQueue(pool, backend);
  }

  /** The turn-around is over: try any ready backend again (the same one in a pool of one). */
  #retry(): void {
    const pool = this.pool;
    if (pool === undefined) return;
    this.#state = State.Connecting;
    this.#connectOrQueue(pool, pool.pickFree(this.pickContext, undefined));
  }

  #connectOrQueue(pool: Pool, backend: FreePick): void {
    if (backend === 'full') {
      this.#enqueue(pool);
      return;
    }
    if (backend === undefined) {
      this.close(this.attempts === 0 ? 'no_backend' : 'connect_failed');
      return;
    }
    this.#connectTo(pool, backend);
  }

  /** Waits for a slot, at most the pool's queue_timeout (the client's reads stay paused). */
  #enqueue(pool: Pool): void {
    if (!pool.enqueue(this)) {
      this.close('queue_full');
      return;
    }
    this.#state = State.Queued;
    this.#deadline = performance.now() + pool.config.queue_timeout;
  }

  /** @internal Called by the pool when a slot may have freed; true once connecting. */
  retryQueued(): boolean {
    const pool = this.pool;
    if (this.#state !== State.Queued || pool === undefined) return true;
    const backend = pool.pickFree(this.pickContext, this.#tried);
    if (backend === 'full' || backend === undefined) return false;
    this.#state = State.Connecting;
    this.#connectTo(pool, backend);
    return true;
  }

  #connectTo(pool: Pool, backend: Backend): void {
    this.attempts++;
    this.backend = backend;
    pool.acquire(backend, this);
    this.#deadline = performance.now() + this.host.connectTimeoutMs;
    // The splice relay connects by itself, except for an untrusted client on a PROXY-in listener
    // (its first bytes are inspected here) and a backend named by host name (Node resolves it).
    const splice = this.guardProxySignature ? undefined : this.host.splice;
    if (splice !== undefined) {
      // A bare descriptor nothing was read from goes with the connect: the relay attaches it the
      // moment the upstream connects, the PROXY header first, with no round trip through here.
      const bare = this.#down === undefined && this.#clientFd >= 0;
      const handle = bare
        ? splice.connect(
            this,
            backend.host,
            backend.port,
            this.#clientFd,
            this.host.upstreamPreamble(this, pool),
          )
        : splice.connect(this, backend.host, backend.port);
      if (handle !== undefined) {
        if (handle < 0) {
          this.#connectFailed(errnoName(-handle));
        } else {
          this.#splice = splice;
          this.#relay = handle;
          this.#handsOver = bare;
        }
        return;
      }
    }
    const up = new net.Socket(UPSTREAM_SOCKET_OPTIONS) as Tagged;
    up[kSession] = this;
    this.up = up;
    this.#openSockets++;
    up.on('error', onUpError);
    up.on('close', onSocketClose);
    up.once('connect', onUpConnect);
    up.connect(backend.port, backend.host);
  }

  /** A connect attempt failed before any byte went upstream: try again (see #attempt). */
  #connectFailed(code: string): void {
    const { pool, backend, up } = this;
    if (pool === undefined || backend === undefined) return;
    this.host.connectFailed(pool, backend, code);
    // Only a session that retries pays for the set of backends it has tried.
    (this.#tried ??= new Set()).add(backend);
    pool.release(backend, this);
    this.backend = undefined;
    if (this.#relay >= 0) {
      this.#splice?.abort(this.#relay); // a connect timeout: the client's descriptor is still ours
      this.#relay = -1;
    }
    if (up !== undefined) {
      this.up = undefined;
      up[kSession] = undefined;
      this.#openSockets--;
      up.destroy();
    }
    this.#errorCode = code;
    if (this.attempts > pool.config.connect_retries) {
      this.close('connect_failed');
    } else {
      this.#attempt();
    }
  }

  /** @internal */
  onConnected(): void {
    const { pool, backend, up } = this;
    if (pool === undefined || backend === undefined || up === undefined) return;
    this.#state = State.Open;
    this.#errorCode = undefined;
    this.#lastActive = performance.now();
    const preamble = this.host.upstreamPreamble(this, pool);
    if (preamble !== undefined) up.write(preamble);
    if (this.pending !== undefined) {
      up.write(this.pending);
      this.pending = undefined;
    }
    const down = this.down;
    down.on('data', onDownData);
    down.on('end', onDownEnd);
    up.on('data', onUpData);
    up.on('end', onUpEnd);
    up.on('drain', onUpDrain);
    down.on('drain', onDownDrain);
    // A client that already half-closed during the preface gets its FIN relayed at once.
    if (down.readableEnded) up.end();
    else down.resume();
  }

  /** @internal The splice relay connected the upstream and waits for the client (see #relayConnected). */
  relayConnected(): void {
    this.#relayConnected();
  }

  /** @internal The splice relay's connect failed; the client's descriptor (if given) is still ours. */
  relayConnectFailed(errno: number): void {
    this.#relay = -1;
    this.#connectFailed(errnoName(errno));
  }

  /** @internal The splice relay ended on its own: both directions finished, or a socket failed. */
  relayEnded(end: RelayEnd): void {
    this.#relay = -1;
    if (!this.#attached) this.#opened();
    this.#countedUpTotal = this.#baseUp + end.bytesUp;
    this.#countedDownTotal = end.bytesDown;
    if (end.errorSide >= 0) {
      this.#errorCode ??= errnoName(end.errno);
      if (end.errorSide === 1) this.#verdict(this.#countedDownTotal > 0);
      this.#reason ??= end.errorSide === 0 ? 'downstream_error' : 'upstream_error';
    } else {
      // Both directions ended with FIN: the backend closed cleanly.
      this.#verdict(true);
      this.#finFirst ??= end.firstFin === 1 ? 'upstream_closed' : 'downstream_closed';
    }
    this.#state = State.Closed;
    this.#finish();
  }

  /**
   * The relay carries the client now (it attached the bare descriptor given to connect()): the
   * descriptor is the relay's, the byte counts too.
   */
  #opened(): void {
    this.#state = State.Open;
    this.#errorCode = undefined;
    this.#lastActive = performance.now();
    this.#relayHasClient();
  }

  #relayHasClient(): void {
    this.#attached = true;
    this.#handsOver = false;
    this.#clientFd = -1;
    this.#openSockets--;
    this.host.spliced();
  }

  /**
   * The relay connected the upstream: attach the client's socket, the preamble and the bytes
   * read during the preface going first; the relay carries the session to its end. A client
   * whose socket Node has already read more from (or seen FIN on) stays on Node streams, with
   * the upstream socket handed back; so does any hand-off that fails for want of descriptors.
   */
  #relayConnected(): void {
    const { pool, backend } = this;
    const down = this.#down;
    const splice = this.#splice;
    if (pool === undefined || backend === undefined || splice === undefined) return;
    this.#state = State.Open;
    this.#errorCode = undefined;
    this.#lastActive = performance.now();
    // A bare descriptor is handed over as it is; a net.Socket's is dup'ed by the relay.
    const own = down === undefined;
    const fd = own ? this.#clientFd : handleOf(down)?.fd;
    if (fd !== undefined && fd >= 0 && (own || (!down.readableEnded && down.readableLength === 0))) {
      const preamble = this.host.upstreamPreamble(this, pool);
      const pending = this.pending;
      const prefix =
        pending === undefined
          ? preamble
          : preamble === undefined
            ? pending
            : Buffer.concat([preamble, pending]);
      try {
        splice.attach(this.#relay, fd, prefix, own);
        this.#attached = true;
      } catch (err) {
        const side = (err as { side?: number }).side;
        if (side !== undefined) {
          this.#relay = -1;
          this.#errorCode = errnoName((err as { errno?: number }).errno);
          if (side === 1) this.#verdict(false);
          this.close(side === 0 ? 'downstream_error' : 'upstream_error');
          return;
        }
      }
    }
    if (this.#attached) {
      this.host.spliced();
      this.pending = undefined;
      this.#openSockets--;
      if (down === undefined) {
        this.#clientFd = -1;
      } else {
        this.#baseUp = down.bytesRead;
        // The relay holds its own copy of the client's descriptor: the socket closes quietly.
        down[kSession] = undefined;
        down.destroy();
      }
      return;
    }
    // Node streams from here: the upstream descriptor becomes a net.Socket.
    const upFd = splice.detach(this.#relay);
    this.#relay = -1;
    this.#splice = undefined;
    const up = new net.Socket({ ...UPSTREAM_SOCKET_OPTIONS, fd: upFd }) as Tagged;
    up[kSession] = this;
    this.up = up;
    this.#openSockets++;
    up.on('error', onUpError);
    up.on('close', onSocketClose);
    this.onConnected();
  }

  /** Copies the relay's counters (just written to relayStats) into the session. */
  #takeRelayCounters(): void {
    this.#countedUpTotal = this.#baseUp + relayStats[STAT_BYTES_UP]!;
    this.#countedDownTotal = relayStats[STAT_BYTES_DOWN]!;
  }

  /** @internal */
  onError(side: 'down' | 'up', err: NodeJS.ErrnoException): void {
    if (side === 'up' && this.#state === State.Connecting) {
      this.#connectFailed(err.code ?? 'EIO');
      return;
    }
    // A backend that accepts and then resets before answering is failing, even though the
    // connect worked (a common way for an overloaded or broken service to refuse work).
    if (side === 'up') this.#verdict(false);
    this.#errorCode ??= err.code;
    this.close(side === 'down' ? 'downstream_error' : 'upstream_error');
  }

  #verdictGiven = false;

  /** Reports the backend's passive-health verdict for this session, once. */
  #verdict(ok: boolean): void {
    if (this.#verdictGiven || this.pool === undefined || this.backend === undefined) return;
    this.#verdictGiven = true;
    this.host.backendVerdict(this.pool, this.backend, ok);
  }

  /** @internal The backend sent data (only the first call does anything). */
  sawUpstreamData(): void {
    if (!this.#verdictGiven) this.#verdict(true);
  }

  #halfClosed = false;

  /** @internal */
  onEnd(side: 'down' | 'up'): void {
    this.#halfClosed = true;
    if (side === 'up') this.#verdict(true);
    this.#finFirst ??= side === 'down' ? 'downstream_closed' : 'upstream_closed';
    const other = side === 'down' ? this.up : this.down;
    other?.end();
  }

  /** @internal */
  onSocketClosed(socket: Tagged): void {
    socket[kSession] = undefined;
    this.#openSockets--;
    if (this.#state !== State.Closed) {
      // One side is gone for good (destroyed, or both its directions finished). If the other is
      // still open, it may yet have bytes to flush or receive only when it is half-closed itself.
      const other = socket === this.#down ? this.up : this.#down;
      if (this.#state !== State.Open || other === undefined || other.destroyed) {
        this.close(this.#finFirst ?? (socket === this.#down ? 'downstream_closed' : 'upstream_closed'));
      } else if (!other.writableEnded) {
        // The peer of the closed side can receive nothing more: end it so it finishes.
        other.end();
      }
    }
    if (this.#openSockets === 0) {
      this.#state = State.Closed;
      this.#finish();
    }
  }

  /** Byte totals as of the relay's last report (splice relay only). */
  #countedUpTotal = 0;
  #countedDownTotal = 0;

  #flushBytes(): void {
    const relayed = this.#attached;
    const toUp = relayed ? this.#countedUpTotal : (this.#down?.bytesRead ?? 0);
    const toDown = relayed ? this.#countedDownTotal : (this.up?.bytesRead ?? 0);
    if (toUp !== this.#countedUp || toDown !== this.#countedDown) {
      this.host.countBytes(toUp - this.#countedUp, toDown - this.#countedDown);
      this.#countedUp = toUp;
      this.#countedDown = toDown;
    }
  }

  #finished = false;
  #finish(): void {
    if (this.#finished) return;
    this.#finished = true;
    this.host.sweeper.delete(this);
    // Counted for sessions that got as far as connecting (as the stream path counts them).
    if (this.up !== undefined || this.#attached) this.#flushBytes();
    if (this.pool !== undefined && this.backend !== undefined) this.pool.release(this.backend, this);
    this.host.sessionClosed(this, this.#reason ?? this.#finFirst ?? 'downstream_closed');
  }

  /** Bytes the client sent (after any PROXY header) and bytes it received. */
  get bytesIn(): number {
    return this.#countedUp;
  }

  get bytesOut(): number {
    return this.#countedDown;
  }
}
