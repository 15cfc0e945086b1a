import type { Random } from '../../util/clock.js';

/** What a picker may know of a backend. */
export interface Target {
  /** `host:port`, the routing-stable identity (hash algorithms key on it). */
  readonly address: string;
  /** Effective weight (> 0 for every target a picker is given; slow start already applied). */
  readonly weight: number;
  /** Open sessions and flows: this process's plus other replicas' as last synced. Read at pick time. */
  readonly load: number;
  /**
   * Told of every change of `load`: a picker that keeps loads in an index (least-connections)
   * sets itself here when built, and a target whose load moves calls it after each change.
   */
  loadWatcher?: LoadWatcher | undefined;
}

/** What a target tells when its `load` changed. */
export interface LoadWatcher {
  loadChanged(target: Target): void;
}

/** Who is asking: the client as seen after a trusted PROXY header, and the SNI when one was peeked. */
export interface PickContext {
  readonly clientIp: string;
  readonly clientPort: number;
  readonly sni: string | undefined;
  /**
   * A key hash that the hashing algorithms (maglev, ring-hash) use instead of hashing
   * `hash_key`: a QUIC listener passes the hash of the Destination Connection ID here
   * ({@link murmur3Bytes}). Other algorithms ignore it.
   */
  readonly hash?: number;
}

export type HashKey = 'source-ip' | 'source-ip-port' | 'sni';

export type Algorithm =
  'round-robin' | 'least-connections' | 'power-of-two' | 'random' | 'maglev' | 'ring-hash';

export interface PickerOptions {
  readonly hashKey: HashKey;
  readonly random: Random;
  /** maglev lookup table size; prime. Default 65537. */
  readonly maglevTableSize?: number;
  /** ring-hash: points per unit of weight. Default 160 (ketama). */
  readonly ringPointsPerWeight?: number;
  /** ring-hash bounded load factor (e.g. 1.25); 0 or absent = unbounded. */
  readonly boundedLoadFactor?: number;
}

/**
 * A picker is built once per change of the ready set (or of an effective weight) and then asked
 * once per new session. `pick` never sorts and allocates nothing per call.
 */
export interface Picker<T extends Target> {
  /**
   * Chooses a backend for a new session or flow.
   * @param exclude backends already tried for this session (connect retries); never returned.
   * @returns undefined when every target is excluded (or there are none).
   */
  pick(ctx: PickContext, exclude: ReadonlySet<T> | undefined): T | undefined;
}

export type PickerFactory = <T extends Target>(targets: readonly T[], opts: PickerOptions) => Picker<T>;
