import net from 'node:net';
import tls from 'node:tls';

import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';

import { parseClientHello, type ClientHelloResult } from '../../src/protocol/client-hello.js';

// ---- builders for synthetic hellos -----------------------------------------------------------

const u16 = (n: number): Buffer => Buffer.from([n >> 8, n & 0xff]);
const u24 = (n: number): Buffer => Buffer.from([n >> 16, (n >> 8) & 0xff, n & 0xff]);
const vec16 = (b: Buffer): Buffer => Buffer.concat([u16(b.length), b]);
const vec8 = (b: Buffer): Buffer => Buffer.concat([Buffer.from([b.length]), b]);
const ext = (type: number, data: Buffer): Buffer => Buffer.concat([u16(type), vec16(data)]);
const sniExt = (entries: readonly (readonly [number, Buffer])[]): Buffer =>
  ext(0, vec16(Buffer.concat(entries.map(([t, name]) => Buffer.concat([Buffer.from([t]), vec16(name)])))));
const hostName = (name: string | Buffer): Buffer =>
  sniExt([[0, typeof name === 'string' ? Buffer.from(name, 'latin1') : name]]);
const alpnExt = (names: readonly string[]): Buffer =>
  ext(16, vec16(Buffer.concat(names.map((n) => vec8(Buffer.from(n, 'latin1'))))));

interface BodyOptions {
  readonly sessionId?: number;
  readonly suites?: Buffer;
  readonly compression?: Buffer;
  readonly extensions?: Buffer | undefined;
  readonly trailer?: Buffer;
}
function helloBody(o: BodyOptions = {}): Buffer {
  return Buffer.concat([
    Buffer.from([3, 3]),
    Buffer.alloc(32, 7),
    vec8(Buffer.alloc(o.sessionId ?? 32, 9)),
    vec16(o.suites ?? Buffer.from([0x13, 0x01, 0x13, 0x02])),
    vec8(o.compression ?? Buffer.from([0])),
    o.extensions === undefined ? Buffer.alloc(0) : vec16(o.extensions),
    o.trailer ?? Buffer.alloc(0),
  ]);
}
const handshake = (body: Buffer, type = 1): Buffer =>
  Buffer.concat([Buffer.from([type]), u24(body.length), body]);

/** Frames a handshake message into records of at most `size` payload bytes. */
function records(message: Buffer, size = 16384, type = 22): Buffer {
  const out: Buffer[] = [];
  for (let at = 0; at < message.length; at += size) {
    const part = message.subarray(at, at + size);
    out.push(Buffer.from([type, 3, 1]), u16(part.length), part);
  }
  return Buffer.concat(out);
}
const hello = (extensions: Buffer[], o: BodyOptions = {}): Buffer =>
  records(handshake(helloBody({ ...o, extensions: Buffer.concat(extensions) })));

function done(r: ClientHelloResult): Extract<ClientHelloResult, { kind: 'done' }> {
  if (r.kind !== 'done') throw new Error(`expected done, got ${JSON.stringify(r)}`);
  return r;
}

// ---- real hellos from node:tls ---------------------------------------------------------------

/** The first TLS record a real `tls.connect()` sends, captured by a plain TCP server. */
async function captureHello(options: tls.ConnectionOptions): Promise<Buffer> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  try {
    return await new Promise<Buffer>((resolve, reject) => {
      server.on('connection', (sock) => {
        let buf = Buffer.alloc(0);
        sock.on('error', () => undefined);
        sock.on('data', (d: Buffer) => {
          buf = Buffer.concat([buf, d]);
          if (buf.length >= 5 && buf.length >= 5 + buf.readUInt16BE(3)) {
            resolve(buf.subarray(0, 5 + buf.readUInt16BE(3)));
            sock.destroy();
          }
        });
      });
      const client = tls.connect({ ...options, host: '127.0.0.1', port, rejectUnauthorized: false });
      client.on('error', () => undefined);
      client.on('close', () => setTimeout(() => reject(new Error('no hello captured')), 1000).unref());
    });
  } finally {
    server.close();
  }
}

let withSni: Buffer;
let noSni: Buffer;

beforeAll(async () => {
  withSni = await captureHello({ servername: 'API.example.com', ALPNProtocols: ['h2', 'http/1.1'] });
  noSni = await captureHello({ ALPNProtocols: ['h2'] });
});

describe('parseClientHello with real hellos', () => {
  it('reads SNI (as sent) and ALPN', () => {
    expect(withSni.length).toBeGreaterThan(200);
    expect(done(parseClientHello(withSni))).toEqual({
      kind: 'done',
      sni: 'API.example.com',
      alpn: ['h2', 'http/1.1'],
      bytes: withSni.length,
    });
  });

  it('reports no SNI when the client sent none (connecting by IP)', () => {
    expect(done(parseClientHello(noSni))).toMatchObject({ sni: undefined, alpn: ['h2'] });
  });

  it('needs more at every split point, byte by byte, and ignores what follows', () => {
    for (let n = 0; n < withSni.length; n++) {
      expect(parseClientHello(withSni.subarray(0, n))).toEqual({ kind: 'need-more' });
    }
    const withData = Buffer.concat([withSni, Buffer.from([23, 3, 3, 0, 1, 0])]);
    expect(done(parseClientHello(withData)).bytes).toBe(withSni.length);
  });

  it.each([1, 2, 5, 64, 300, 1000])('reassembles a hello re-framed into %i-byte records', (size) => {
    const reframed = records(withSni.subarray(5), size);
    const r = done(parseClientHello(reframed));
    expect(r).toMatchObject({ sni: 'API.example.com', alpn: ['h2', 'http/1.1'], bytes: reframed.length });
  });

  it('handles several records arriving at every split point', () => {
    const reframed = records(withSni.subarray(5), 97);
    for (let n = 0; n < reframed.length; n++) {
      expect(parseClientHello(reframed.subarray(0, n)).kind).toBe('need-more');
    }
    expect(done(parseClientHello(reframed)).sni).toBe('API.example.com');
  });

  it('counts only the records that hold the hello in bytes', () => {
    const reframed = records(withSni.subarray(5), 200);
    const tail = Buffer.from([22, 3, 1, 0, 4, 0xde, 0xad, 0xbe, 0xef]);
    expect(done(parseClientHello(Buffer.concat([reframed, tail]))).bytes).toBe(reframed.length);
  });

  it('is too large when the cap is below the hello', () => {
    expect(parseClientHello(withSni, withSni.length - 1)).toEqual({ kind: 'invalid', reason: 'too_large' });
    expect(done(parseClientHello(withSni, withSni.length)).bytes).toBe(withSni.length);
  });
});

describe('parseClientHello framing', () => {
  it.each([
    ['HTTP', Buffer.from('GET / HTTP/1.1\r\n')],
    ['PROXY v1', Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n')],
    ['PROXY v2', Buffer.from('0d0a0d0a000d0a515549540a', 'hex')],
    ['SSLv2 hello', Buffer.from('8046010301', 'hex')],
    ['alert record', Buffer.from('150301000202', 'hex')],
    ['wrong major version', Buffer.from('1602', 'hex')],
    ['minor version 5', Buffer.from('160305', 'hex')],
  ])('not TLS: %s', (_name, bytes) => {
    expect(parseClientHello(bytes)).toEqual({ kind: 'not-tls' });
  });

  it('needs more for nothing and for a bare record type', () => {
    expect(parseClientHello(Buffer.alloc(0)).kind).toBe('need-more');
    expect(parseClientHello(Buffer.from([22])).kind).toBe('need-more');
  });

  it.each([
    ['record 16385 bytes', '1603014001', 16384, 'too_large'],
    ['record 65535 bytes', '160301ffff', 16384, 'too_large'],
    ['record 16385 bytes under a bigger cap', '1603014001', 70000, 'bad_record'],
    ['empty record', '1603010000', 16384, 'bad_record'],
    ['handshake longer than the cap', '16030100040100ffff', 16384, 'too_large'],
    ['server hello', '16030100040200002a', 16384, 'not_client_hello'],
    ['not a hello, told by the first handshake byte', '1603010004 0b', 16384, 'not_client_hello'],
  ])('%s', (_name, h, max, reason) => {
    expect(parseClientHello(Buffer.from(h.replace(/ /g, ''), 'hex'), max)).toEqual({
      kind: 'invalid',
      reason,
    });
  });

  it('rejects another record type in the middle of a fragmented hello', () => {
    const frames = records(handshake(helloBody({ extensions: hostName('a.io') })), 20);
    const second = 5 + 20;
    const bad = Buffer.from(frames);
    bad[second] = 21;
    expect(parseClientHello(bad)).toEqual({ kind: 'invalid', reason: 'bad_record' });
    expect(parseClientHello(bad.subarray(0, second + 1))).toEqual({ kind: 'invalid', reason: 'bad_record' });
  });
});

describe('parseClientHello fields', () => {
  it.each([
    ['SNI and ALPN', [hostName('a.example.com'), alpnExt(['h2'])], 'a.example.com', ['h2']],
    ['255-byte name', [hostName('a'.repeat(255))], 'a'.repeat(255), []],
    [
      'two names: first host_name',
      [
        sniExt([
          [0, Buffer.from('one.io')],
          [0, Buffer.from('two.io')],
        ]),
      ],
      'one.io',
      [],
    ],
    [
      'other name type first',
      [
        sniExt([
          [1, Buffer.from('x')],
          [0, Buffer.from('h.io')],
        ]),
      ],
      'h.io',
      [],
    ],
    ['only other name types', [sniExt([[1, Buffer.from('x')]])], undefined, []],
    [
      'unknown extensions around',
      [ext(0x0a0a, Buffer.alloc(0)), hostName('b.io'), ext(0xfe0d, Buffer.alloc(200))],
      'b.io',
      [],
    ],
    ['no extensions at all', undefined, undefined, []],
    ['empty extensions block', [], undefined, []],
  ])('%s', (_name, exts, sni, alpn) => {
    const bytes = exts === undefined ? records(handshake(helloBody())) : hello(exts);
    expect(done(parseClientHello(bytes))).toEqual({ kind: 'done', sni, alpn, bytes: bytes.length });
  });

  it.each([
    ['empty name', [hostName('')], 'bad_sni'],
    ['256-byte name', [hostName('a'.repeat(256))], 'bad_sni'],
    ['NUL in name', [hostName(Buffer.from('a\0b.io'))], 'bad_sni'],
    ['CRLF in name', [hostName('a\r\nb')], 'bad_sni'],
    ['space in name', [hostName('a b')], 'bad_sni'],
    ['non-ASCII name', [hostName(Buffer.from('é.io', 'utf8'))], 'bad_sni'],
    ['empty server_name list', [ext(0, vec16(Buffer.alloc(0)))], 'bad_sni'],
    ['empty server_name extension', [ext(0, Buffer.alloc(0))], 'bad_sni'],
    [
      'SNI list longer than extension',
      [ext(0, Buffer.concat([u16(50), Buffer.from([0]), vec16(Buffer.from('a.io'))]))],
      'bad_sni',
    ],
    [
      'SNI entry past its list',
      [ext(0, vec16(Buffer.concat([Buffer.from([0]), u16(9), Buffer.from('a.io')])))],
      'bad_sni',
    ],
    [
      'bytes after the SNI list',
      [
        ext(
          0,
          Buffer.concat([
            vec16(Buffer.concat([Buffer.from([0]), vec16(Buffer.from('a'))])),
            Buffer.from([0]),
          ]),
        ),
      ],
      'bad_sni',
    ],
    ['duplicate server_name', [hostName('a.io'), hostName('b.io')], 'duplicate_extension'],
    [
      'duplicate unknown extension',
      [ext(0x1234, Buffer.alloc(0)), ext(0x1234, Buffer.alloc(1))],
      'duplicate_extension',
    ],
    ['empty ALPN list', [ext(16, vec16(Buffer.alloc(0)))], 'bad_alpn'],
    ['empty ALPN name', [ext(16, vec16(Buffer.from([0, 2, 0x68, 0x32])))], 'bad_alpn'],
    ['ALPN name past list', [ext(16, vec16(Buffer.from([5, 0x68, 0x32])))], 'bad_alpn'],
    ['truncated extension header', [Buffer.from([0, 0, 0])], 'bad_length'],
    ['extension longer than block', [Buffer.concat([u16(0x1234), u16(10), Buffer.alloc(2)])], 'bad_length'],
  ])('rejects %s', (_name, exts, reason) => {
    expect(parseClientHello(hello(exts))).toEqual({ kind: 'invalid', reason });
  });

  it.each([
    ['session id 33 bytes', { sessionId: 33 }],
    ['odd cipher suites', { suites: Buffer.from([0x13, 0x01, 0x13]) }],
    ['no cipher suites', { suites: Buffer.alloc(0) }],
    ['no compression methods', { compression: Buffer.alloc(0) }],
    ['bytes after the extensions', { extensions: hostName('a.io'), trailer: Buffer.from([0]) }],
    ['one stray byte instead of extensions', { trailer: Buffer.from([0]) }],
  ])('rejects %s', (_name, o: BodyOptions) => {
    expect(parseClientHello(records(handshake(helloBody(o))))).toEqual({
      kind: 'invalid',
      reason: 'bad_length',
    });
  });

  it('rejects a body too short for version and random', () => {
    expect(parseClientHello(records(handshake(Buffer.alloc(10))))).toEqual({
      kind: 'invalid',
      reason: 'bad_length',
    });
  });

  it('reads a ~2 KB hello sent in two segments, then one byte at a time', () => {
    const big = hello([hostName('pq.example.com'), ext(0x0033, Buffer.alloc(1800, 1))]);
    expect(big.length).toBeGreaterThan(1900);
    expect(parseClientHello(big.subarray(0, 1000)).kind).toBe('need-more');
    for (let n = 1000; n < big.length; n++)
      expect(parseClientHello(big.subarray(0, n)).kind).toBe('need-more');
    expect(done(parseClientHello(big)).sni).toBe('pq.example.com');
  });
});

describe('parseClientHello fuzz', () => {
  const RUNS = 3000;
  const bytesArb = (max: number): fc.Arbitrary<Buffer> =>
    fc.uint8Array({ maxLength: max }).map((a) => Buffer.from(a));

  /** Invariants of any result, and a verdict reached on a prefix never changes with more bytes. */
  function check(buf: Buffer, cuts: readonly number[], max?: number): ClientHelloResult {
    const full = parseClientHello(buf, max);
    expect(['need-more', 'not-tls', 'invalid', 'done']).toContain(full.kind);
    if (full.kind === 'done') {
      expect(full.bytes).toBeGreaterThan(0);
      expect(full.bytes).toBeLessThanOrEqual(Math.min(buf.length, max ?? 16384));
    }
    if (full.kind === 'done' && full.sni !== undefined) expect(full.sni).toMatch(/^[\x21-\x7e]{1,255}$/);
    for (const cut of cuts) {
      const r = parseClientHello(buf.subarray(0, cut % (buf.length + 1)), max);
      if (r.kind !== 'need-more') expect(r).toEqual(full);
    }
    return full;
  }
  const cuts = fc.array(fc.nat(), { maxLength: 4 });
  const label = fc.stringMatching(/^[a-zA-Z0-9-]{1,12}$/);
  const sniName = fc.array(label, { minLength: 1, maxLength: 4 }).map((l) => l.join('.'));
  const alpnNames = fc.array(fc.stringMatching(/^[a-z0-9/.]{1,10}$/), { maxLength: 4 });
  const validHello = fc.record({
    sni: fc.option(sniName, { nil: undefined }),
    alpn: alpnNames,
    padding: fc.nat(3000),
    recordSize: fc.integer({ min: 1, max: 16384 }),
  });
  const build = (h: {
    sni: string | undefined;
    alpn: string[];
    padding: number;
    recordSize: number;
  }): Buffer => {
    const exts = [ext(0x0015, Buffer.alloc(h.padding))];
    if (h.sni !== undefined) exts.unshift(hostName(h.sni));
    if (h.alpn.length > 0) exts.push(alpnExt(h.alpn));
    return records(handshake(helloBody({ extensions: Buffer.concat(exts) })), h.recordSize);
  };

  it('random bytes, also behind a handshake record header', () => {
    const prefix = fc.constantFrom(
      Buffer.alloc(0),
      Buffer.from('160301', 'hex'),
      Buffer.from('16030102000100', 'hex'),
    );
    fc.assert(
      fc.property(prefix, bytesArb(600), cuts, (p, tail, c) => {
        check(Buffer.concat([p, tail]), c);
      }),
      { numRuns: RUNS },
    );
  });

  it('valid hellos over any record size and split point', () => {
    fc.assert(
      fc.property(validHello, bytesArb(20), cuts, (h, after, c) => {
        const frames = build(h);
        const r = check(Buffer.concat([frames, after]), c);
        // Small records add 5 bytes of framing each: past 16 KiB the cap applies.
        const expected =
          frames.length > 16384
            ? { kind: 'invalid', reason: 'too_large' }
            : { kind: 'done', sni: h.sni, alpn: h.alpn, bytes: frames.length };
        expect(r).toEqual(expected);
      }),
      { numRuns: RUNS },
    );
  });

  it('mutated and re-framed real hellos', () => {
    const edit = fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 }));
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 2000 }),
        fc.array(edit, { maxLength: 3 }),
        cuts,
        (size, edits, c) => {
          const buf = Buffer.from(records(withSni.subarray(5), size));
          for (const [pos, value] of edits) buf[pos % buf.length] = value;
          const r = check(buf, c);
          if (edits.length === 0 && buf.length <= 16384)
            expect(r.kind === 'done' && r.sni).toBe('API.example.com');
        },
      ),
      { numRuns: RUNS },
    );
  });

  it('mutated hellos and caps', () => {
    const edit = fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 }));
    fc.assert(
      fc.property(
        validHello,
        fc.array(edit, { minLength: 1, maxLength: 4 }),
        fc.nat(5000),
        cuts,
        (h, edits, max, c) => {
          const buf = Buffer.from(build(h));
          for (const [pos, value] of edits) buf[pos % buf.length] = value;
          check(buf, c, max);
        },
      ),
      { numRuns: RUNS },
    );
  });
});
