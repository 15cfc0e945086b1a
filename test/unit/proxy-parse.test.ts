import { describe, expect, it } from 'vitest';

import { crc32c } from '../../src/protocol/crc32c.js';
import { formatIpv6, ipv6Bytes } from '../../src/protocol/ip-bytes.js';
import {
  PP2_TYPE,
  PROXY_V2_SIGNATURE,
  parseProxyHeader,
  sniffProxySignature,
  type ProxyParseResult,
} from '../../src/protocol/proxy-parse.js';

const MAX = 4096;
const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const ascii = (s: string): Buffer => Buffer.from(s, 'latin1');

/** A v2 header with the given ver_cmd, fam and body; `len` is the body length unless given. */
function v2(verCmd: number, fam: number, body: Buffer, len = body.length): Buffer {
  const fixed = Buffer.alloc(4);
  fixed[0] = verCmd;
  fixed[1] = fam;
  fixed.writeUInt16BE(len, 2);
  return Buffer.concat([PROXY_V2_SIGNATURE, fixed, body]);
}
const tlv = (type: number, value: Buffer): Buffer => {
  const head = Buffer.from([type, 0, 0]);
  head.writeUInt16BE(value.length, 1);
  return Buffer.concat([head, value]);
};
const TCP4_BLOCK = hex('01020304 05060708 03e8 01bb'); // 1.2.3.4:1000 -> 5.6.7.8:443
const TCP6_BLOCK = Buffer.concat([
  ipv6Bytes('2001:db8::1') ?? Buffer.alloc(16),
  ipv6Bytes('::ffff:10.0.0.1') ?? Buffer.alloc(16),
  hex('0050 1f90'),
]);

function done(r: ProxyParseResult): Extract<ProxyParseResult, { kind: 'done' }> {
  if (r.kind !== 'done') throw new Error(`expected done, got ${JSON.stringify(r)}`);
  return r;
}

describe('crc32c', () => {
  it('matches the standard check values', () => {
    expect(crc32c(ascii('123456789'))).toBe(0xe3069283);
    expect(crc32c(Buffer.alloc(32))).toBe(0x8a9136aa); // RFC 3720 B.4
    expect(crc32c(Buffer.alloc(32, 0xff))).toBe(0x62a8ab43);
  });
});

describe('IPv6 text', () => {
  it.each([
    ['2001:db8::1', '2001:db8::1'],
    ['2001:DB8:0:0:0:0:0:1', '2001:db8::1'],
    ['::', '::'],
    ['::1', '::1'],
    ['1::', '1::'],
    ['2001:db8:0:1:1:1:1:1', '2001:db8:0:1:1:1:1:1'],
    ['2001:0:0:1:0:0:0:1', '2001:0:0:1::1'],
    ['::ffff:1.2.3.4', '::ffff:1.2.3.4'],
    ['::ffff:0102:0304', '::ffff:1.2.3.4'],
  ])('%s -> %s', (text, canonical) => {
    const bytes = ipv6Bytes(text);
    expect(bytes).toBeDefined();
    expect(formatIpv6(bytes ?? Buffer.alloc(16), 0, true)).toBe(canonical);
  });
  it.each([
    '1::2:3::4',
    ':::',
    '1:2:3:4:5:6:7',
    '1:2:3:4:5:6:7:8:9',
    '12345::',
    'fe80::1%eth0',
    '1.2.3.4',
    '::01.2.3.4',
    'g::',
  ])('rejects %s', (text) => {
    expect(ipv6Bytes(text)).toBeUndefined();
  });
  it('writes v4-mapped as hex groups without mixed notation', () => {
    expect(formatIpv6(ipv6Bytes('::ffff:1.2.3.4') ?? Buffer.alloc(16), 0, false)).toBe('::ffff:102:304');
  });
});

describe('parseProxyHeader v1', () => {
  it('parses TCP4 and leaves the payload alone', () => {
    const line = 'PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n';
    const r = done(parseProxyHeader(ascii(`${line}GET / HTTP/1.1\r\n`), MAX));
    expect(r.length).toBe(line.length);
    expect(r.header).toEqual({
      version: 1,
      command: 'proxy',
      transport: 'stream',
      family: 'inet',
      source: { ip: '192.168.0.1', port: 56324 },
      destination: { ip: '192.168.0.11', port: 443 },
      tlvs: [],
    });
  });

  it('parses TCP6 at the longest length (104 bytes) and canonicalises addresses', () => {
    const a = 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff';
    const line = `PROXY TCP6 ${a} 0:0:0:0:0:0:0:1 65535 0\r\n`;
    const r = done(parseProxyHeader(ascii(line), MAX));
    expect(r.header.family).toBe('inet6');
    expect(r.header.source).toEqual({ ip: a, port: 65535 });
    expect(r.header.destination).toEqual({ ip: '::1', port: 0 });
  });

  it('keeps a v4-mapped TCP6 address as given', () => {
    const r = done(parseProxyHeader(ascii('PROXY TCP6 ::ffff:1.2.3.4 ::1 1 2\r\n'), MAX));
    expect(r.header.source?.ip).toBe('::ffff:1.2.3.4');
  });

  it.each([
    ['short form', 'PROXY UNKNOWN\r\n'],
    ['with addresses', 'PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n'],
    ['worst case 107 bytes', `PROXY UNKNOWN ${'f'.repeat(39)} ${'f'.repeat(39)} 65535 65535\r\n`],
  ])('UNKNOWN (%s) means local', (_name, line) => {
    expect(line.length).toBeLessThanOrEqual(107);
    const r = done(parseProxyHeader(ascii(line + 'payload'), MAX));
    expect(r.length).toBe(line.length);
    expect(r.header).toMatchObject({ version: 1, command: 'local', family: 'unspec', source: undefined });
  });

  it.each([
    ['garbage', 'BOGUS\r\n', 'not_proxy'],
    ['lower-case signature', 'proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n', 'not_proxy'],
    ['lone LF', 'PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n', 'v1_bad_line'],
    ['lone CR', 'PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX', 'v1_bad_line'],
    ['LF inside', 'PROXY TCP4\n1.2.3.4 5.6.7.8 1 2\r\n', 'v1_bad_line'],
    ['NUL inside', 'PROXY TCP4 1.2.3.4\x005.6.7.8 1 2\r\n', 'v1_bad_line'],
    ['non-ASCII', 'PROXY TCP4 1.2.3.4 5.6.7.\xe9 1 2\r\n', 'v1_bad_line'],
    ['UDP6', 'PROXY UDP6 ::1 ::1 1 2\r\n', 'v1_bad_protocol'],
    ['double space', 'PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n', 'v1_bad_protocol'],
    ['5 fields', 'PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n', 'v1_bad_fields'],
    ['7 fields', 'PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n', 'v1_bad_fields'],
    ['trailing space', 'PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n', 'v1_bad_fields'],
    ['double inner space', 'PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n', 'v1_bad_fields'],
    ['port 66776', 'PROXY TCP4 1.2.3.4 5.6.7.8 66776 2\r\n', 'v1_bad_port'],
    ['port 65536', 'PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n', 'v1_bad_port'],
    ['port -1', 'PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n', 'v1_bad_port'],
    ['port +1', 'PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n', 'v1_bad_port'],
    ['port abc', 'PROXY TCP4 1.2.3.4 5.6.7.8 abc 2\r\n', 'v1_bad_port'],
    ['port leading zero', 'PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n', 'v1_bad_port'],
    ['IPv6 with two ::', 'PROXY TCP6 1::2:3::4 ::1 1 2\r\n', 'v1_bad_address'],
    ['TCP4 carrying IPv6', 'PROXY TCP4 ::1 ::1 1 2\r\n', 'v1_bad_address'],
    ['TCP6 carrying IPv4', 'PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n', 'v1_bad_address'],
    ['leading-zero octet', 'PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n', 'v1_bad_address'],
    ['octet 256', 'PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n', 'v1_bad_address'],
    ['three octets', 'PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n', 'v1_bad_address'],
    ['zone id', 'PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n', 'v1_bad_address'],
    ['hex IPv4', 'PROXY TCP4 0x1.2.3.4 5.6.7.8 1 2\r\n', 'v1_bad_address'],
  ])('rejects %s', (_name, text, reason) => {
    expect(parseProxyHeader(ascii(text), MAX)).toEqual({ kind: 'invalid', reason });
  });

  it('rejects a line without CRLF by byte 107 and waits before', () => {
    const long = ascii(`PROXY TCP4 1.2.3.4 2.3.4.5 100 100${' '.repeat(256)}`);
    expect(parseProxyHeader(long.subarray(0, 106), MAX)).toEqual({ kind: 'need-more' });
    expect(parseProxyHeader(long.subarray(0, 107), MAX)).toEqual({ kind: 'invalid', reason: 'v1_too_long' });
    expect(parseProxyHeader(long, MAX)).toEqual({ kind: 'invalid', reason: 'v1_too_long' });
  });

  it('rejects a 108-byte line even when its CRLF arrives', () => {
    const line = ascii(`PROXY UNKNOWN ${'f'.repeat(40)} ${'f'.repeat(39)} 65535 65535\r\n`);
    expect(line.length).toBe(108);
    expect(parseProxyHeader(line.subarray(0, 107), MAX)).toEqual({ kind: 'invalid', reason: 'v1_too_long' });
    expect(parseProxyHeader(line, MAX)).toEqual({ kind: 'invalid', reason: 'v1_too_long' });
  });

  it('parses at every split point and byte by byte (growing buffer)', () => {
    const line = ascii('PROXY TCP4 10.0.0.1 10.0.0.2 1234 80\r\n');
    const input = Buffer.concat([line, ascii('data')]);
    for (let n = 0; n < line.length; n++) {
      expect(parseProxyHeader(input.subarray(0, n), MAX)).toEqual({ kind: 'need-more' });
    }
    for (let n = line.length; n <= input.length; n++) {
      expect(done(parseProxyHeader(input.subarray(0, n), MAX)).length).toBe(line.length);
    }
  });

  it('treats a second header after the first as payload (stacked headers)', () => {
    const first = 'PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n';
    const r = done(parseProxyHeader(ascii(`${first}PROXY TCP4 6.6.6.6 10.0.0.2 1 2\r\n`), MAX));
    expect(r.length).toBe(first.length);
    expect(r.header.source?.ip).toBe('10.0.0.1');
  });
});

describe('parseProxyHeader v2', () => {
  it('parses TCP4 and stops at len (payload that looks like a TLV is not parsed)', () => {
    const header = v2(0x21, 0x11, TCP4_BLOCK);
    const r = done(parseProxyHeader(Buffer.concat([header, tlv(0x02, ascii('evil'))]), MAX));
    expect(r.length).toBe(28);
    expect(r.header).toEqual({
      version: 2,
      command: 'proxy',
      transport: 'stream',
      family: 'inet',
      source: { ip: '1.2.3.4', port: 1000 },
      destination: { ip: '5.6.7.8', port: 443 },
      tlvs: [],
    });
  });

  it('parses UDP over IPv6 and keeps v4-mapped addresses as given', () => {
    const r = done(parseProxyHeader(v2(0x21, 0x22, TCP6_BLOCK), MAX));
    expect(r.header).toMatchObject({
      transport: 'dgram',
      family: 'inet6',
      source: { ip: '2001:db8::1', port: 80 },
      destination: { ip: '::ffff:10.0.0.1', port: 8080 },
    });
    expect(r.length).toBe(52);
  });

  it('accepts the AWS NLB health check (LOCAL, AF_UNSPEC, one TLV)', () => {
    const bytes = hex('0d0a0d0a000d0a515549540a 20 00 0007 00 0004 0a0b0c0d');
    const r = done(parseProxyHeader(bytes, MAX));
    expect(r.length).toBe(23);
    expect(r.header).toMatchObject({ command: 'local', family: 'unspec', source: undefined });
    expect(r.header.tlvs).toEqual([{ type: 0, value: hex('0a0b0c0d') }]);
  });

  it('skips the address block of LOCAL with a family and keeps the TLVs', () => {
    const r = done(
      parseProxyHeader(v2(0x20, 0x11, Buffer.concat([TCP4_BLOCK, tlv(0xea, ascii('vpce'))])), MAX),
    );
    expect(r.header).toMatchObject({ command: 'local', family: 'inet', source: undefined });
    expect(r.header.tlvs).toEqual([{ type: PP2_TYPE.AWS, value: ascii('vpce') }]);
  });

  it('accepts LOCAL with a family but no address block (len 0)', () => {
    expect(done(parseProxyHeader(v2(0x20, 0x11, Buffer.alloc(0)), MAX)).length).toBe(16);
  });

  it('accepts PROXY over AF_UNSPEC without addresses', () => {
    const r = done(parseProxyHeader(v2(0x21, 0x00, Buffer.alloc(0)), MAX));
    expect(r.header).toMatchObject({ command: 'proxy', family: 'unspec', source: undefined });
  });

  it('accepts AF_UNIX (216-byte block) without addresses', () => {
    const r = done(parseProxyHeader(v2(0x21, 0x31, Buffer.alloc(216)), MAX));
    expect(r.header).toMatchObject({ family: 'unix', transport: 'stream', source: undefined });
    expect(r.length).toBe(232);
  });

  it('reports addresses as undefined for transport UNSPEC', () => {
    const r = done(parseProxyHeader(v2(0x21, 0x10, TCP4_BLOCK), MAX));
    expect(r.header).toMatchObject({ family: 'inet', transport: 'unspec', source: undefined });
  });

  it('accepts an IPv6 header whatever the host supports (address is metadata)', () => {
    const r = done(parseProxyHeader(v2(0x21, 0x21, TCP6_BLOCK), MAX));
    expect(r.header.source?.ip).toBe('2001:db8::1');
  });

  it('accepts unknown, custom, duplicate, NOOP and non-UTF-8 TLVs in order', () => {
    const tlvs = [
      tlv(0xe0, ascii('a')),
      tlv(0xef, Buffer.alloc(0)),
      tlv(PP2_TYPE.AWS, hex('01ff')),
      tlv(0xe0, ascii('b')),
      tlv(PP2_TYPE.NOOP, Buffer.alloc(5)),
      tlv(PP2_TYPE.AUTHORITY, hex('c3 28 0d 0a 1b')),
    ];
    const r = done(parseProxyHeader(v2(0x21, 0x11, Buffer.concat([TCP4_BLOCK, ...tlvs])), MAX));
    expect(r.header.tlvs.map((t) => t.type)).toEqual([0xe0, 0xef, 0xea, 0xe0, 0x04, 0x02]);
    expect(r.header.tlvs[5]?.value).toEqual(hex('c3 28 0d 0a 1b'));
  });

  it('accepts len 0xFFFF with a 65,520-byte TLV when the cap allows it', () => {
    const big = Buffer.concat([TCP4_BLOCK, tlv(0xe1, Buffer.alloc(0xffff - 12 - 3, 0x41))]);
    const bytes = v2(0x21, 0x11, big);
    expect(bytes.length).toBe(16 + 0xffff);
    const r = done(parseProxyHeader(bytes, 16 + 0xffff));
    expect(r.header.tlvs[0]?.value.length).toBe(65520);
    expect(parseProxyHeader(bytes, 4096)).toEqual({ kind: 'invalid', reason: 'v2_too_long' });
    // The cap is enforced from the fixed part alone, before the bytes arrive.
    expect(parseProxyHeader(bytes.subarray(0, 16), 4096)).toEqual({ kind: 'invalid', reason: 'v2_too_long' });
  });

  it('copies TLV values so they do not pin the input buffer', () => {
    const input = v2(0x21, 0x11, Buffer.concat([TCP4_BLOCK, tlv(0xe0, ascii('abc'))]));
    const r = done(parseProxyHeader(input, MAX));
    input.fill(0);
    expect(r.header.tlvs[0]?.value).toEqual(ascii('abc'));
  });

  describe('CRC32C', () => {
    function withCrc(corrupt: boolean): Buffer {
      const h = v2(
        0x21,
        0x11,
        Buffer.concat([TCP4_BLOCK, tlv(PP2_TYPE.CRC32C, Buffer.alloc(4)), tlv(0xe0, ascii('x'))]),
      );
      const at = 16 + 12 + 3;
      h.writeUInt32BE(crc32c(h), at);
      if (corrupt) h[at] = (h[at] ?? 0) ^ 1;
      return h;
    }
    it('accepts a matching checksum', () => {
      expect(done(parseProxyHeader(withCrc(false), MAX)).header.tlvs).toHaveLength(2);
    });
    it.each([
      ['mismatch', withCrc(true)],
      ['wrong size', v2(0x21, 0x11, Buffer.concat([TCP4_BLOCK, tlv(PP2_TYPE.CRC32C, Buffer.alloc(3))]))],
      [
        'two CRC TLVs',
        v2(
          0x21,
          0x11,
          Buffer.concat([TCP4_BLOCK, tlv(PP2_TYPE.CRC32C, Buffer.alloc(4)), tlv(3, Buffer.alloc(4))]),
        ),
      ],
    ])('rejects %s', (_name, bytes) => {
      expect(parseProxyHeader(bytes, MAX)).toEqual({ kind: 'invalid', reason: 'v2_bad_crc' });
    });
  });

  it.each([
    ['version 1', v2(0x11, 0x11, TCP4_BLOCK), 'v2_bad_version'],
    ['version 3', v2(0x31, 0x11, TCP4_BLOCK), 'v2_bad_version'],
    ['version 0', v2(0x01, 0x11, TCP4_BLOCK), 'v2_bad_version'],
    ...[2, 3, 7, 15].map((c): [string, Buffer, string] => [
      `command ${c}`,
      v2(0x20 | c, 0x11, TCP4_BLOCK),
      'v2_bad_command',
    ]),
    ['family 4', v2(0x21, 0x41, TCP4_BLOCK), 'v2_bad_family'],
    ['family 15', v2(0x21, 0xf1, TCP4_BLOCK), 'v2_bad_family'],
    ['transport 3', v2(0x21, 0x13, TCP4_BLOCK), 'v2_bad_transport'],
    ['TCP4 len 11', v2(0x21, 0x11, TCP4_BLOCK.subarray(0, 11)), 'v2_short_address'],
    ['TCP4 len 0', v2(0x21, 0x11, Buffer.alloc(0)), 'v2_short_address'],
    ['TCP6 len 35', v2(0x21, 0x21, Buffer.alloc(35)), 'v2_short_address'],
    ['UNIX len 215', v2(0x21, 0x31, Buffer.alloc(215)), 'v2_short_address'],
    ['TLV longer than len', v2(0x21, 0x11, Buffer.concat([TCP4_BLOCK, hex('e0 0010 41')])), 'v2_bad_tlv'],
    [
      'len ends mid-TLV',
      v2(0x21, 0x11, Buffer.concat([TCP4_BLOCK, tlv(0xe0, ascii('ab')).subarray(0, 4)])),
      'v2_bad_tlv',
    ],
    [
      'stray bytes after TLVs',
      v2(0x21, 0x11, Buffer.concat([TCP4_BLOCK, tlv(0xe0, ascii('ab')), hex('00')])),
      'v2_bad_tlv',
    ],
    ['two stray bytes', v2(0x21, 0x11, Buffer.concat([TCP4_BLOCK, hex('0000')])), 'v2_bad_tlv'],
    ['LOCAL with stray bytes', v2(0x20, 0x00, hex('0102')), 'v2_bad_tlv'],
    [
      'bad signature',
      Buffer.concat([hex('0d0a0d0a000d0a515549540b'), hex('2111000c'), TCP4_BLOCK]),
      'not_proxy',
    ],
  ])('rejects %s', (_name, bytes, reason) => {
    expect(parseProxyHeader(bytes, MAX)).toEqual({ kind: 'invalid', reason });
  });

  it('rejects a bad fixed part as soon as the offending byte arrives', () => {
    expect(parseProxyHeader(v2(0x11, 0x11, TCP4_BLOCK).subarray(0, 13), MAX).kind).toBe('invalid');
    expect(parseProxyHeader(v2(0x21, 0x41, TCP4_BLOCK).subarray(0, 14), MAX).kind).toBe('invalid');
    expect(parseProxyHeader(hex('0d0a0d0a01'), MAX)).toEqual({ kind: 'invalid', reason: 'not_proxy' });
  });

  it('parses at every split point and byte by byte (growing buffer)', () => {
    const header = v2(
      0x21,
      0x11,
      Buffer.concat([TCP4_BLOCK, tlv(0x05, ascii('id-1')), tlv(0x02, ascii('a.b'))]),
    );
    const input = Buffer.concat([header, ascii('payload')]);
    for (let n = 0; n < header.length; n++) {
      expect(parseProxyHeader(input.subarray(0, n), MAX)).toEqual({ kind: 'need-more' });
    }
    for (let n = header.length; n <= input.length; n++) {
      const r = done(parseProxyHeader(input.subarray(0, n), MAX));
      expect(r.length).toBe(header.length);
      expect(r.header.tlvs).toHaveLength(2);
    }
  });

  it('treats a client-sent header behind the NLB header as payload', () => {
    const nlb = v2(0x21, 0x11, TCP4_BLOCK);
    const spoof = v2(0x21, 0x11, hex('06060606 05060708 0001 0002'));
    const r = done(parseProxyHeader(Buffer.concat([nlb, spoof]), MAX));
    expect(r.length).toBe(nlb.length);
    expect(r.header.source?.ip).toBe('1.2.3.4');
  });
});

describe('parseProxyHeader dispatch', () => {
  it.each([
    ['empty', Buffer.alloc(0), 'need-more'],
    ['HTTP', ascii('GET / HTTP/1.1\r\n'), 'invalid'],
    ['TLS', hex('160301'), 'invalid'],
    ['P', ascii('P'), 'need-more'],
    ['PROX', ascii('PROX'), 'need-more'],
    ['POST', ascii('POST'), 'invalid'],
    ['CR', hex('0d'), 'need-more'],
  ])('%s -> %s', (_name, bytes, kind) => {
    expect(parseProxyHeader(bytes, MAX).kind).toBe(kind);
  });
});

describe('sniffProxySignature', () => {
  it.each([
    ['empty', '', 'need-more'],
    ['P', '50', 'need-more'],
    ['PROXY', '50524f5859', 'need-more'],
    ['PROXY space', '50524f585920', 'v1'],
    ['PROXY line', Buffer.from('PROXY TCP4 1.2.3.4').toString('hex'), 'v1'],
    ['POST', '504f5354', 'none'],
    ['PROXYX', '50524f585958', 'none'],
    ['v2 partial', '0d0a0d0a00', 'need-more'],
    ['v2 signature', PROXY_V2_SIGNATURE.toString('hex'), 'v2'],
    ['v2 header', v2(0x21, 0x11, TCP4_BLOCK).toString('hex'), 'v2'],
    ['CRLF CRLF X', '0d0a0d0a58', 'none'],
    ['TLS', '16030100', 'none'],
  ])('%s -> %s', (_name, h, expected) => {
    expect(sniffProxySignature(hex(h))).toBe(expected);
  });
});
