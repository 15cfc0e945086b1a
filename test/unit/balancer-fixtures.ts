import type {
  HashKey,
  LoadWatcher,
  PickContext,
  PickerOptions,
  Target,
} from '../../src/upstream/balancer/picker.js';
import { seededRandom } from '../../src/util/clock.js';

/**
 * A target whose load a test moves, as the pool does when sessions open and close; like a
 * Backend, it tells its load watcher of every change.
 */
export class TestTarget implements Target {
  readonly address: string;
  readonly weight: number;
  loadWatcher: LoadWatcher | undefined;
  #load: number;

  constructor(address: string, weight: number, load: number) {
    this.address = address;
    this.weight = weight;
    this.#load = load;
  }

  get load(): number {
    return this.#load;
  }

  set load(n: number) {
    this.#load = n;
    this.loadWatcher?.loadChanged(this);
  }
}

export function target(address: string, weight = 1, load = 0): TestTarget {
  return new TestTarget(address, weight, load);
}

/** `n` targets at 10.0.0.1:8080, 10.0.0.2:8080, … */
export function targets(n: number, weight = 1): TestTarget[] {
  return Array.from({ length: n }, (_, i) => target(`10.0.${i >> 8}.${i & 255}:8080`, weight));
}

export function options(hashKey: HashKey = 'source-ip', seed = 1): PickerOptions {
  return { hashKey, random: seededRandom(seed) };
}

/** The i-th of many distinct client IPs (172.16.0.0/12 and up), port varying too. */
export function client(i: number, sni?: string): PickContext {
  const ip = `172.${16 + ((i >> 16) & 15)}.${(i >> 8) & 255}.${i & 255}`;
  return { clientIp: ip, clientPort: 1024 + (i % 60000), sni };
}

/** How many of `picks` went to each address. */
export function tally(picks: readonly (Target | undefined)[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const t of picks) {
    const key = t?.address ?? 'none';
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  return counts;
}
