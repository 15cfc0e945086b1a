import { closeSync } from 'node:fs';
import net from 'node:net';
import { normalizeIp } from '../util/cidr.js';
import type { SpliceRelay } from '../relay/binding.js';
import { CLIENT_SOCKET_OPTIONS } from './socket-options.js';

/** Who hears that the client's socket failed or closed (the session, then the carrier that relays it). */
export interface DownstreamOwner {
  clientError(err: NodeJS.ErrnoException): void;
  clientClosed(): void;
}

const kDownstream = Symbol('sluice.downstream');
type Tagged = net.Socket & { [kDownstream]?: Downstream | undefined };

function onError(this: Tagged, err: NodeJS.ErrnoException): void {
  this[kDownstream]?.owner.clientError(err);
}

function onClose(this: Tagged): void {
  this[kDownstream]?.owner.clientClosed();
}

/**
 * The client's connection, in whichever form it is: a bare descriptor that the splice relay
 * accepted (nothing read from it: the relay can take it as it is), or a net.Socket (accepted by
 * Node, or made from the descriptor when something must read it: a preface, Node streams).
 * Failure and close of the socket go to `owner`, one shared handler for every session.
 */
export class Downstream {
  owner: DownstreamOwner;
  #fd: number;
  #socket: Tagged | undefined;
  readonly #relay: SpliceRelay | undefined;

  /** `client` is the socket, or the descriptor the relay accepted (`relay` reads its address). */
  constructor(owner: DownstreamOwner, client: net.Socket | number, relay?: SpliceRelay) {
    this.owner = owner;
    this.#relay = relay;
    if (typeof client === 'number') {
      this.#fd = client;
    } else {
      this.#fd = -1;
      this.#adopt(client);
    }
  }

  /** The bare descriptor, or -1 once it became a net.Socket or went to the relay. */
  get fd(): number {
    return this.#fd;
  }

  /** The net.Socket when there is one (none while the client is a bare descriptor). */
  get current(): net.Socket | undefined {
    return this.#socket;
  }

  /** The client as a net.Socket, made from the bare descriptor on first use (reads stay paused). */
  socket(): net.Socket {
    if (this.#socket !== undefined) return this.#socket;
    const fd = this.#fd;
    this.#fd = -1;
    return this.#adopt(new net.Socket({ ...CLIENT_SOCKET_OPTIONS, fd }));
  }

  /** True while something of the client is still ours to close. */
  get open(): boolean {
    return this.#fd >= 0 || (this.#socket !== undefined && !this.#socket.destroyed);
  }

  /** The splice relay took the client (its descriptor, or a dup of the socket's): forget it quietly. */
  handedOver(): void {
    this.#fd = -1;
    const s = this.#socket;
    if (s !== undefined) {
      s[kDownstream] = undefined;
      s.destroy();
    }
  }

  /** Closes the client now, in whichever form it is. */
  destroy(): void {
    if (this.#fd >= 0) {
      closeSync(this.#fd);
      this.#fd = -1;
    }
    this.#socket?.destroy();
  }

  /**
   * The address the client connected to. Read only when needed (a PROXY header upstream): it
   * costs a getsockname call.
   */
  localAddress(): { ip: string; port: number } {
    if (this.#fd >= 0 && this.#relay !== undefined) {
      const { ip, port } = this.#relay.sockname(this.#fd);
      return { ip: normalizeIp(ip), port };
    }
    const s = this.#socket;
    return { ip: normalizeIp(s?.localAddress ?? ''), port: s?.localPort ?? 0 };
  }

  #adopt(socket: net.Socket): net.Socket {
    const s = socket as Tagged;
    this.#socket = s;
    s[kDownstream] = this;
    s.on('error', onError);
    s.on('close', onClose);
    return s;
  }
}
