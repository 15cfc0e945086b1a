/**
 * Micro-benchmarks of the edge protocol parsers and encoders (per-connection costs on the
 * accept path), compared side by side within each group (Vitest 5 benchmark API: `bench.compare`
 * inside a test). Run: npx vitest bench --run bench/micro/protocol.bench.ts
 */
import { test } from 'vitest';

import { parseClientHello } from '../../src/protocol/client-hello.js';
import { encodeProxyV1, encodeProxyV2 } from '../../src/protocol/proxy-encode.js';
import { PP2_TYPE, parseProxyHeader } from '../../src/protocol/proxy-parse.js';
import { SniRouter } from '../../src/protocol/sni-match.js';
import { escapeForLog } from '../../src/util/escape.js';

const source = { ip: '203.0.113.7', port: 51234 };
const destination = { ip: '10.0.1.5', port: 8443 };
const v1 = Buffer.concat([encodeProxyV1(source, destination), Buffer.from('GET / HTTP/1.1\r\n')]);
const v2 = encodeProxyV2({
  command: 'proxy',
  transport: 'stream',
  source: { ip: '2001:db8::7', port: 51234 },
  destination: { ip: '2001:db8::5', port: 8443 },
  tlvs: [
    { type: PP2_TYPE.AUTHORITY, value: Buffer.from('api.example.com') },
    { type: PP2_TYPE.UNIQUE_ID, value: Buffer.alloc(16, 1) },
  ],
  crc32c: true,
}).header;

const u16 = (n: number): Buffer => Buffer.from([n >> 8, n & 0xff]);
const vec16 = (b: Buffer): Buffer => Buffer.concat([u16(b.length), b]);
/** A ClientHello of realistic size (~1.6 KB with a post-quantum key share) in one record. */
function clientHello(recordSize: number): Buffer {
  const name = Buffer.from('api.example.com');
  const sni = Buffer.concat([u16(0), vec16(vec16(Buffer.concat([Buffer.from([0]), vec16(name)])))]);
  const alpn = Buffer.concat([u16(16), vec16(vec16(Buffer.from('\x02h2\x08http/1.1', 'latin1')))]);
  const keyShare = Buffer.concat([u16(51), vec16(Buffer.alloc(1250, 3))]);
  const exts = Buffer.concat([sni, alpn, keyShare]);
  const body = Buffer.concat([
    Buffer.from([3, 3]),
    Buffer.alloc(32, 7),
    Buffer.from([32]),
    Buffer.alloc(32, 9),
    vec16(Buffer.alloc(32, 0x13)),
    Buffer.from([1, 0]),
    vec16(exts),
  ]);
  const msg = Buffer.concat([Buffer.from([1, 0, body.length >> 8, body.length & 0xff]), body]);
  const out: Buffer[] = [];
  for (let at = 0; at < msg.length; at += recordSize) {
    const part = msg.subarray(at, at + recordSize);
    out.push(Buffer.from([22, 3, 1]), u16(part.length), part);
  }
  return Buffer.concat(out);
}
const hello = clientHello(16384);
const helloFragmented = clientHello(256);

const hostile = 'evil\r\n\x1b[31m'.repeat(5) + 'x'.repeat(14);

const router = new SniRouter([
  ...Array.from({ length: 200 }, (_, i) => ({ sni: `svc${i}.example.com`, target: i })),
  { sni: '*.example.com', target: -1 },
]);

const encodeV2 = (): void => {
  encodeProxyV2({
    command: 'proxy',
    transport: 'stream',
    source,
    destination,
    tlvs: [{ type: PP2_TYPE.AUTHORITY, value: Buffer.from('api.example.com') }],
  });
};

test('PROXY protocol header, parse and encode', async ({ bench }) => {
  await bench.compare(
    bench('parse v1 TCP4', () => parseProxyHeader(v1, 4096)),
    bench('parse v2 TCP6 + TLVs + CRC32C', () => parseProxyHeader(v2, 4096)),
    bench('encode v1 TCP4', () => encodeProxyV1(source, destination)),
    bench('encode v2 TCP4 + authority TLV', encodeV2),
  );
});

test('TLS ClientHello peek (~1.6 KB hello)', async ({ bench }) => {
  await bench.compare(
    bench('one record', () => parseClientHello(hello)),
    bench('over 256-byte records', () => parseClientHello(helloFragmented)),
  );
});

test('SNI routing (201 routes) and log escaping', async ({ bench }) => {
  await bench.compare(
    bench('exact hit', () => router.match('svc150.example.com')),
    bench('wildcard hit, 4 labels', () => router.match('a.b.c.example.com')),
    bench('miss', () => router.match('www.example.org')),
    bench('escapeForLog, 64-byte hostile value', () => escapeForLog(hostile)),
  );
});
