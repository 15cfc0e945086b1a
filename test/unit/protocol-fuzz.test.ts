import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

import { encodeProxyV1, encodeProxyV2 } from '../../src/protocol/proxy-encode.js';
import { ipv4Bytes, ipv6Bytes } from '../../src/protocol/ip-bytes.js';
import {
  PROXY_V2_SIGNATURE,
  parseProxyHeader,
  sniffProxySignature,
  type ProxyParseResult,
  type Tlv,
} from '../../src/protocol/proxy-parse.js';
import { SniRouter } from '../../src/protocol/sni-match.js';

const RUNS = 3000;
const MAX = 4096;

/** Invariants of any parse result for `buf`. */
function checkResult(r: ProxyParseResult, buf: Buffer): void {
  expect(['need-more', 'invalid', 'done']).toContain(r.kind);
  if (r.kind === 'invalid') expect(r.reason).toMatch(/^[a-z0-9_]+$/);
  if (r.kind === 'done') {
    expect(r.length).toBeGreaterThan(0);
    expect(r.length).toBeLessThanOrEqual(buf.length);
    if (r.header.version === 2) expect(r.length).toBeLessThanOrEqual(MAX);
  }
}

/** A verdict reached on a prefix never changes when more bytes arrive. */
function checkPrefixes(buf: Buffer, cuts: readonly number[]): void {
  const full = parseProxyHeader(buf, MAX);
  checkResult(full, buf);
  for (const cut of cuts) {
    const part = buf.subarray(0, cut % (buf.length + 1));
    const r = parseProxyHeader(part, MAX);
    checkResult(r, part);
    if (r.kind !== 'need-more') expect(r).toEqual(full);
  }
}

const bytes = (max: number): fc.Arbitrary<Buffer> =>
  fc.uint8Array({ maxLength: max }).map((a) => Buffer.from(a));
const cuts = fc.array(fc.nat(), { maxLength: 4 });
const tlvArb: fc.Arbitrary<Tlv> = fc.record({
  type: fc.integer({ min: 0, max: 255 }).filter((t) => t !== 3),
  value: bytes(64),
});
const addr = fc.record({ ip: fc.oneof(fc.ipV4(), fc.ipV6()), port: fc.integer({ min: 0, max: 65535 }) });

const validV2 = fc
  .record({
    command: fc.constantFrom('proxy' as const, 'local' as const),
    transport: fc.constantFrom('stream' as const, 'dgram' as const),
    source: addr,
    destination: addr,
    tlvs: fc.array(tlvArb, { maxLength: 4 }),
    crc32c: fc.boolean(),
  })
  .map((o) => encodeProxyV2(o).header);
const validV1 = fc.tuple(addr, addr).map(([s, d]) => encodeProxyV1(s, d));

/** Flips, overwrites, inserts or deletes a few bytes. */
function mutate(base: Buffer, edits: readonly (readonly [number, number, number])[]): Buffer {
  let out = Buffer.from(base);
  for (const [kind, pos, value] of edits) {
    const at = out.length === 0 ? 0 : pos % out.length;
    if (kind === 0) out[at] = value;
    else if (kind === 1) out = Buffer.concat([out.subarray(0, at), Buffer.from([value]), out.subarray(at)]);
    else out = Buffer.concat([out.subarray(0, at), out.subarray(at + 1)]);
  }
  return out;
}
const edits = fc.array(fc.tuple(fc.integer({ min: 0, max: 2 }), fc.nat(), fc.integer({ min: 0, max: 255 })), {
  minLength: 1,
  maxLength: 4,
});

describe('parseProxyHeader fuzz', () => {
  it('random bytes, also behind each signature', () => {
    const prefix = fc.constantFrom(
      Buffer.alloc(0),
      Buffer.from('PROXY '),
      PROXY_V2_SIGNATURE,
      Buffer.from('PROXY TCP4 '),
    );
    fc.assert(
      fc.property(prefix, bytes(300), cuts, (p, tail, c) => checkPrefixes(Buffer.concat([p, tail]), c)),
      { numRuns: RUNS },
    );
  });

  it('random v2 fixed parts with a random body', () => {
    const fixed = fc.tuple(
      fc.integer({ min: 0, max: 255 }),
      fc.integer({ min: 0, max: 255 }),
      fc.nat(0xffff),
    );
    fc.assert(
      fc.property(fixed, bytes(400), cuts, ([vc, fam, len], body, c) => {
        const head = Buffer.from([vc, fam, len >> 8, len & 0xff]);
        checkPrefixes(Buffer.concat([PROXY_V2_SIGNATURE, head, body]), c);
      }),
      { numRuns: RUNS },
    );
  });

  it('mutated valid v1 and v2 headers', () => {
    fc.assert(
      fc.property(fc.oneof(validV1, validV2), edits, bytes(20), cuts, (h, e, payload, c) =>
        checkPrefixes(Buffer.concat([mutate(h, e), payload]), c),
      ),
      { numRuns: RUNS },
    );
  });

  it('valid headers parse whole at any split, payload untouched', () => {
    fc.assert(
      fc.property(fc.oneof(validV1, validV2), bytes(40), cuts, (h, payload, c) => {
        const buf = Buffer.concat([h, payload]);
        checkPrefixes(buf, c);
        const r = parseProxyHeader(buf, MAX);
        expect(r.kind === 'done' && r.length).toBe(h.length);
      }),
      { numRuns: RUNS },
    );
  });

  it('sniff agrees with the parser on what is not PROXY', () => {
    fc.assert(
      fc.property(bytes(30), (b) => {
        const s = sniffProxySignature(b);
        if (s === 'none') expect(parseProxyHeader(b, MAX)).toEqual({ kind: 'invalid', reason: 'not_proxy' });
        if (parseProxyHeader(b, MAX).kind === 'done') expect(['v1', 'v2']).toContain(s);
      }),
      { numRuns: RUNS },
    );
  });
});

describe('encode -> parse round trip', () => {
  /** 16-byte form of an address, IPv4 as v4-mapped, so both families compare alike. */
  const key = (ip: string | undefined): string => {
    const v4 = ip === undefined ? undefined : ipv4Bytes(ip);
    const v6 = v4 ? Buffer.concat([Buffer.from('00000000000000000000ffff', 'hex'), v4]) : ipv6Bytes(ip ?? '');
    return v6?.toString('hex') ?? `bad:${ip}`;
  };
  const isSubsequence = (sub: readonly Tlv[], all: readonly Tlv[]): boolean => {
    let at = 0;
    for (const t of all)
      if (at < sub.length && sub[at]?.type === t.type && sub[at]?.value.equals(t.value)) at++;
    return at === sub.length;
  };

  it('v2 keeps addresses and TLVs within the budget', () => {
    fc.assert(
      fc.property(
        addr,
        addr,
        fc.array(tlvArb, { maxLength: 5 }),
        fc.array(tlvArb, { maxLength: 5 }),
        fc.integer({ min: 0, max: 600 }),
        fc.constantFrom('stream' as const, 'dgram' as const),
        (source, destination, tlvs, passTlvs, maxBytes, transport) => {
          const res = encodeProxyV2({
            command: 'proxy',
            transport,
            source,
            destination,
            tlvs,
            passTlvs,
            maxBytes,
          });
          const r = parseProxyHeader(res.header, 70_000);
          if (r.kind !== 'done') throw new Error(JSON.stringify(r));
          expect(r.length).toBe(res.header.length);
          expect(res.header.length).toBeLessThanOrEqual(Math.max(maxBytes, 16 + 36));
          expect(r.header.transport).toBe(transport);
          expect(key(r.header.source?.ip)).toBe(key(source.ip));
          expect(key(r.header.destination?.ip)).toBe(key(destination.ip));
          expect([r.header.source?.port, r.header.destination?.port]).toEqual([
            source.port,
            destination.port,
          ]);
          const ownTypes = new Set(tlvs.map((t) => t.type));
          const relayed = passTlvs.filter((t) => !ownTypes.has(t.type));
          if (res.droppedOwnTlvs > 0) {
            expect(res.droppedPassTlvs || relayed.length === 0 || r.header.tlvs.length > 0).toBe(true);
          } else if (res.droppedPassTlvs) {
            expect(r.header.tlvs).toEqual(tlvs);
          } else {
            expect(r.header.tlvs).toEqual([...tlvs, ...relayed]);
          }
          expect(isSubsequence(r.header.tlvs.slice(0, tlvs.length - res.droppedOwnTlvs), tlvs)).toBe(true);
        },
      ),
      { numRuns: RUNS },
    );
  });

  it('v1 keeps addresses of the same family', () => {
    fc.assert(
      fc.property(addr, addr, (source, destination) => {
        const bytes = encodeProxyV1(source, destination);
        const r = parseProxyHeader(bytes, MAX);
        if (r.kind !== 'done') throw new Error(JSON.stringify(r));
        expect(r.length).toBe(bytes.length);
        if (r.header.command === 'proxy') {
          expect(key(r.header.source?.ip)).toBe(key(source.ip));
          expect(key(r.header.destination?.ip)).toBe(key(destination.ip));
        }
      }),
      { numRuns: RUNS },
    );
  });
});

describe('SniRouter fuzz', () => {
  it('never throws and exact names always find their route', () => {
    const label = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?$/);
    const name = fc.array(label, { minLength: 1, maxLength: 5 }).map((l) => l.join('.'));
    fc.assert(
      fc.property(fc.array(name, { maxLength: 8 }), fc.string({ maxLength: 40 }), (names, probe) => {
        const router = new SniRouter(names.map((n, i) => ({ sni: i % 2 === 0 ? n : `*.${n}`, target: i })));
        router.match(probe);
        names.forEach((n, i) => {
          if (i % 2 === 0)
            expect(router.match(n.toUpperCase())).toBe(names.findIndex((m, j) => j % 2 === 0 && m === n));
        });
      }),
      { numRuns: RUNS },
    );
  });
});
