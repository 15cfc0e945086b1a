import { describe, expect, it } from 'vitest';

import { encodeProxyV1, encodeProxyV2, encodeProxyV2Local } from '../../src/protocol/proxy-encode.js';
import {
  PP2_TYPE,
  parseProxyHeader,
  type ProxyParseResult,
  type Tlv,
} from '../../src/protocol/proxy-parse.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const SIG = '0d0a0d0a000d0a515549540a';
const A4 = { ip: '1.2.3.4', port: 1000 };
const B4 = { ip: '5.6.7.8', port: 443 };
const A6 = { ip: '2001:db8::1', port: 80 };
const B6 = { ip: '::1', port: 8080 };

function done(r: ProxyParseResult): Extract<ProxyParseResult, { kind: 'done' }> {
  if (r.kind !== 'done') throw new Error(`expected done, got ${JSON.stringify(r)}`);
  return r;
}
const tlv = (type: number, size: number, fill = 0x41): Tlv => ({ type, value: Buffer.alloc(size, fill) });

describe('encodeProxyV2 against reference bytes from the spec', () => {
  it('TCP over IPv4', () => {
    const { header } = encodeProxyV2({ command: 'proxy', transport: 'stream', source: A4, destination: B4 });
    expect(header).toEqual(hex(`${SIG} 21 11 000c 01020304 05060708 03e8 01bb`));
  });

  it('UDP over IPv6', () => {
    const { header } = encodeProxyV2({ command: 'proxy', transport: 'dgram', source: A6, destination: B6 });
    expect(header).toEqual(
      hex(`${SIG} 21 22 0024 20010db8000000000000000000000001 00000000000000000000000000000001 0050 1f90`),
    );
  });

  it('TLVs are counted in len', () => {
    const tlvs = [{ type: PP2_TYPE.AUTHORITY, value: Buffer.from('a.io') }];
    const { header } = encodeProxyV2({
      command: 'proxy',
      transport: 'stream',
      source: A4,
      destination: B4,
      tlvs,
    });
    expect(header).toEqual(hex(`${SIG} 21 11 0013 01020304 05060708 03e8 01bb 02 0004 612e696f`));
  });

  it('LOCAL for health checks', () => {
    expect(encodeProxyV2Local()).toEqual(hex(`${SIG} 20 00 0000`));
    const a = encodeProxyV2Local();
    a.fill(0);
    expect(encodeProxyV2Local()).toEqual(hex(`${SIG} 20 00 0000`));
  });
});

describe('encodeProxyV2 addresses', () => {
  it('maps the IPv4 side of a mixed pair and uses inet6', () => {
    const r = done(
      parseProxyHeader(
        encodeProxyV2({ command: 'proxy', transport: 'stream', source: A4, destination: A6 }).header,
        4096,
      ),
    );
    expect(r.header).toMatchObject({
      family: 'inet6',
      source: { ip: '::ffff:1.2.3.4', port: 1000 },
      destination: A6,
    });
  });

  it('sends TCP4 when both sides are IPv4 or IPv4-mapped (dual-stack sockets)', () => {
    const src = { ip: '::ffff:10.0.0.9', port: 5 };
    const r = done(
      parseProxyHeader(
        encodeProxyV2({ command: 'proxy', transport: 'stream', source: src, destination: B4 }).header,
        4096,
      ),
    );
    expect(r.header).toMatchObject({ family: 'inet', source: { ip: '10.0.0.9', port: 5 } });
  });

  it('drops an IPv6 zone id', () => {
    const src = { ip: 'fe80::1%eth0', port: 5 };
    const r = done(
      parseProxyHeader(
        encodeProxyV2({ command: 'proxy', transport: 'stream', source: src, destination: B6 }).header,
        4096,
      ),
    );
    expect(r.header.source).toEqual({ ip: 'fe80::1', port: 5 });
  });

  it.each([
    ['missing source', { destination: B4 }],
    ['missing destination', { source: A4 }],
    ['not an IP', { source: { ip: 'localhost', port: 1 }, destination: B4 }],
    ['port out of range', { source: { ip: '1.2.3.4', port: 70000 }, destination: B4 }],
    ['fractional port', { source: { ip: '1.2.3.4', port: 1.5 }, destination: B4 }],
  ])('falls back to LOCAL AF_UNSPEC on %s', (_name, addrs) => {
    const { header } = encodeProxyV2({ command: 'proxy', transport: 'stream', ...addrs });
    expect(header).toEqual(hex(`${SIG} 20 00 0000`));
  });

  it('LOCAL ignores addresses', () => {
    const { header } = encodeProxyV2({ command: 'local', transport: 'stream', source: A4, destination: B4 });
    expect(header).toEqual(hex(`${SIG} 20 00 0000`));
  });
});

describe('encodeProxyV2 TLVs and size budget', () => {
  const base = { command: 'proxy', transport: 'stream', source: A4, destination: B4 } as const;

  it('round-trips own and relayed TLVs in order', () => {
    const tlvs = [tlv(PP2_TYPE.AUTHORITY, 10), tlv(PP2_TYPE.UNIQUE_ID, 16)];
    const passTlvs = [tlv(PP2_TYPE.AWS, 20), tlv(0xe0, 0)];
    const res = encodeProxyV2({ ...base, tlvs, passTlvs });
    expect(res.droppedPassTlvs).toBe(false);
    const r = done(parseProxyHeader(res.header, 4096));
    expect(r.length).toBe(res.header.length);
    expect(r.header.tlvs).toEqual([...tlvs, ...passTlvs]);
  });

  it('leaves relayed TLVs out whole when they would overflow', () => {
    const own = [tlv(PP2_TYPE.AUTHORITY, 100)];
    const passTlvs = [tlv(PP2_TYPE.AWS, 10), tlv(0xe0, 65_000)];
    const res = encodeProxyV2({ ...base, tlvs: own, passTlvs });
    expect(res.droppedPassTlvs).toBe(true);
    expect(res.header.length).toBe(16 + 12 + 103);
    expect(done(parseProxyHeader(res.header, 4096)).header.tlvs).toEqual(own);
  });

  it('fits exactly at maxBytes and not one byte over', () => {
    const passTlvs = [tlv(0xe0, 100)];
    expect(encodeProxyV2({ ...base, passTlvs, maxBytes: 16 + 12 + 103 }).droppedPassTlvs).toBe(false);
    expect(encodeProxyV2({ ...base, passTlvs, maxBytes: 16 + 12 + 102 }).droppedPassTlvs).toBe(true);
  });

  it('never relays CRC32C or a type we send ourselves', () => {
    const res = encodeProxyV2({
      ...base,
      tlvs: [tlv(PP2_TYPE.AUTHORITY, 3, 0x61)],
      passTlvs: [tlv(PP2_TYPE.CRC32C, 4), tlv(PP2_TYPE.AUTHORITY, 3, 0x62), tlv(PP2_TYPE.AWS, 1)],
    });
    const types = done(parseProxyHeader(res.header, 4096)).header.tlvs.map((t) => [
      t.type,
      t.value.toString(),
    ]);
    expect(types).toEqual([
      [PP2_TYPE.AUTHORITY, 'aaa'],
      [PP2_TYPE.AWS, 'A'],
    ]);
    expect(res.droppedPassTlvs).toBe(false);
  });

  it('drops the biggest of our own TLVs first (later one on a tie) and stays valid', () => {
    const tlvs = [tlv(0x01, 50), tlv(0x02, 300), tlv(0x05, 300), tlv(0xe0, 10)];
    const res = encodeProxyV2({ ...base, tlvs, maxBytes: 16 + 12 + 53 + 303 + 13 });
    expect(res.droppedOwnTlvs).toBe(1);
    expect(done(parseProxyHeader(res.header, 4096)).header.tlvs.map((t) => t.type)).toEqual([
      0x01, 0x02, 0xe0,
    ]);
  });

  it('drops a TLV whose value cannot be encoded (over 65535 bytes)', () => {
    const res = encodeProxyV2({ ...base, tlvs: [tlv(0x02, 70_000), tlv(0x05, 4)], maxBytes: 70_000 });
    expect(res.droppedOwnTlvs).toBe(1);
    expect(done(parseProxyHeader(res.header, 70_000)).header.tlvs.map((t) => t.type)).toEqual([0x05]);
  });

  it('keeps the addresses even when maxBytes is smaller than them', () => {
    const res = encodeProxyV2({ ...base, tlvs: [tlv(0x02, 4)], maxBytes: 10 });
    expect(res.header).toEqual(hex(`${SIG} 21 11 000c 01020304 05060708 03e8 01bb`));
    expect(res.droppedOwnTlvs).toBe(1);
  });

  it('caps maxBytes at the protocol limit (16 + 65535)', () => {
    const res = encodeProxyV2({ ...base, passTlvs: [tlv(0xe0, 0xffff - 12 - 3)], maxBytes: 1_000_000 });
    expect(res.header.length).toBe(16 + 0xffff);
    expect(
      encodeProxyV2({ ...base, passTlvs: [tlv(0xe0, 0xffff - 12 - 2)], maxBytes: 1_000_000 }).droppedPassTlvs,
    ).toBe(true);
    expect(done(parseProxyHeader(res.header, 16 + 0xffff)).length).toBe(16 + 0xffff);
  });

  it('adds a CRC32C the parser verifies, for PROXY and LOCAL', () => {
    const proxy = encodeProxyV2({
      ...base,
      tlvs: [tlv(0x02, 5)],
      crc32c: true,
      tlvsIgnored: undefined,
    } as never);
    expect(done(parseProxyHeader(proxy.header, 4096)).header.tlvs.map((t) => t.type)).toEqual([0x02, 0x03]);
    const local = encodeProxyV2({ command: 'local', transport: 'stream', crc32c: true });
    expect(done(parseProxyHeader(local.header, 4096)).header.tlvs.map((t) => t.type)).toEqual([0x03]);
    proxy.header[20] = 0xff;
    expect(parseProxyHeader(proxy.header, 4096)).toEqual({ kind: 'invalid', reason: 'v2_bad_crc' });
  });
});

describe('encodeProxyV1', () => {
  it.each([
    ['TCP4', A4, B4, 'PROXY TCP4 1.2.3.4 5.6.7.8 1000 443\r\n'],
    ['TCP6', A6, B6, 'PROXY TCP6 2001:db8::1 ::1 80 8080\r\n'],
    [
      'v4-mapped pair as TCP4',
      { ip: '::ffff:1.2.3.4', port: 1 },
      { ip: '::ffff:5.6.7.8', port: 2 },
      'PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n',
    ],
    [
      'v4-mapped next to real IPv6 (families differ)',
      { ip: '::ffff:1.2.3.4', port: 1 },
      A6,
      'PROXY UNKNOWN\r\n',
    ],
    ['mixed families', A4, A6, 'PROXY UNKNOWN\r\n'],
    ['missing source', undefined, B4, 'PROXY UNKNOWN\r\n'],
    ['missing destination', A4, undefined, 'PROXY UNKNOWN\r\n'],
    ['not an IP', { ip: 'example.com', port: 1 }, B4, 'PROXY UNKNOWN\r\n'],
  ])('%s', (_name, src, dst, expected) => {
    expect(encodeProxyV1(src, dst).toString('latin1')).toBe(expected);
  });

  it('round-trips through the parser', () => {
    for (const [src, dst] of [
      [A4, B4],
      [A6, B6],
      [
        { ip: 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', port: 65535 },
        { ip: 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe', port: 0 },
      ],
    ] as const) {
      const bytes = encodeProxyV1(src, dst);
      const r = done(parseProxyHeader(bytes, 4096));
      expect(r.length).toBe(bytes.length);
      expect(r.header.source).toEqual(src);
      expect(r.header.destination).toEqual(dst);
    }
    expect(done(parseProxyHeader(encodeProxyV1(undefined, undefined), 4096)).header.command).toBe('local');
  });
});
