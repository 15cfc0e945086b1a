import { test } from 'vitest';
import { buildPicker } from '../../src/upstream/balancer/index.js';
import type { Algorithm, PickContext, PickerOptions, Target } from '../../src/upstream/balancer/picker.js';
import { seededRandom } from '../../src/util/clock.js';

/**
 * Cost of one `pick` per algorithm and pool size, compared side by side (Vitest 5 benchmark API:
 * `bench.compare` inside a test). Pickers are built outside the measured function
 * (they are built once per membership change); clients rotate over 4096 distinct contexts so
 * hashing pickers do not hit one cached table line.
 */

const ALGORITHMS: readonly Algorithm[] = [
  'round-robin',
  'least-connections',
  'power-of-two',
  'random',
  'maglev',
  'ring-hash',
];
const SIZES = [10, 1_000, 10_000] as const;

const random = seededRandom(42);
const clients: PickContext[] = Array.from({ length: 4096 }, (_, i) => ({
  clientIp: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`,
  clientPort: 1024 + i,
  sni: undefined,
}));

function pool(n: number): Target[] {
  return Array.from({ length: n }, (_, i) => ({
    address: `10.1.${i >> 8}.${i & 255}:8080`,
    weight: 1 + (i % 4),
    load: Math.floor(random() * 100),
  }));
}

function measure(algorithm: Algorithm, n: number, extra: Partial<PickerOptions> = {}): () => void {
  const picker = buildPicker(algorithm, pool(n), { hashKey: 'source-ip', random, ...extra });
  let i = 0;
  return () => {
    picker.pick(clients[i++ & 4095]!, undefined);
  };
}

for (const n of SIZES) {
  test(`pick, ${n} targets`, async ({ bench }) => {
    await bench.compare(
      ...ALGORITHMS.map((algorithm) => bench(algorithm, measure(algorithm, n))),
      bench('ring-hash, bounded load 1.25', measure('ring-hash', n, { boundedLoadFactor: 1.25 })),
    );
  });
}
