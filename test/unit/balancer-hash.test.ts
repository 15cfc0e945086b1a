import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  hashContext,
  hashKey,
  hashPoint,
  hashPoints,
  murmur3,
  sortedByAddress,
} from '../../src/upstream/balancer/hash.js';
import type { HashKey } from '../../src/upstream/balancer/picker.js';

describe('murmur3', () => {
  it('matches the reference MurmurHash3_x86_32 vectors', () => {
    expect(murmur3('', 0)).toBe(0);
    expect(murmur3('', 1)).toBe(0x514e28b7);
    expect(murmur3('', 0xffffffff)).toBe(0x81f16f39);
    expect(murmur3('hello', 0)).toBe(0x248bfa47);
    expect(murmur3('Hello, world!', 1234)).toBe(0xfaf6cdb3);
    expect(murmur3('The quick brown fox jumps over the lazy dog', 0)).toBe(0x2e4ff723);
  });

  it('hashes the UTF-8 bytes of the string, as TextEncoder encodes them', () => {
    const reference = (s: string, seed: number): number => murmurBytes(new TextEncoder().encode(s), seed);
    fc.assert(
      fc.property(fc.string({ unit: 'binary' }), fc.nat(), (s, seed) => {
        expect(murmur3(s, seed)).toBe(reference(s, seed));
      }),
      { numRuns: 500 },
    );
  });

  it('hashPoint is the hash of `address#index`', () => {
    fc.assert(
      fc.property(fc.string(), fc.nat(10_000_000), (address, i) => {
        expect(hashPoint(address, i)).toBe(murmur3(`${address}#${i}`));
      }),
    );
  });

  it('hashPoints writes the same points as hashPoint, resuming after the address', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary' }), fc.nat(300), fc.nat(5), (address, count, at) => {
        const out = new Uint32Array(at + count);
        hashPoints(address, count, out, at);
        for (let i = 0; i < count; i++) expect(out[at + i]).toBe(hashPoint(address, i));
      }),
      { numRuns: 200 },
    );
  });
});

describe('hashKey', () => {
  const ctx = { clientIp: '10.0.0.7', clientPort: 51234, sni: 'API.Example.com' };

  it('extracts the configured key', () => {
    expect(hashKey(ctx, 'source-ip')).toBe('10.0.0.7');
    expect(hashKey(ctx, 'source-ip-port')).toBe('10.0.0.7:51234');
    expect(hashKey(ctx, 'sni')).toBe('api.example.com');
  });

  it('falls back to the source IP when there is no SNI', () => {
    expect(hashKey({ ...ctx, sni: undefined }, 'sni')).toBe('10.0.0.7');
    expect(hashKey({ ...ctx, sni: '' }, 'sni')).toBe('10.0.0.7');
  });

  it('treats an IPv4-mapped IPv6 address as the IPv4 client, and IPv6 hex case-insensitively', () => {
    expect(hashKey({ ...ctx, clientIp: '::ffff:10.0.0.7' }, 'source-ip')).toBe('10.0.0.7');
    expect(hashKey({ ...ctx, clientIp: '2001:DB8::1' }, 'source-ip-port')).toBe('2001:db8::1:51234');
  });

  it('hashContext hashes exactly the bytes of hashKey, without building it', () => {
    const key = fc.constantFrom<HashKey>('source-ip', 'source-ip-port', 'sni');
    const ip = fc.oneof(
      fc.ipV4(),
      fc.ipV6(),
      fc.ipV4().map((a) => `::ffff:${a}`),
      fc.string(),
    );
    const sni = fc.option(fc.oneof(fc.domain(), fc.string({ unit: 'binary' })), { nil: undefined });
    fc.assert(
      fc.property(
        ip,
        fc.integer({ min: 0, max: 65535 }),
        sni,
        key,
        fc.nat(),
        (clientIp, clientPort, s, k, seed) => {
          const c = { clientIp, clientPort, sni: s };
          expect(hashContext(c, k, seed)).toBe(murmur3(hashKey(c, k), seed));
        },
      ),
      { numRuns: 1000 },
    );
  });
});

describe('sortedByAddress', () => {
  it('orders by code unit, whatever the input order', () => {
    const a = [{ address: 'b:1' }, { address: 'a:2' }, { address: 'B:3' }];
    expect(sortedByAddress(a).map((t) => t.address)).toEqual(['B:3', 'a:2', 'b:1']);
    expect(sortedByAddress([...a].reverse()).map((t) => t.address)).toEqual(['B:3', 'a:2', 'b:1']);
  });
});

/** A plain block-wise MurmurHash3_x86_32 over bytes, written independently as the oracle. */
function murmurBytes(bytes: Uint8Array, seed: number): number {
  const c1 = 0xcc9e2d51;
  const c2 = 0x1b873593;
  const mix = (k: number): number => Math.imul(rotl(Math.imul(k, c1), 15), c2);
  const rotl = (x: number, r: number): number => (x << r) | (x >>> (32 - r));
  let h = seed | 0;
  const blocks = bytes.length >> 2;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i < blocks; i++) {
    h ^= mix(view.getUint32(i * 4, true));
    h = (Math.imul(rotl(h, 13), 5) + 0xe6546b64) | 0;
  }
  let k = 0;
  const tail = blocks * 4;
  for (let i = bytes.length - 1; i >= tail; i--) k = (k << 8) | (bytes[i] ?? 0);
  if (bytes.length > tail) h ^= mix(k);
  h ^= bytes.length;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}
