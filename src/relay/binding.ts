import { closeSync } from 'node:fs';
import { createRequire } from 'node:module';

/**
 * The optional splice relay (native/*.c, built by `npm ci` into build/sluice_relay.node). It
 * connects a session's upstream itself and, once the client's socket is attached, moves the
 * bytes between the two inside the kernel (splice(2) through a pipe) under the same event loop:
 * no net.Socket for the upstream, no Buffer and no JavaScript per read. Sessions fall back to
 * Node streams when it is not built.
 *
 * A relay is named by a handle: its slot and a generation in one number, so a handle kept after
 * its relay ended can never act on the relay that took the slot next. What happens to relays and
 * listeners reaches JavaScript as records, all those of one loop turn in one call (`onBatch`).
 */
interface Addon {
  init(
    onBatch: (count: number, ...ips: string[]) => void,
    mail: Float64Array,
    stats: Float64Array,
    onDatagram: (id: number, port: number, ip: string, payload: Buffer) => void,
    onUdp: (flow: number, kind: number, data?: Buffer) => void,
  ): void;
  udpListen(fd: number): number;
  udpUnlisten(id: number): void;
  udpFlow(
    listener: number,
    ip: string,
    port: number,
    header: Buffer | undefined,
    maxReplies: number,
    watchCids: boolean,
  ): number;
  udpSend(flow: number, payload: Buffer): number;
  udpInfo(flow: number): boolean;
  udpClose(flow: number): void;
  /**
   * Accepts the connections of a listening descriptor (dup'ed); returns its id. `shared`: other
   * processes accept from the same socket, and a connection wakes one of them (EPOLLEXCLUSIVE).
   */
  listen(fd: number, shared?: boolean): number;
  unlisten(id: number): void;
  /** "ip port" of a socket's local address ('' when unknown). */
  sockname(fd: number): string;
  /**
   * A relay connecting to ip:port (its handle), or -errno when the connect failed at once. With
   * clientFd >= 0 the relay attaches that descriptor as soon as the upstream connects, `prefix`
   * first; the descriptor stays the caller's until then (and after a failed connect).
   */
  connect(ip: string, port: number, clientFd: number, prefix: Buffer | undefined): number;
  /** Dups `clientFd` (or takes it, with `own`) and starts relaying; `prefix` goes upstream first. */
  attach(handle: number, clientFd: number, prefix: Buffer | undefined, own: boolean): void;
  /** The connected upstream descriptor, handed over (the relay is freed). */
  detach(handle: number): number;
  /** The relay's state (RELAY_GONE once it has ended); fills relayStats. */
  info(handle: number): number;
  /** Ends the relay now (no record): see ABORT_*; fills relayStats. */
  abort(handle: number): number;
  counts(): [relays: number, pipes: number, pooledPipes: number];
}

/** Written by the addon on info(), abort() and udpInfo(). */
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
/** Replies beyond udp.max_replies_per_datagram (amplification). */
export const UDP_DROPS_AMPLIFICATION = 6;

/** A flow's backend refused (ICMP port unreachable), or answered again after refusals. */
export const UDP_REFUSED = 1;
export const UDP_ANSWERED = 2;
/**
 * A QUIC flow's backend sent a long-header packet with a Source Connection ID unlike the last
 * one reported (the ID's octets come with it): handshakes and Retry only.
 */
export const UDP_SERVER_CID = 3;

/** A relay's state (info()): ended, connecting, connected and waiting for attach(), relaying. */
export const RELAY_GONE = 0;
export const RELAY_CONNECTING = 1;
export const RELAY_CONNECTED = 2;
export const RELAY_RELAYING = 3;

/**
 * What abort() found: the relay had ended already; it ended now and the client's descriptor was
 * not taken (still the caller's); it ended now and closed the client it carried.
 */
export const ABORT_GONE = 0;
export const ABORT_CLIENT_KEPT = 1;
export const ABORT_CLIENT_CLOSED = 2;

/** How a relay ended: bytes delivered each way, who sent FIN first and the first error. */
export interface RelayEnd {
  readonly bytesUp: number;
  readonly bytesDown: number;
  /** -1 none, 0 the client, 1 the backend. */
  readonly firstFin: number;
  /** -1 no error, 0 the client's socket, 1 the backend's. */
  readonly errorSide: number;
  readonly errno: number;
}

/** A session using the relay; told what happens to its relay (at most one end, failed or ended). */
export interface RelayOwner {
  /** The upstream connected; the relay waits for attach() or detach() (no client was given). */
  relayConnected(): void;
  /** The connect failed; a client descriptor given to connect() is still the owner's. */
  relayConnectFailed(errno: number): void;
  /** The relay ended on its own (both directions finished, or a socket failed). */
  relayEnded(end: RelayEnd): void;
}

/** A listener whose connections the relay accepts. */
export interface AcceptOwner {
  /** A connection (fd >= 0, the owner's to close), or an accept failure (fd = -errno). */
  accepted(fd: number, ip: string, port: number): void;
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
  udpEvent(kind: number, data?: Buffer): void;
}

/** Handles are generation × HANDLE_SLOTS + slot (see native/relay.h). */
const HANDLE_SLOTS = 2 ** 24;
/** The records of one batch: MAIL_RECS records of REC_LEN numbers, written by the addon. */
const REC_LEN = 8;
const MAIL_RECS = 256;
const REC_ACCEPTED = 1;
const REC_CONNECTED = 2;
const REC_CONNECT_FAILED = 3;
const REC_ENDED = 4;
const mail = new Float64Array(MAIL_RECS * REC_LEN);

/** Relay owners by slot, beside the handle each was given: a record of an older relay is dropped. */
const owners: (RelayOwner | undefined)[] = [];
const ownerHandles: number[] = [];
const acceptOwners: (AcceptOwner | undefined)[] = [];
const datagramOwners: (DatagramOwner | undefined)[] = [];
const flowOwners: (UdpFlowOwner | undefined)[] = [];

/** The owner of `handle`'s relay; unless `keep`, the relay is over and the owner forgotten. */
function ownerOf(handle: number, keep: boolean): RelayOwner | undefined {
  const slot = handle % HANDLE_SLOTS;
  if (ownerHandles[slot] !== handle) return undefined;
  const owner = owners[slot];
  if (!keep) owners[slot] = undefined;
  return owner;
}

/** One loop turn's records: accepted connections, connects that succeeded or failed, relays that ended. */
function onBatch(count: number, ...ips: string[]): void {
  for (let k = 0; k < count; k++) {
    const o = k * REC_LEN;
    const kind = mail[o];
    const id = mail[o + 1]!;
    if (kind === REC_ACCEPTED) {
      const fd = mail[o + 2]!;
      const owner = acceptOwners[id];
      if (owner !== undefined) owner.accepted(fd, fd >= 0 ? (ips[mail[o + 4]! - 1] ?? '') : '', mail[o + 3]!);
      else if (fd >= 0) closeSync(fd);
    } else if (kind === REC_CONNECTED) {
      ownerOf(id, true)?.relayConnected();
    } else if (kind === REC_CONNECT_FAILED) {
      ownerOf(id, false)?.relayConnectFailed(mail[o + 2]!);
    } else if (kind === REC_ENDED) {
      ownerOf(id, false)?.relayEnded({
        bytesUp: mail[o + 2]!,
        bytesDown: mail[o + 3]!,
        firstFin: mail[o + 4]!,
        errorSide: mail[o + 5]!,
        errno: mail[o + 6]!,
      });
    }
  }
}

function onDatagram(id: number, port: number, ip: string, payload: Buffer): void {
  datagramOwners[id]?.datagram(ip, port, payload);
}

function onUdp(flow: number, kind: number, data?: Buffer): void {
  flowOwners[flow]?.udpEvent(kind, data);
}

const EINVAL = 22;

export class SpliceRelay {
  readonly #addon: Addon;

  constructor(addon: Addon) {
    this.#addon = addon;
    addon.init(onBatch, mail, relayStats, onDatagram, onUdp);
  }

  /**
   * Starts connecting to `ip`:`port`. With `clientFd` (a descriptor with nothing read from it),
   * the relay attaches it once connected and relays at once, `prefix` first: the owner hears only
   * relayConnectFailed (the descriptor is still its own) or relayEnded. Without one the owner
   * hears relayConnected and then calls attach() or detach(). Returns the handle; a negative
   * errno when the connect failed at once; undefined when `ip` is not an IP literal (Node's
   * connect resolves names).
   */
  connect(owner: RelayOwner, ip: string, port: number, clientFd = -1, prefix?: Buffer): number | undefined {
    const handle = this.#addon.connect(ip, port, clientFd, prefix);
    if (handle === -EINVAL) return undefined;
    if (handle >= 0) {
      const slot = handle % HANDLE_SLOTS;
      owners[slot] = owner;
      ownerHandles[slot] = handle;
    }
    return handle;
  }

  /**
   * Starts relaying a connected relay. Throws an Error with `errno`, and `side` (0 client, 1
   * backend) when a socket failed (the relay is then gone) rather than the host running short of
   * descriptors (the relay stays connected).
   */
  attach(handle: number, clientFd: number, prefix: Buffer | undefined, own = false): void {
    this.#addon.attach(handle, clientFd, prefix, own);
  }

  /**
   * Accepts the connections of a bound, listening socket (the relay keeps its own copy of the
   * descriptor, so the net.Server may close): each goes to owner.accepted() with TCP_NODELAY set.
   * `shared`: other processes (workers) accept from the same socket too.
   */
  listen(owner: AcceptOwner, fd: number, shared = false): number {
    const id = this.#addon.listen(fd, shared);
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
   * connected to ip:port; `header` goes before every payload; at most `maxReplies` replies per
   * datagram from the client (0: no cap). With `watchCids` the relay reports the Source
   * Connection ID of the backend's long-header QUIC replies (UDP_SERVER_CID). The flow id, or
   * -errno.
   */
  udpFlow(
    owner: UdpFlowOwner,
    listener: number,
    ip: string,
    port: number,
    header: Buffer | undefined,
    maxReplies = 0,
    watchCids = false,
  ): number {
    const id = this.#addon.udpFlow(listener, ip, port, header, maxReplies, watchCids);
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

  /** Takes a connected relay's upstream descriptor back; the relay is freed. */
  detach(handle: number): number {
    ownerOf(handle, false);
    return this.#addon.detach(handle);
  }

  /** The relay's state (RELAY_*); refreshes relayStats while it runs. */
  read(handle: number): number {
    return this.#addon.info(handle);
  }

  /** Ends the relay now (its owner is not told); relayStats hold its final counters. See ABORT_*. */
  abort(handle: number): number {
    ownerOf(handle, false);
    return this.#addon.abort(handle);
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
    // src/relay and dist/relay are both two levels below the package root.
    const addon = createRequire(import.meta.url)('../../build/sluice_relay.node') as Addon;
    loaded = { relay: new SpliceRelay(addon), error: undefined };
  } catch (err) {
    const why = err instanceof Error ? err.message.split('\n')[0] : String(err);
    loaded = { relay: undefined, error: `build/sluice_relay.node could not be loaded: ${why}` };
  }
  return loaded;
}
