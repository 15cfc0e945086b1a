import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  cidPrefixHex,
  encodePlaintextCid,
  longHeaderScid,
  parseQuicHeader,
  plaintextServerId,
  type QuicParseResult,
} from '../../src/protocol/quic.js';
import { murmur3, murmur3Bytes } from '../../src/upstream/balancer/hash.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

/** A long header from its parts (invariant fields only), then `tail`. */
function longHeader(
  first: number,
  version: number,
  dcid: Uint8Array,
  scid: Uint8Array,
  tail: Uint8Array = new Uint8Array(0),
): Buffer {
  const v = Buffer.alloc(4);
  v.writeUInt32BE(version >>> 0);
  return Buffer.concat([
    Buffer.from([first | 0x80]),
    v,
    Buffer.from([dcid.length]),
    dcid,
    Buffer.from([scid.length]),
    scid,
    tail,
  ]);
}

/** Unprotected headers from RFC 9001 Appendix A (QUIC v1 Initial packets). */
const RFC9001_CLIENT_INITIAL = hex('c300000001088394c8f03e5157080000449e00000002');
const RFC9001_SERVER_INITIAL = hex('c1000000010008f067a5502a4262b50040750001');

describe('QUIC invariants (RFC 8999): parseQuicHeader', () => {
  it.each([
    ['client Initial (RFC 9001 A.2)', RFC9001_CLIENT_INITIAL, 1, '8394c8f03e515708', ''],
    ['server Initial (RFC 9001 A.3)', RFC9001_SERVER_INITIAL, 1, '', 'f067a5502a4262b5'],
    [
      'Version Negotiation',
      longHeader(0x2a, 0, hex('0102030405'), hex('aabbccdd'), hex('00000001')),
      0,
      '0102030405',
      'aabbccdd',
    ],
    [
      'QUIC v2 Initial',
      longHeader(0x50, 0x6b3343cf, hex('11'.repeat(20)), hex('22'.repeat(20))),
      0x6b3343cf,
      '11'.repeat(20),
      '22'.repeat(20),
    ],
    [
      'unknown version, 255-octet IDs',
      longHeader(0, 0xfaceb00c, Buffer.alloc(255, 1), Buffer.alloc(255, 2)),
      0xfaceb00c,
      '01'.repeat(255),
      '02'.repeat(255),
    ],
    ['zero-length IDs, nothing after', longHeader(0x40, 1, Buffer.alloc(0), Buffer.alloc(0)), 1, '', ''],
  ])('%s', (_name, packet, version, dcid, scid) => {
    const r = parseQuicHeader(packet);
    if (r.kind !== 'done' || r.header.form !== 'long')
      throw new Error(`expected a long header, got ${JSON.stringify(r)}`);
    expect(r.header.version).toBe(version);
    expect(
      packet.subarray(r.header.dcidOffset, r.header.dcidOffset + r.header.dcidLength).toString('hex'),
    ).toBe(dcid);
    expect(
      packet.subarray(r.header.scidOffset, r.header.scidOffset + r.header.scidLength).toString('hex'),
    ).toBe(scid);
    expect(longHeaderScid(packet)).toEqual([r.header.scidOffset, r.header.scidLength]);
  });

  it.each([
    ['1-RTT (fixed bit set)', hex('4f0102030405060708')],
    ['first octet only', hex('40')],
    ['fixed bit clear (greased, RFC 9287)', hex('00ff')],
  ])('short header: %s', (_name, packet) => {
    expect(parseQuicHeader(packet)).toEqual({ kind: 'done', header: { form: 'short', dcidOffset: 1 } });
    expect(longHeaderScid(packet)).toBeUndefined();
  });

  it('an empty datagram is not QUIC', () => {
    expect(parseQuicHeader(Buffer.alloc(0))).toEqual({ kind: 'invalid', reason: 'empty' });
  });

  /** Every cut of a long header before the end of its Source Connection ID is `truncated`. */
  it.each([
    ['client Initial', RFC9001_CLIENT_INITIAL],
    ['server Initial', RFC9001_SERVER_INITIAL],
    ['v2, 20-octet IDs', longHeader(0x50, 0x6b3343cf, Buffer.alloc(20, 3), Buffer.alloc(20, 4), hex('0000'))],
  ])('every truncation point: %s', (_name, packet) => {
    const full = parseQuicHeader(packet);
    if (full.kind !== 'done' || full.header.form !== 'long') throw new Error('fixture');
    const headerEnd = full.header.scidOffset + full.header.scidLength;
    for (let cut = 0; cut <= packet.length; cut++) {
      const r = parseQuicHeader(packet.subarray(0, cut));
      if (cut === 0) expect(r, `cut ${cut}`).toEqual({ kind: 'invalid', reason: 'empty' });
      else if (cut < headerEnd) expect(r, `cut ${cut}`).toEqual({ kind: 'invalid', reason: 'truncated' });
      else expect(r, `cut ${cut}`).toEqual(full);
    }
  });

  it('fuzz: never throws, and every offset it returns lies inside the datagram', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 600 }), (bytes) => {
        const r: QuicParseResult = parseQuicHeader(bytes);
        if (r.kind === 'invalid') {
          expect(['empty', 'truncated']).toContain(r.reason);
          return;
        }
        if (r.header.form === 'short') {
          expect(bytes[0]! & 0x80).toBe(0);
          return;
        }
        expect(bytes[0]! & 0x80).toBe(0x80);
        expect(r.header.dcidOffset + r.header.dcidLength).toBeLessThan(bytes.length);
        expect(r.header.scidOffset + r.header.scidLength).toBeLessThanOrEqual(bytes.length);
      }),
      { numRuns: 5000 },
    );
  });

  it('fuzz: a long header built from any version and IDs parses back to them, whatever follows', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 0x7f }),
        fc.integer({ min: 0, max: 0xffffffff }),
        fc.uint8Array({ maxLength: 255 }),
        fc.uint8Array({ maxLength: 255 }),
        fc.uint8Array({ maxLength: 64 }),
        (first, version, dcid, scid, tail) => {
          const packet = longHeader(first, version, dcid, scid, Buffer.from(tail));
          const r = parseQuicHeader(packet);
          if (r.kind !== 'done' || r.header.form !== 'long') throw new Error('not parsed');
          expect(r.header.version).toBe(version);
          expect(packet.subarray(r.header.dcidOffset, r.header.dcidOffset + r.header.dcidLength)).toEqual(
            Buffer.from(dcid),
          );
          expect(packet.subarray(r.header.scidOffset, r.header.scidOffset + r.header.scidLength)).toEqual(
            Buffer.from(scid),
          );
          // Any cut inside the header is truncated, never a header with other IDs.
          const cut = r.header.scidOffset + r.header.scidLength - 1;
          expect(parseQuicHeader(packet.subarray(0, cut)).kind).toBe('invalid');
        },
      ),
      { numRuns: 3000 },
    );
  });
});

describe('QUIC-LB plaintext server IDs (draft-ietf-quic-load-balancers)', () => {
  // The draft's test vectors, "Unencrypted CIDs" (every server configured to encode the CID
  // length): `cr_bits sid nonce cid`. Its second vector is not used: its nonce has an odd number
  // of hex digits (3487d970b), so it names no octet string.
  const DRAFT_VECTOR = { cr: 0, sid: 'c4605e', nonce: '4504cc4f', cid: '07c4605e4504cc4f' };

  it('encodes the draft vector', () => {
    const cid = encodePlaintextCid({
      configRotation: DRAFT_VECTOR.cr,
      serverId: hex(DRAFT_VECTOR.sid),
      nonce: hex(DRAFT_VECTOR.nonce),
      encodeLength: true,
    });
    expect(cid.toString('hex')).toBe(DRAFT_VECTOR.cid);
  });

  it('decodes the draft vector, and nothing from a shorter ID or another config rotation', () => {
    const cid = hex(DRAFT_VECTOR.cid);
    const at = plaintextServerId(cid, 0, cid.length, { configRotation: 0, serverIdLength: 3 });
    expect(at).toEqual([1, 3]);
    expect(cid.subarray(1, 4).toString('hex')).toBe(DRAFT_VECTOR.sid);
    for (let cut = 0; cut <= cid.length; cut++) {
      const r = plaintextServerId(cid.subarray(0, cut), 0, cut, { configRotation: 0, serverIdLength: 3 });
      expect(r, `cut ${cut}`).toEqual(cut >= 4 ? [1, 3] : undefined);
    }
    for (let cr = 1; cr <= 7; cr++)
      expect(
        plaintextServerId(cid, 0, cid.length, { configRotation: cr, serverIdLength: 3 }),
      ).toBeUndefined();
  });

  it('reads the server ID of a short-header packet from octet 1', () => {
    const cid = hex(DRAFT_VECTOR.cid);
    const packet = Buffer.concat([hex('41'), cid, hex('deadbeef')]);
    expect(plaintextServerId(packet, 1, packet.length - 1, { configRotation: 0, serverIdLength: 3 })).toEqual(
      [2, 3],
    );
  });

  it('never routes the unroutable code point 0b111', () => {
    const cid = hex('e7c4605e4504cc4f');
    for (let cr = 0; cr <= 6; cr++)
      expect(
        plaintextServerId(cid, 0, cid.length, { configRotation: cr, serverIdLength: 3 }),
      ).toBeUndefined();
  });

  it('refuses parameters outside the draft ranges when encoding', () => {
    const nonce = Buffer.alloc(4);
    expect(() => encodePlaintextCid({ configRotation: 7, serverId: hex('01'), nonce })).toThrow(RangeError);
    expect(() => encodePlaintextCid({ configRotation: 0, serverId: Buffer.alloc(0), nonce })).toThrow(
      RangeError,
    );
    expect(() => encodePlaintextCid({ configRotation: 0, serverId: Buffer.alloc(16), nonce })).toThrow(
      RangeError,
    );
    expect(() =>
      encodePlaintextCid({ configRotation: 0, serverId: Buffer.alloc(15), nonce: Buffer.alloc(5) }),
    ).toThrow(RangeError);
  });

  it('fuzz: any server ID encoded is decoded back, with or without the length in the first octet', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 6 }),
        fc.uint8Array({ minLength: 1, maxLength: 15 }),
        fc.integer({ min: 0, max: 4 }),
        fc.boolean(),
        fc.integer({ min: 0, max: 31 }),
        (cr, sid, nonceLength, encodeLength, lowBits) => {
          const nonce = Buffer.alloc(Math.min(nonceLength, 19 - sid.length), 0x5a);
          const cid = encodePlaintextCid({ configRotation: cr, serverId: sid, nonce, encodeLength, lowBits });
          expect(cid.length).toBe(1 + sid.length + nonce.length);
          if (encodeLength) expect((cid[0]! & 0x1f) + 1).toBe(cid.length);
          const at = plaintextServerId(cid, 0, cid.length, {
            configRotation: cr,
            serverIdLength: sid.length,
          });
          expect(at).toEqual([1, sid.length]);
          expect(cid.subarray(1, 1 + sid.length)).toEqual(Buffer.from(sid));
        },
      ),
      { numRuns: 2000 },
    );
  });

  it('fuzz: decoding any bytes never throws nor reads past them', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: 40 }),
        fc.integer({ min: 0, max: 40 }),
        fc.integer({ min: 0, max: 7 }),
        fc.integer({ min: 1, max: 15 }),
        (bytes, offset, cr, len) => {
          const r = plaintextServerId(bytes, offset, bytes.length - offset, {
            configRotation: cr,
            serverIdLength: len,
          });
          if (r !== undefined) expect(r[0] + r[1]).toBeLessThanOrEqual(bytes.length);
        },
      ),
      { numRuns: 3000 },
    );
  });
});

describe('connection ID helpers', () => {
  it('prints at most the first 8 octets as hex', () => {
    const b = hex('00112233445566778899aabb');
    expect(cidPrefixHex(b, 1, 11)).toBe('1122334455667788');
    expect(cidPrefixHex(b, 1, 3)).toBe('112233');
    expect(cidPrefixHex(b, 10, 20)).toBe('aabb');
    expect(cidPrefixHex(b, 1, 0)).toBe('');
  });

  it('hashes bytes as murmur3 hashes the same text, identically everywhere', () => {
    const s = 'connection-id';
    expect(murmur3Bytes(Buffer.from(s), 0, s.length)).toBe(murmur3(s));
    // Pinned: replicas of different versions must keep sending a connection ID to one backend.
    expect(murmur3Bytes(hex('8394c8f03e515708'), 0, 8)).toBe(3855851128);
    expect(murmur3Bytes(hex('008394c8f03e51570800'), 1, 9)).toBe(3855851128);
  });
});
