import type net from 'node:net';
import type { Backend } from '../upstream/backend.js';
import type { FreePick, Holder, Pool } from '../upstream/pool.js';
import type { QueueWaiter } from '../upstream/wait-queue.js';
import type { Sweepable } from '../util/sweeper.js';
import type { Carrier, CarrierEnd, CarrierOwner, CarrierSample } from './carrier.js';
import type { CloseReason } from './close-reason.js';
import { Downstream } from './downstream.js';
import type { DownstreamOwner } from './downstream.js';
import type { SessionContext } from './session-context.js';
import { SessionIdentity } from './session-identity.js';
import { proxyPreamble } from './proxy-out.js';
import { SpliceCarrier } from './splice-carrier.js';
import { StreamCarrier } from './stream-carrier.js';

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

/**
 * One client connection pinned to one backend for its whole life: preface → (queued) →
 * connecting → open → closed. The session decides: which backend (the pool's picker), retries
 * before any client byte went upstream, passive-health verdicts, deadlines, and why it closed.
 * A carrier moves the bytes (Node streams, or the splice relay), one per connect attempt.
 */
export class Session
  extends SessionIdentity
  implements Holder, Sweepable, QueueWaiter, CarrierOwner, DownstreamOwner
{
  readonly ctx: SessionContext<Session>;
  readonly downstream: Downstream;
  pool: Pool | undefined;
  backend: Backend | undefined;
  attempts = 0;
  #state = State.Preface;
  #carrier: Carrier | undefined;
  #tried: Set<Backend> | undefined;
  #deadline = 0;
  /** A connect deadline passed; it is judged after this turn's I/O (a completion may be waiting). */
  #expiring = false;
  #lastActive = 0;
  #seenBytes = 0;
  readonly #sample: CarrierSample = { up: 0, down: 0, halfClosed: false };
  #countedUp = 0;
  #countedDown = 0;
  /** Set by close(): a timeout, an error, a drain. Wins over who sent FIN first. */
  #reason: CloseReason | undefined;
  #errorCode: string | undefined;
  #answered = false;
  #verdictGiven = false;

  /** `client` is the client's socket, or its descriptor when the splice relay accepted it. */
  constructor(
    ctx: SessionContext<Session>,
    client: net.Socket | number,
    clientIp: string,
    clientPort: number,
  ) {
    super(clientIp, clientPort);
    this.ctx = ctx;
    this.downstream = new Downstream(this, client, ctx.relay);
  }

  get reason(): CloseReason | undefined {
    return this.#reason;
  }

  get errorCode(): string | undefined {
    return this.#errorCode;
  }

  /** Bytes the client sent (its payload: a PROXY header it sent is not counted) and bytes it received. */
  get bytesIn(): number {
    return this.#countedUp;
  }

  get bytesOut(): number {
    return this.#countedDown;
  }

  /** Bytes of this session held in this process's memory now (the stream carrier's buffers). */
  get buffered(): number {
    return this.#carrier?.buffered() ?? 0;
  }

  /** Sets a deadline for the preface stage (PROXY header, ClientHello); checked by the sweeper. */
  armPreface(ms: number): void {
    // performance.now(), not the sweeper's time of its last tick: late by a tick, never early.
    this.#deadline = performance.now() + ms;
    this.ctx.sweeper.add(this);
  }

  /** Starts connecting to a backend of `pool`. */
  connect(pool: Pool): void {
    if (this.#state === State.Closed) return;
    this.pool = pool;
    this.#state = State.Connecting;
    this.ctx.sweeper.add(this);
    this.#attempt();
  }

  /** Ends the session now: both sides are closed and the access line says `reason`. */
  close(reason: CloseReason): void {
    if (this.#state === State.Closed) return;
    if (this.#state === State.Queued) this.pool?.dequeue(this);
    this.#reason ??= reason;
    this.#state = State.Closed;
    const carrier = this.#carrier;
    if (carrier !== undefined) {
      carrier.destroy();
      carrier.sample(this.#sample);
    } else {
      this.downstream.destroy();
    }
    this.#finish();
  }

  sweep(now: number): void {
    switch (this.#state) {
      case State.Open:
        return this.#sweepOpen(now);
      case State.Connecting:
        this.#carrier?.poll();
        if (this.#state === State.Connecting && now >= this.#deadline && !this.#expiring) {
          // The sweeper runs before this turn's I/O: a connect that completed meanwhile (the loop
          // was busy) is still waiting to be reported. Judge it once that I/O has been handled.
          this.#expiring = true;
          setImmediate(expireConnect, this);
        }
        return;
      case State.Backoff:
        if (now >= this.#deadline) this.#retry();
        return;
      case State.Queued:
        if (now >= this.#deadline) this.close('queue_timeout');
        return;
      case State.Preface:
        if (this.#deadline > 0 && now >= this.#deadline) this.close('preface_timeout');
        return;
      case State.Closed:
        return;
    }
  }

  #sweepOpen(now: number): void {
    const s = this.#sample;
    this.#carrier?.sample(s);
    if (s.down > 0) this.answered();
    const seen = s.up + s.down;
    if (seen !== this.#seenBytes) {
      this.#seenBytes = seen;
      this.#lastActive = now;
      this.#flushBytes();
    } else if (now - this.#lastActive >= this.ctx.config.timeouts.idle) {
      this.close('idle_timeout');
    } else if (s.halfClosed) {
      const limit = this.ctx.config.timeouts.half_closed;
      if (limit > 0 && now - this.#lastActive >= limit) this.close('half_closed_timeout');
    }
  }

  /** @internal The connect deadline passed (deferred from the sweep): fail it unless it completed. */
  connectDeadline(): void {
    this.#expiring = false;
    if (this.#state !== State.Connecting || performance.now() < this.#deadline) return;
    if (this.#carrier?.settled() === true) return;
    this.#connectTimedOut();
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
      this.#deadline = performance.now() + Math.min(this.ctx.config.timeouts.connect, MAX_TURNAROUND_MS);
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
    this.#deadline = performance.now() + this.ctx.config.timeouts.connect;
    const prefix = this.#prefix(pool);
    // The splice relay connects by itself, except for an untrusted client on a PROXY-in listener
    // (its first bytes are inspected here) and a backend named by host name (Node resolves it).
    const relay = this.guardProxySignature ? undefined : this.ctx.relay;
    let result: boolean | string = false;
    if (relay !== undefined) {
      this.#carrier = new SpliceCarrier(this, this.downstream, relay);
      result = this.#carrier.connect(backend.host, backend.port, prefix);
    }
    if (result === false) {
      this.#carrier = new StreamCarrier(this, this.downstream, { guard: this.guardProxySignature });
      result = this.#carrier.connect(backend.host, backend.port, prefix);
    }
    if (typeof result === 'string') this.carrierConnectFailed(result);
  }

  /** What goes upstream before the client's own bytes: the PROXY header, then the preface read. */
  #prefix(pool: Pool): Buffer | undefined {
    const out = proxyPreamble(this, pool, this.ctx.config);
    if (out?.droppedPassTlvs === true) this.ctx.events.tlvsDropped(pool);
    const preamble = out?.header;
    const pending = this.pending;
    this.pending = undefined;
    if (pending === undefined) return preamble;
    return preamble === undefined ? pending : Buffer.concat([preamble, pending]);
  }

  /** @internal A connect attempt failed before any byte went upstream: try again (see #attempt). */
  carrierConnectFailed(code: string): void {
    const { pool, backend } = this;
    if (pool === undefined || backend === undefined || this.#state !== State.Connecting) return;
    this.ctx.events.connectFailed(pool, backend, code);
    // Only a session that retries pays for the set of backends it has tried.
    (this.#tried ??= new Set()).add(backend);
    pool.release(backend, this);
    this.backend = undefined;
    this.#carrier = undefined;
    this.#errorCode = code;
    if (this.attempts > pool.config.connect_retries) this.close('connect_failed');
    else this.#attempt();
  }

  /** The connect deadline passed: give up this attempt (the client stays) and count it as failed. */
  #connectTimedOut(): void {
    this.#carrier?.abandon();
    this.carrierConnectFailed('ETIMEDOUT');
  }

  /** @internal */
  carrierOpen(spliced: boolean): void {
    this.#state = State.Open;
    this.#errorCode = undefined;
    this.#lastActive = performance.now();
    if (spliced) this.ctx.events.spliced();
  }

  /** @internal Node streams carry on what the splice relay could not take. */
  carrierReplaced(next: Carrier): void {
    this.#carrier = next;
  }

  /** @internal */
  carrierEnded(end: CarrierEnd): void {
    if (this.#state === State.Closed) return;
    if (end.error !== undefined) {
      // A backend that accepts and then resets before answering is failing, even though the
      // connect worked (a common way for an overloaded or broken service to refuse work).
      if (end.error.side === 'up') this.#verdict(this.#answered);
      this.#errorCode ??= end.error.code;
      this.close(end.error.side === 'down' ? 'downstream_error' : 'upstream_error');
    } else {
      this.#verdict(true);
      this.close(end.finFirst === 'down' ? 'downstream_closed' : 'upstream_closed');
    }
  }

  /** @internal The backend sent data or its FIN: passive health's success (given once). */
  answered(): void {
    if (this.#answered) return;
    this.#answered = true;
    this.#verdict(true);
  }

  /** @internal */
  untrustedHeader(sample: Buffer): void {
    this.ctx.untrustedHeader(this, sample);
  }

  /** @internal The client's socket failed before a carrier relays it (preface, queue, turn-around). */
  clientError(err: NodeJS.ErrnoException): void {
    this.#errorCode ??= err.code;
    this.close('downstream_error');
  }

  /** @internal The client left before a carrier relays it. */
  clientClosed(): void {
    this.close('downstream_closed');
  }

  /** Reports the backend's passive-health verdict for this session, once. */
  #verdict(ok: boolean): void {
    if (this.#verdictGiven || this.pool === undefined || this.backend === undefined) return;
    this.#verdictGiven = true;
    this.ctx.events.verdict(this.pool, this.backend, ok);
  }

  #flushBytes(): void {
    const { down } = this.#sample;
    // Payload only: a trusted client's PROXY header was read, but it is not sent on.
    const up = Math.max(0, this.#sample.up - this.proxyHeaderBytes);
    if (up !== this.#countedUp || down !== this.#countedDown) {
      this.ctx.events.bytes(up - this.#countedUp, down - this.#countedDown);
      this.#countedUp = up;
      this.#countedDown = down;
    }
  }

  #finish(): void {
    this.ctx.sweeper.delete(this);
    // Counted for sessions that got as far as connecting.
    if (this.#carrier !== undefined) this.#flushBytes();
    if (this.pool !== undefined && this.backend !== undefined) this.pool.release(this.backend, this);
    this.ctx.events.closed(this, this.#reason ?? 'downstream_closed');
    this.ctx.release(this);
  }
}
