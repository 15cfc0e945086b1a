import { closeSync } from 'node:fs';
import { createRequire } from 'node:module';

/**
 * The optional splice relay (native/relay.c, built by `npm ci` into build/sluice_relay.node). It
 * connects a session's upstream itself and, once the client's socket is attached, moves the
 * bytes between the two inside the kernel (splice(2) through a pipe) under the same event loop:
 * no net.Socket for the upstream, no Buffer and no JavaScript per read. Sessions fall back to
 * Node streams when it is not built.
 */
interface Addon {
  init(
    onEvent: (slot: number, kind: number) => void,
    stats: Float64Array,
    onAccept: (id: number, fd: number, port: number, ip: string) => void,
    onDatagram: (id: number, port: number, ip: string, payload: Buffer) => void,
    onUdp: (flow: number, kind: number) => void,
  ): void;
  udpListen(fd: number): number;
  udpUnlisten(id: number): void;
  udpFlow(listener: number, ip: string, port: number, header: Buffer | undefined): number;
  udpSend(flow: number, payload: Buffer): number;
  udpInfo(flow: number): boolean;
  udpClose(flow: number): void;
  /** Accepts the connections of a listening descriptor (dup'ed); returns its id. */
  listen(fd: number): number;
  unlisten(id: number): void;
  /** "ip port" of a socket's local address ('' when unknown). */
  sockname(fd: number): string;
  /** A slot connecting to ip:port, or -errno when the connect failed at once. */
  connect(ip: string, port: number): number;
  /** Dups `clientFd` and starts relaying; `prefix` goes upstream first. */
  attach(slot: number, clientFd: number, prefix: Buffer | undefined, own: boolean): void;
  /** The connected upstream descriptor, handed over (the slot is freed). */
  detach(slot: number): number;
  info(slot: number): boolean;
  abort(slot: number): boolean;
  counts(): [relays: number, pipes: number, pooledPipes: number];
}

/** Written by the addon on info/abort and before each callback. */
export const relayStats = new Float64Array(8);
export const STAT_BYTES_UP = 0;
export const STAT_BYTES_DOWN = 1;
/** -1 none yet, 0 the client, 1 the backend. */
export const STAT_FIRST_FIN = 2;
/** -1 no error, 0 the client's socket, 1 the backend's. */
export const STAT_ERROR_SIDE = 3;
export const STAT_ERRNO = 4;

/** relayStats after udpInfo(): */
export const UDP_DATAGRAMS_IN = 0;
export const UDP_BYTES_IN = 1;
export const UDP_DATAGRAMS_OUT = 2;
export const UDP_BYTES_OUT = 3;
/** Datagrams the PROXY header made too big (emsgsize), and those the kernel refused (enobufs). */
export const UDP_DROPS_SIZE = 4;
export const UDP_DROPS_FULL = 5;

/** A flow's backend refused (ICMP port unreachable), or answered again after refusals. */
export const UDP_REFUSED = 1;
export const UDP_ANSWERED = 2;

export const RELAY_ENDED = 0;
export const RELAY_CONNECTED = 1;
export const RELAY_CONNECT_FAILED = 2;

/** A session using the relay; told when its upstream connects or fails, and when it ends. */
export interface RelayOwner {
  relayEvent(kind: number): void;
}

const owners: (RelayOwner | undefined)[] = [];

/** A listener whose connections the relay accepts. */
export interface AcceptOwner {
  /** A connection (fd >= 0, the owner's to close), or an accept failure (fd = -errno). */
  accepted(fd: number, ip: string, port: number): void;
}

const acceptOwners: (AcceptOwner | undefined)[] = [];

function onAccept(id: number, fd: number, port: number, ip: string): void {
  const owner = acceptOwners[id];
  if (owner !== undefined) owner.accepted(fd, ip, port);
  else if (fd >= 0) closeSync(fd);
}

/** A UDP listener whose socket the relay reads. */
export interface DatagramOwner {
  /**
   * A datagram from a client with no flow (call udpFlow() from here to give it one), or a receive
   * error (port = -errno).
   */
  datagram(ip: string, port: number, payload: Buffer): void;
}

/** A UDP flow the relay forwards. */
export interface UdpFlowOwner {
  udpEvent(kind: number): void;
}

const datagramOwners: (DatagramOwner | undefined)[] = [];
const flowOwners: (UdpFlowOwner | undefined)[] = [];

function onDatagram(id: number, port: number, ip: string, payload: Buffer): void {
  datagramOwners[id]?.datagram(ip, port, payload);
}

function onUdp(flow: number, kind: number): void {
  flowOwners[flow]?.udpEvent(kind);
}

function onEvent(slot: number, kind: number): void {
  const owner = owners[slot];
  // Connected: the slot goes on (attached or detached by the owner). Otherwise it is gone.
  if (kind !== RELAY_CONNECTED) owners[slot] = undefined;
  owner?.relayEvent(kind);
}

const EINVAL = 22;

export class SpliceRelay {
  readonly #addon: Addon;

  constructor(addon: Addon) {
    this.#addon = addon;
    addon.init(onEvent, relayStats, onAccept, onDatagram, onUdp);
  }

  /**
   * Starts connecting to `ip`:`port`. Returns the slot; a negative errno when the connect failed
   * at once; undefined when `ip` is not an IP literal (Node's connect resolves names).
   */
  connect(owner: RelayOwner, ip: string, port: number): number | undefined {
    const slot = this.#addon.connect(ip, port);
    if (slot === -EINVAL) return undefined;
    if (slot >= 0) owners[slot] = owner;
    return slot;
  }

  /**
   * Starts relaying a connected slot. Throws an Error with `errno`, and `side` (0 client, 1
   * backend) when a socket failed (the slot is then gone) rather than the host running short of
   * descriptors (the slot stays connected).
   */
  attach(slot: number, clientFd: number, prefix: Buffer | undefined, own = false): void {
    this.#addon.attach(slot, clientFd, prefix, own);
  }

  /**
   * Accepts the connections of a bound, listening socket (the relay keeps its own copy of the
   * descriptor, so the net.Server may close): each goes to owner.accepted() with TCP_NODELAY set.
   */
  listen(owner: AcceptOwner, fd: number): number {
    const id = this.#addon.listen(fd);
    acceptOwners[id] = owner;
    return id;
  }

  unlisten(id: number): void {
    acceptOwners[id] = undefined;
    this.#addon.unlisten(id);
  }

  /**
   * Reads a bound UDP socket's datagrams in batches (recvmmsg): those of known flows go straight
   * to their backend (sendmmsg), others to owner.datagram(). Stop Node's own reading first.
   */
  udpListen(owner: DatagramOwner, fd: number): number {
    const id = this.#addon.udpListen(fd);
    datagramOwners[id] = owner;
    return id;
  }

  udpUnlisten(id: number): void {
    datagramOwners[id] = undefined;
    this.#addon.udpUnlisten(id);
  }

  /**
   * A flow for the client whose datagram owner.datagram() is deciding on, through a socket
   * connected to ip:port; `header` goes before every payload. The flow id, or -errno.
   */
  udpFlow(
    owner: UdpFlowOwner,
    listener: number,
    ip: string,
    port: number,
    header: Buffer | undefined,
  ): number {
    const id = this.#addon.udpFlow(listener, ip, port, header);
    if (id >= 0) flowOwners[id] = owner;
    return id;
  }

  /** Sends one payload on a flow: 0, or -errno. */
  udpSend(flow: number, payload: Buffer): number {
    return this.#addon.udpSend(flow, payload);
  }

  /** Refreshes relayStats with a flow's counters. */
  udpRead(flow: number): boolean {
    return this.#addon.udpInfo(flow);
  }

  udpClose(flow: number): void {
    flowOwners[flow] = undefined;
    this.#addon.udpClose(flow);
  }

  /** The local address of a connected socket. */
  sockname(fd: number): { ip: string; port: number } {
    const [ip = '', port = '0'] = this.#addon.sockname(fd).split(' ');
    return { ip, port: Number(port) };
  }

  /** Takes a connected slot's upstream descriptor back; the slot is freed. */
  detach(slot: number): number {
    owners[slot] = undefined;
    return this.#addon.detach(slot);
  }

  /** Refreshes relayStats for `slot`. */
  read(slot: number): boolean {
    return this.#addon.info(slot);
  }

  /** Ends `slot` now (its owner is not called back); relayStats hold its final counters. */
  abort(slot: number): void {
    owners[slot] = undefined;
    this.#addon.abort(slot);
  }

  counts(): { relays: number; pipes: number; pooledPipes: number } {
    const [relays, pipes, pooledPipes] = this.#addon.counts();
    return { relays, pipes, pooledPipes };
  }
}

let loaded: { relay: SpliceRelay | undefined; error: string | undefined } | undefined;

/** The relay if it was loaded already (metrics read it without loading it). */
export function loadedSpliceRelay(): SpliceRelay | undefined {
  return loaded?.relay;
}

/** Loads the addon once; `error` says why it is unavailable. */
export function loadSpliceRelay(): { relay: SpliceRelay | undefined; error: string | undefined } {
  if (loaded !== undefined) return loaded;
  if (process.platform !== 'linux') {
    loaded = { relay: undefined, error: `splice(2) is Linux only (this is ${process.platform})` };
    return loaded;
  }
  try {
    // src/proxy and dist/proxy are both two levels below the package root.
    const addon = createRequire(import.meta.url)('../../build/sluice_relay.node') as Addon;
    loaded = { relay: new SpliceRelay(addon), error: undefined };
  } catch (err) {
    const why = err instanceof Error ? err.message.split('\n')[0] : String(err);
    loaded = { relay: undefined, error: `build/sluice_relay.node could not be loaded: ${why}` };
  }
  return loaded;
}
