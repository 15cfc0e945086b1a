import net from 'node:net';
import { sniffProxySignature } from '../protocol/proxy-parse.js';
import type { Carrier, CarrierEnd, CarrierOwner, CarrierSample } from './carrier.js';
import type { Downstream, DownstreamOwner } from './downstream.js';
import { UPSTREAM_SOCKET_OPTIONS } from './socket-options.js';

const kCarrier = Symbol('sluice.carrier');
type Tagged = net.Socket & { [kCarrier]?: StreamCarrier | undefined };

/*
 * Socket events reach their carrier through shared handler functions (the carrier hangs off its
 * sockets), so a session costs no closures.
 */
function carrierOf(socket: Tagged): StreamCarrier | undefined {
  return socket[kCarrier];
}

function onDownData(this: Tagged, chunk: Buffer): void {
  carrierOf(this)?.fromClient(chunk);
}

function onUpData(this: Tagged, chunk: Buffer): void {
  carrierOf(this)?.fromBackend(chunk);
}

function onUpDrain(this: Tagged): void {
  carrierOf(this)?.drained('up');
}

function onDownDrain(this: Tagged): void {
  carrierOf(this)?.drained('down');
}

function onDownEnd(this: Tagged): void {
  carrierOf(this)?.finReceived('down');
}

function onUpEnd(this: Tagged): void {
  carrierOf(this)?.finReceived('up');
}

function onUpConnect(this: Tagged): void {
  carrierOf(this)?.upstreamConnected();
}

function onUpError(this: Tagged, err: NodeJS.ErrnoException): void {
  carrierOf(this)?.upstreamError(err);
}

function onUpClose(this: Tagged): void {
  carrierOf(this)?.socketClosed('up');
}

export interface StreamCarrierOptions {
  /** Refuse a PROXY signature at the start of the client's bytes (untrusted client on a PROXY-in listener). */
  readonly guard?: boolean;
}

/**
 * Node streams: the client's net.Socket and an upstream net.Socket. Reads from the client stay
 * paused until the upstream connects; then bytes flow both ways with backpressure (a write that
 * returns false pauses the other side until 'drain'), FIN is relayed each way on its own
 * (half-close), and the session ends when both sockets have closed.
 */
export class StreamCarrier implements Carrier, DownstreamOwner {
  readonly #owner: CarrierOwner;
  readonly #client: Downstream;
  /** Who heard of the client before this carrier (given back when the connect fails). */
  readonly #clientOwner: DownstreamOwner;
  #up: Tagged | undefined;
  #prefix: Buffer | undefined;
  #guard: boolean;
  #open = false;
  #done = false;
  #halfClosed = false;
  #finFirst: 'down' | 'up' | undefined;

  constructor(owner: CarrierOwner, client: Downstream, options: StreamCarrierOptions = {}) {
    this.#owner = owner;
    this.#client = client;
    this.#clientOwner = client.owner;
    this.#guard = options.guard === true;
    client.owner = this;
  }

  connect(host: string, port: number, prefix: Buffer | undefined): boolean {
    this.#client.socket(); // a bare descriptor becomes a net.Socket now, still paused
    this.#prefix = prefix;
    const up = this.#tag(new net.Socket(UPSTREAM_SOCKET_OPTIONS));
    up.once('connect', onUpConnect);
    up.connect(port, host);
    return true;
  }

  /** Carries on with an upstream that is connected already (`fd`: given back by the splice relay). */
  adoptConnected(fd: number, prefix: Buffer | undefined): void {
    this.#prefix = prefix;
    this.#tag(new net.Socket({ ...UPSTREAM_SOCKET_OPTIONS, fd }));
    this.upstreamConnected();
  }

  poll(): void {
    // Node reports the connect itself.
  }

  settled(): boolean {
    return this.#open;
  }

  buffered(): number {
    const down = this.#client.current;
    const up = this.#up;
    return (
      (down?.readableLength ?? 0) +
      (down?.writableLength ?? 0) +
      (up?.readableLength ?? 0) +
      (up?.writableLength ?? 0)
    );
  }

  sample(out: CarrierSample): void {
    out.up = this.#client.current?.bytesRead ?? 0;
    out.down = this.#up?.bytesRead ?? 0;
    out.halfClosed = this.#halfClosed;
  }

  abandon(): void {
    this.#done = true;
    const up = this.#up;
    this.#up = undefined;
    if (up !== undefined) {
      up[kCarrier] = undefined;
      up.destroy();
    }
    this.#client.owner = this.#clientOwner;
  }

  destroy(): void {
    this.#done = true;
    this.#up?.destroy();
    this.#client.destroy();
  }

  /** @internal */
  upstreamConnected(): void {
    const up = this.#up;
    if (up === undefined || this.#done) return;
    this.#open = true;
    this.#owner.carrierOpen(false);
    if (this.#done) return;
    if (this.#prefix !== undefined) up.write(this.#prefix);
    this.#prefix = undefined;
    const down = this.#client.socket() as Tagged;
    down[kCarrier] = this;
    down.on('data', onDownData);
    down.on('end', onDownEnd);
    down.on('drain', onDownDrain);
    up.on('data', onUpData);
    up.on('end', onUpEnd);
    up.on('drain', onUpDrain);
    // A client that already half-closed during the preface gets its FIN relayed at once.
    if (down.readableEnded) up.end();
    else down.resume();
  }

  /** @internal */
  fromClient(chunk: Buffer): void {
    const down = this.#client.current;
    if (down === undefined) return;
    if (this.#guard) {
      this.#guard = false;
      const sniff = sniffProxySignature(chunk);
      if (sniff === 'v1' || sniff === 'v2') {
        this.#owner.untrustedHeader(chunk);
        return;
      }
    }
    if (this.#up !== undefined && !this.#up.write(chunk)) down.pause();
  }

  /** @internal */
  fromBackend(chunk: Buffer): void {
    this.#owner.answered();
    const down = this.#client.current;
    if (down !== undefined && !down.write(chunk)) this.#up?.pause();
  }

  /** @internal `side`'s socket can take more: resume the other one. */
  drained(side: 'down' | 'up'): void {
    const other = side === 'up' ? this.#client.current : this.#up;
    if (other !== undefined && !other.readableEnded) other.resume();
  }

  /** @internal `side` sent FIN: relay it to the other side. */
  finReceived(side: 'down' | 'up'): void {
    this.#halfClosed = true;
    if (side === 'up') this.#owner.answered();
    this.#finFirst ??= side;
    (side === 'down' ? this.#up : this.#client.current)?.end();
  }

  /** @internal */
  upstreamError(err: NodeJS.ErrnoException): void {
    const code = err.code ?? 'EIO';
    if (this.#open) {
      this.#end({ error: { side: 'up', code } });
      return;
    }
    // Not connected: nothing of the client went anywhere; the session may try again.
    this.abandon();
    this.#owner.carrierConnectFailed(code);
  }

  clientError(err: NodeJS.ErrnoException): void {
    this.#end({ error: { side: 'down', code: err.code ?? 'EIO' } });
  }

  clientClosed(): void {
    this.socketClosed('down');
  }

  /**
   * @internal One socket is gone for good (destroyed, or both its directions finished). If the
   * other is still open, it may yet have bytes to flush or receive only while it is half-closed
   * itself: end it, and the session ends when it closes too.
   */
  socketClosed(side: 'down' | 'up'): void {
    if (this.#done) return;
    const other = side === 'down' ? this.#up : this.#client.current;
    if (!this.#open || other === undefined || other.destroyed) {
      this.#end({ finFirst: this.#finFirst ?? side });
    } else if (!other.writableEnded) {
      other.end();
    }
  }

  #end(end: CarrierEnd): void {
    if (this.#done) return;
    this.#done = true;
    this.#owner.carrierEnded(end);
  }

  #tag(socket: net.Socket): Tagged {
    const up = socket as Tagged;
    up[kCarrier] = this;
    up.on('error', onUpError);
    up.on('close', onUpClose);
    this.#up = up;
    return up;
  }
}
