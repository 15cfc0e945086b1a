import { createRequire } from 'node:module';

/**
 * The optional splice relay (native/relay.c, built by `npm ci` into build/sluice_relay.node):
 * once a session's upstream has connected, its two sockets are handed to it and the bytes move
 * between them inside the kernel (splice(2) through a pipe) under the same event loop, with no
 * Buffer and no JavaScript per read. Sessions fall back to Node streams when it is not built.
 */
interface Addon {
  init(onEnd: (slot: number) => void, stats: Float64Array): void;
  /** Takes over (dups) the two descriptors; `prefix` is sent upstream before anything else. */
  start(downFd: number, upFd: number, prefix?: Buffer): number;
  /** Fills `stats`; false when the slot is not running. */
  info(slot: number): boolean;
  /** Fills `stats`, closes both sockets; no onEnd call. */
  abort(slot: number): boolean;
  counts(): [relays: number, pipes: number, pooledPipes: number];
}

/** Written by the addon on info/abort and before each onEnd call. */
export const relayStats = new Float64Array(5);
export const STAT_BYTES_UP = 0;
export const STAT_BYTES_DOWN = 1;
/** -1 none yet, 0 the client, 1 the backend. */
export const STAT_FIRST_FIN = 2;
/** -1 no error, 0 the client's socket, 1 the backend's. */
export const STAT_ERROR_SIDE = 3;
export const STAT_ERRNO = 4;

/** A session relayed by the addon; told once when the relay ends on its own. */
export interface RelayOwner {
  relayEnded(): void;
}

const owners: (RelayOwner | undefined)[] = [];

function onEnd(slot: number): void {
  const owner = owners[slot];
  owners[slot] = undefined;
  owner?.relayEnded();
}

export class SpliceRelay {
  readonly #addon: Addon;

  constructor(addon: Addon) {
    this.#addon = addon;
    addon.init(onEnd, relayStats);
  }

  /**
   * Hands both descriptors to the relay. Returns the slot, or throws an Error with `errno` (and
   * `side`, 0 client / 1 backend, when a socket failed rather than the host running short).
   */
  start(owner: RelayOwner, downFd: number, upFd: number, prefix: Buffer | undefined): number {
    const slot =
      prefix === undefined ? this.#addon.start(downFd, upFd) : this.#addon.start(downFd, upFd, prefix);
    owners[slot] = owner;
    return slot;
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
