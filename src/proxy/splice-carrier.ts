import type { RelayEnd, RelayOwner, SpliceRelay } from '../relay/binding.js';
import {
  ABORT_CLIENT_CLOSED,
  RELAY_CONNECTING,
  RELAY_RELAYING,
  relayStats,
  STAT_BYTES_DOWN,
  STAT_BYTES_UP,
  STAT_FIRST_FIN,
} from '../relay/binding.js';
import { streamFd } from '../relay/node-handle.js';
import { errnoName } from '../util/errno.js';
import type { Carrier, CarrierOwner, CarrierSample } from './carrier.js';
import type { Downstream } from './downstream.js';
import { StreamCarrier } from './stream-carrier.js';

/**
 * The splice relay (native/): it connects the upstream and carries the bytes in the
 * kernel; this side reads its counters on the sweeper tick and hears how it ended.
 *
 * A client that is still a bare descriptor (nothing read from it) goes with the connect: the
 * relay attaches it the moment the upstream connects, with no round trip through here, and the
 * carrier learns it is open on the next tick (or at the end). A client that is a net.Socket (a
 * preface was read) is attached once the relay reports the connect: the relay dups its
 * descriptor, unless Node has read more than the preface (or seen its FIN), or the dup fails for
 * want of descriptors: Node streams then carry on with the connected upstream.
 */
export class SpliceCarrier implements Carrier, RelayOwner {
  readonly #owner: CarrierOwner;
  readonly #client: Downstream;
  readonly #relay: SpliceRelay;
  /** The relay's handle while it connects or carries the session; -1 otherwise. */
  #handle = -1;
  /** The bare descriptor went with the connect. */
  #handsOver = false;
  #open = false;
  #prefix: Buffer | undefined;
  /** Client bytes Node read before the hand-off (preface), counted with the relay's. */
  #baseUp = 0;
  #up = 0;
  #down = 0;
  #halfClosed = false;

  constructor(owner: CarrierOwner, client: Downstream, relay: SpliceRelay) {
    this.#owner = owner;
    this.#client = client;
    this.#relay = relay;
  }

  connect(host: string, port: number, prefix: Buffer | undefined): boolean | string {
    const fd = this.#client.fd;
    const bare = fd >= 0;
    const handle = bare
      ? this.#relay.connect(this, host, port, fd, prefix)
      : this.#relay.connect(this, host, port);
    if (handle === undefined) return false;
    if (handle < 0) return errnoName(-handle);
    this.#handle = handle;
    this.#handsOver = bare;
    this.#prefix = bare ? undefined : prefix;
    return true;
  }

  poll(): void {
    if (this.#handsOver && this.#relay.read(this.#handle) === RELAY_RELAYING) this.#opened();
  }

  settled(): boolean {
    if (this.#open) return true;
    const state = this.#relay.read(this.#handle);
    if (state === RELAY_RELAYING && this.#handsOver) this.#opened();
    // Connected, or ended with its record on the way: that record decides, not the clock.
    return state !== RELAY_CONNECTING;
  }

  buffered(): number {
    return 0; // in the kernel: socket buffers and at most one pipe per direction
  }

  sample(out: CarrierSample): void {
    if (this.#open && this.#handle >= 0) {
      this.#relay.read(this.#handle);
      this.#takeCounters();
    }
    out.up = this.#up;
    out.down = this.#down;
    out.halfClosed = this.#halfClosed;
  }

  abandon(): void {
    // Still connecting (settled() said so this turn): the relay holds no client yet.
    if (this.#handle >= 0) this.#relay.abort(this.#handle);
    this.#handle = -1;
  }

  destroy(): void {
    if (this.#handle >= 0) {
      const found = this.#relay.abort(this.#handle);
      this.#handle = -1;
      // The relay may have attached the client without telling yet: then it closed it too.
      if (found === ABORT_CLIENT_CLOSED) {
        this.#takeCounters();
        this.#client.handedOver();
      } else if (this.#open) {
        this.#takeCounters();
      }
    }
    this.#client.destroy();
  }

  /** @internal The relay connected a client that is a net.Socket: attach it, or go on in streams. */
  relayConnected(): void {
    const down = this.#client.current;
    const fd = down === undefined ? undefined : streamFd(down);
    if (down !== undefined && fd !== undefined && !down.readableEnded && down.readableLength === 0) {
      try {
        this.#relay.attach(this.#handle, fd, this.#prefix, false);
        this.#baseUp = down.bytesRead;
        this.#open = true;
        this.#prefix = undefined;
        this.#client.handedOver();
        this.#owner.carrierOpen(true);
        return;
      } catch (err) {
        const side = (err as { side?: number }).side;
        if (side !== undefined) {
          // A socket failed: the relay is gone.
          this.#handle = -1;
          const code = errnoName((err as { errno?: number }).errno);
          this.#owner.carrierEnded({ error: { side: side === 0 ? 'down' : 'up', code } });
          return;
        }
        // Short of descriptors: the relay stays connected; Node streams take over below.
      }
    }
    const upFd = this.#relay.detach(this.#handle);
    this.#handle = -1;
    const next = new StreamCarrier(this.#owner, this.#client);
    this.#owner.carrierReplaced(next);
    next.adoptConnected(upFd, this.#prefix);
  }

  /** @internal The connect failed; a descriptor given with it is still the client's. */
  relayConnectFailed(errno: number): void {
    this.#handle = -1;
    this.#owner.carrierConnectFailed(errnoName(errno));
  }

  /** @internal Both directions finished, or a socket failed. */
  relayEnded(end: RelayEnd): void {
    this.#handle = -1;
    if (!this.#open) this.#opened();
    this.#up = this.#baseUp + end.bytesUp;
    this.#down = end.bytesDown;
    if (end.bytesDown > 0) this.#owner.answered();
    if (end.errorSide >= 0) {
      const side = end.errorSide === 0 ? 'down' : 'up';
      this.#owner.carrierEnded({ error: { side, code: errnoName(end.errno) } });
    } else {
      // Both directions ended with FIN: the backend closed cleanly.
      this.#owner.carrierEnded({ finFirst: end.firstFin === 1 ? 'up' : 'down' });
    }
  }

  /** The relay attached the bare descriptor given with the connect: the client is the relay's now. */
  #opened(): void {
    this.#open = true;
    this.#handsOver = false;
    this.#client.handedOver();
    this.#owner.carrierOpen(true);
  }

  /** Copies the relay's counters (just written to relayStats by read or abort). */
  #takeCounters(): void {
    this.#halfClosed = relayStats[STAT_FIRST_FIN]! >= 0;
    this.#up = this.#baseUp + relayStats[STAT_BYTES_UP]!;
    this.#down = relayStats[STAT_BYTES_DOWN]!;
  }
}
