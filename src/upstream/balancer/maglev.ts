import type { HashKey, PickContext, Picker, PickerOptions, Target } from './picker.js';
import { anyAllowed, hashContext, murmur3, sortedByAddress } from './hash.js';

export const DEFAULT_MAGLEV_TABLE_SIZE = 65537;

// Seeds of the two independent hashes of a backend address (offset and skip of its permutation).
const OFFSET_SEED = 0x9e3779b9;
const SKIP_SEED = 0x85ebca6b;

export function isPrime(n: number): boolean {
  if (!Number.isInteger(n) || n < 2) return false;
  if (n % 2 === 0) return n === 2;
  for (let d = 3; d * d <= n; d += 2) if (n % d === 0) return false;
  return true;
}

/**
 * Fills a Maglev lookup table (Eisenbud et al., NSDI 2016, "populate"): each backend walks its own
 * permutation of the slots, (offset + k·skip) mod size, and claims its next free slot when its turn
 * comes, until every slot is taken. `size` must be prime so every permutation visits every slot.
 *
 * Weights (as Envoy does): a backend of weight w takes a turn in round r while
 * r·w ≥ (turns taken + 1)·maxWeight, so it claims about w/maxWeight of the slots the heaviest
 * backend claims. Products rather than running sums keep fractional weights from drifting.
 *
 * @param addresses backend addresses in a canonical order (see sortedByAddress)
 * @returns slot → index into `addresses`; every slot filled when there is at least one address
 */
export function buildMaglevTable(
  addresses: readonly string[],
  weights: readonly number[],
  size: number,
): Int32Array {
  if (!isPrime(size)) throw new RangeError(`maglev table size ${size} is not prime`);
  const n = addresses.length;
  const table = new Int32Array(size).fill(-1);
  if (n === 0) return table;
  const next = new Uint32Array(n);
  const skip = new Uint32Array(n);
  const turns = new Float64Array(n);
  let maxWeight = 0;
  for (let j = 0; j < n; j++) {
    const address = addresses[j] ?? '';
    next[j] = murmur3(address, OFFSET_SEED) % size;
    skip[j] = (murmur3(address, SKIP_SEED) % (size - 1)) + 1;
    maxWeight = Math.max(maxWeight, weights[j] ?? 0);
  }
  let filled = 0;
  for (let round = 1; ; round++) {
    for (let j = 0; j < n; j++) {
      if (round * (weights[j] ?? 0) < ((turns[j] ?? 0) + 1) * maxWeight) continue;
      turns[j] = (turns[j] ?? 0) + 1;
      next[j] = claim(table, j, next[j] ?? 0, skip[j] ?? 1);
      if (++filled === size) return table;
    }
  }
}

/** Writes backend j into its first free slot from `at` along its permutation; returns where it resumes. */
function claim(table: Int32Array, j: number, at: number, skip: number): number {
  const size = table.length;
  let slot = at;
  while (table[slot] !== -1) slot = slot + skip >= size ? slot + skip - size : slot + skip;
  table[slot] = j;
  return slot + skip >= size ? slot + skip - size : slot + skip;
}

/**
 * Maglev consistent hashing: a prime-sized lookup table maps the hash of the client key to a
 * backend.
 *
 * - Guarantees: every replica that sees the same backends (addresses and weights, in any order)
 *   builds the same table, so a client lands on the same backend whichever replica it reaches.
 *   Removing one of N backends remaps about 1/N of keys (its own, plus a little churn: the table
 *   is near-minimally disruptive, less so as N approaches the table size; keep size ≥ 100·N).
 *   Shares follow weights to within about N/size.
 * - Cost: pick O(1), one hash of the key and one table read, no allocation. Build
 *   O(size · log size) time and 4·size bytes (65537 slots: 256 KiB, about 10 ms).
 * - `exclude` (connect retries): walks the table onward from the key's slot to the next allowed
 *   backend. Neighbouring slots belong to unrelated backends, in proportion to weight, and the walk
 *   depends only on the table, so every replica retries the same client to the same backend.
 * - Use when: clients should stick to a backend (caches, stateful UDP, sessions resumed across
 *   replicas) with even spread and O(1) picks; prefer ring-hash when load must be bounded.
 */
export class MaglevPicker<T extends Target> implements Picker<T> {
  readonly #targets: readonly T[];
  readonly #table: Int32Array;
  readonly #hashKey: HashKey;

  constructor(targets: readonly T[], opts: PickerOptions) {
    this.#targets = sortedByAddress(targets);
    this.#hashKey = opts.hashKey;
    this.#table = buildMaglevTable(
      this.#targets.map((t) => t.address),
      this.#targets.map((t) => t.weight),
      opts.maglevTableSize ?? DEFAULT_MAGLEV_TABLE_SIZE,
    );
  }

  pick(ctx: PickContext, exclude: ReadonlySet<T> | undefined): T | undefined {
    if (this.#targets.length === 0) return undefined;
    const size = this.#table.length;
    let slot = hashContext(ctx, this.#hashKey) % size;
    const first = this.#targets[this.#table[slot] ?? -1];
    if (exclude === undefined || exclude.size === 0) return first;
    if (!anyAllowed(this.#targets, exclude)) return undefined;
    for (let step = 0; step < size; step++) {
      const t = this.#targets[this.#table[slot] ?? -1];
      if (t !== undefined && !exclude.has(t)) return t;
      slot = slot + 1 === size ? 0 : slot + 1;
    }
    // Only a backend that won no slot (N close to the table size, or a tiny weight) is left.
    for (const t of this.#targets) if (!exclude.has(t)) return t;
    return undefined;
  }
}
