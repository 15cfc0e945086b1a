import net from 'node:net';
import tls from 'node:tls';
import { once } from 'node:events';
import { beforeAll, describe, expect, it } from 'vitest';
import { PP2_TYPE, parseProxyHeader } from '../../src/protocol/proxy-parse.js';
import type { ProxyHeader } from '../../src/protocol/proxy-parse.js';
import { encodeProxyV2 } from '../../src/protocol/proxy-encode.js';
import type { TestServer } from '../support/net.js';
import { connect, echoServer, readAll, startServer, untilClosed, waitFor } from '../support/net.js';
import type { TestRuntime } from '../support/runtime.js';
import { testScope } from '../support/scope.js';
import type { TestCert } from '../support/tls.js';
import { makeCert } from '../support/tls.js';

const scope = testScope();

const lb = (yaml: string): Promise<TestRuntime> => scope.lb(yaml);

/** A backend that reads a PROXY header, records it, then echoes the rest (or hands it to `then`). */
async function proxyBackend(
  then?: (s: net.Socket, rest: Buffer) => void,
): Promise<TestServer & { headers: ProxyHeader[] }> {
  const headers: ProxyHeader[] = [];
  const srv = await startServer((s) => {
    let buf = Buffer.alloc(0);
    const onData = (c: Buffer): void => {
      buf = Buffer.concat([buf, c]);
      const r = parseProxyHeader(buf, 65_551);
      if (r.kind === 'need-more') return;
      s.off('data', onData);
      if (r.kind === 'invalid') {
        s.destroy();
        return;
      }
      headers.push(r.header);
      const rest = buf.subarray(r.length);
      if (then) return then(s, rest);
      s.write(rest);
      s.pipe(s);
    };
    s.on('data', onData);
  });
  scope.defer(() => srv.close());
  return Object.assign(srv, { headers });
}

function tlvText(h: ProxyHeader | undefined, type: number): string | undefined {
  return h?.tlvs.find((t) => t.type === type)?.value.toString('latin1');
}

describe('PROXY protocol out', () => {
  it.each(['v1', 'v2'])(
    '%s: the header comes first, whole, with the real client address',
    async (version) => {
      const backend = await proxyBackend();
      const rt = await lb(`listeners: [{ name: t, bind: "127.0.0.1:0", pool: p }]
pools: [{ name: p, proxy_protocol: ${version}, health: { active: { type: none } }, backends: [{ address: "${backend.address}" }] }]`);
      const s = net.connect({
        port: rt.port('t'),
        host: '127.0.0.1',
        localAddress: '127.0.0.7',
        allowHalfOpen: true,
      });
      // Data in the same tick as connect: it must still follow the header.
      s.write('payload');
      const reply = readAll(s);
      s.end();
      expect((await reply).toString()).toBe('payload');
      const h = backend.headers[0];
      expect(h).toMatchObject({
        version: version === 'v1' ? 1 : 2,
        command: 'proxy',
        source: { ip: '127.0.0.7' },
        destination: { ip: '127.0.0.1', port: rt.port('t') },
      });
      if (version === 'v2') {
        await waitFor(() => rt.logs.find('session').length === 1);
        expect(tlvText(h, PP2_TYPE.UNIQUE_ID)).toBe(rt.logs.find('session')[0]?.id);
      }
    },
  );

  it('sends TCP6 for an IPv6 client', async () => {
    const backend = await proxyBackend();
    const rt = await lb(`listeners: [{ name: t, bind: "[::1]:0", pool: p }]
pools: [{ name: p, proxy_protocol: v2, health: { active: { type: none } }, backends: [{ address: "${backend.address}" }] }]`);
    const s = await connect(rt.port('t'), '::1');
    const reply = readAll(s);
    s.end('six');
    expect((await reply).toString()).toBe('six');
    expect(backend.headers[0]).toMatchObject({ family: 'inet6', source: { ip: '::1' } });
  });
});

describe('PROXY protocol in', () => {
  const cfg = (backend: string, trusted: string, extra = ''): string => `listeners:
  - name: t
    bind: "127.0.0.1:0"
    pool: p
    proxy_protocol_in: { trusted: ["${trusted}"], pass_tlvs: true }
    timeouts: { preface: 1s }
    ${extra}
pools: [{ name: p, proxy_protocol: v2, health: { active: { type: none } }, backends: [{ address: "${backend}" }] }]`;

  it('takes the client address from a trusted v1 header, even byte by byte, and relays it', async () => {
    const backend = await proxyBackend();
    const rt = await lb(cfg(backend.address, '127.0.0.0/8'));
    const s = await connect(rt.port('t'));
    const header = 'PROXY TCP4 203.0.113.7 192.0.2.10 40000 443\r\n';
    for (const ch of header) {
      s.write(ch);
      await new Promise((r) => setImmediate(r));
    }
    const reply = readAll(s);
    s.end('after the header');
    expect((await reply).toString()).toBe('after the header');
    expect(backend.headers[0]).toMatchObject({
      source: { ip: '203.0.113.7', port: 40000 },
      destination: { ip: '192.0.2.10', port: 443 },
    });
    await waitFor(() => rt.logs.find('session').length === 1);
    expect(rt.logs.find('session')[0]?.client).toBe('203.0.113.7:40000');
  });

  it('relays TLVs from a trusted v2 header (AWS 0xEA) and treats bytes after it as payload', async () => {
    const backend = await proxyBackend();
    const rt = await lb(cfg(backend.address, '127.0.0.1'));
    const { header } = encodeProxyV2({
      command: 'proxy',
      transport: 'stream',
      source: { ip: '198.51.100.4', port: 5555 },
      destination: { ip: '10.0.0.1', port: 443 },
      tlvs: [{ type: 0xea, value: Buffer.from('\x01vpce-0123456789abcdef', 'latin1') }],
    });
    const s = await connect(rt.port('t'));
    const reply = readAll(s);
    // Payload that looks like a TLV must not be parsed as one.
    s.end(Buffer.concat([header, Buffer.from([0x02, 0x00, 0x03, 0x61, 0x62, 0x63])]));
    expect([...(await reply)]).toEqual([0x02, 0x00, 0x03, 0x61, 0x62, 0x63]);
    const h = backend.headers[0];
    expect(h?.source).toEqual({ ip: '198.51.100.4', port: 5555 });
    expect(tlvText(h, 0xea)).toBe('\x01vpce-0123456789abcdef');
  });

  it('accepts LOCAL (a cloud balancer health check) and uses the socket addresses', async () => {
    const backend = await proxyBackend();
    const rt = await lb(cfg(backend.address, '127.0.0.1'));
    const s = await connect(rt.port('t'));
    const reply = readAll(s);
    s.end(
      Buffer.concat([encodeProxyV2({ command: 'local', transport: 'stream' }).header, Buffer.from('hc')]),
    );
    expect((await reply).toString()).toBe('hc');
    expect(backend.headers[0]?.source?.ip).toBe('127.0.0.1');
  });

  it.each([
    [
      'a header from an untrusted source',
      '127.0.0.2/32',
      'PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\nhello',
      'untrusted_source',
    ],
    ['a trusted source without a header', '127.0.0.1/32', 'GET / HTTP/1.0\r\n\r\n', 'not_proxy'],
    [
      'a v1 line that is too long',
      '127.0.0.1/32',
      `PROXY TCP4 1.2.3.4 2.3.4.5 100 100${' '.repeat(200)}`,
      'v1_too_long',
    ],
    [
      'a v2 header with a bad version',
      '127.0.0.1/32',
      Buffer.from('0d0a0d0a000d0a515549540a1111000c7f0000017f00000100500050', 'hex'),
      'v2_bad_version',
    ],
  ])('refuses %s, counts it and never contacts a backend', async (_name, trusted, bytes, reason) => {
    const backend = await proxyBackend();
    const rt = await lb(cfg(backend.address, trusted));
    const s = net.connect({ port: rt.port('t'), host: '127.0.0.1' });
    s.write(bytes);
    await untilClosed(s);
    expect(
      await rt.metric('sluice_listener_rejected_total', { listener: 't', reason: 'proxy_protocol' }),
    ).toBe(1);
    expect(await rt.metric('sluice_proxy_protocol_errors_total', { listener: 't', reason })).toBe(1);
    if (reason === 'untrusted_source') {
      // The untrusted client was connected at once (server-speaks-first protocols work); its forged
      // header was refused before any of its bytes went upstream.
      expect(backend.headers.every((h) => h.source?.ip === '127.0.0.1')).toBe(true);
    } else {
      expect(backend.accepted).toBe(0);
    }
  });

  it('closes a stalled header at the preface deadline', async () => {
    const backend = await proxyBackend();
    const rt = await lb(cfg(backend.address, '127.0.0.1'));
    const s = net.connect({ port: rt.port('t'), host: '127.0.0.1' });
    s.write('PROXY TCP4 1.2');
    await untilClosed(s);
    await waitFor(() => rt.logs.find('session').length === 1);
    expect(rt.logs.find('session')[0]?.reason).toBe('preface_timeout');
    expect(backend.accepted).toBe(0);
  });

  it('applies the ACL to the address from the trusted header', async () => {
    const backend = await proxyBackend();
    const rt = await lb(
      cfg(backend.address, '127.0.0.1', 'access: { allow: ["0.0.0.0/0"], deny: ["203.0.113.0/24"] }'),
    );
    const s = net.connect({ port: rt.port('t'), host: '127.0.0.1' });
    s.write('PROXY TCP4 203.0.113.9 10.0.0.1 1234 443\r\nx');
    await untilClosed(s);
    expect(await rt.metric('sluice_listener_rejected_total', { listener: 't', reason: 'acl' })).toBe(1);
    expect(backend.accepted).toBe(0);
  });
});

describe.each(['splice', 'stream'] as const)('PROXY header in, counted (relay: %s)', (relay) => {
  /** A backend that keeps what it receives and closes once the client has. */
  async function recorder(): Promise<TestServer & { received: () => Buffer }> {
    const chunks: Buffer[] = [];
    const srv = await startServer((s) => {
      s.on('data', (c: Buffer) => chunks.push(c));
      s.on('end', () => s.end());
    });
    scope.defer(() => srv.close());
    return Object.assign(srv, { received: () => Buffer.concat(chunks) });
  }

  const v1 = Buffer.from('PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\n');
  const v2 = encodeProxyV2({
    command: 'proxy',
    transport: 'stream',
    source: { ip: '192.0.2.1', port: 1 },
    destination: { ip: '198.51.100.2', port: 2 },
    tlvs: [],
  }).header;

  it.each([
    ['v1', v1],
    ['v2', v2],
  ])(
    'counts the payload after a %s header, not the header, in bytes_in and the byte counter',
    async (_v, header) => {
      const backend = await recorder();
      const rt = await lb(`relay: ${relay}
listeners: [{ name: t, bind: "127.0.0.1:0", pool: p, proxy_protocol_in: { trusted: [127.0.0.1/32] } }]
pools: [{ name: p, health: { active: { type: none } }, backends: [{ address: "${backend.address}" }] }]`);
      const s = await connect(rt.port('t'));
      const closed = untilClosed(s);
      s.end(Buffer.concat([header, Buffer.from('hello')]));
      await closed;
      await waitFor(() => rt.logs.find('session').length === 1, 5000, 'the access line');
      expect(backend.received().toString()).toBe('hello');
      expect(rt.logs.find('session')[0]).toMatchObject({ client: '192.0.2.1:1', bytes_in: 5 });
      expect(await rt.metric('sluice_bytes_total', { listener: 't', direction: 'upstream' })).toBe(5);
    },
  );
});

describe('preface deadline', () => {
  it('is never early: a stalled ClientHello is closed no sooner than timeouts.preface after connecting', async () => {
    const rt = await lb(`listeners:
  - { name: t, bind: "127.0.0.1:0", pool: p, tls: { routes: [] }, timeouts: { preface: 1s } }
pools: [{ name: p, health: { active: { type: none } }, backends: [{ address: "127.0.0.1:9" }] }]`);
    // Let the sweeper's last tick grow old first: a deadline taken from that tick rather than
    // from the clock would fire early by as much.
    await new Promise((r) => setTimeout(r, 700));
    const connected = performance.now();
    const s = net.connect({ port: rt.port('t'), host: '127.0.0.1' });
    s.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01])); // a TLS record header, then nothing
    await untilClosed(s);
    const elapsed = performance.now() - connected;
    expect(elapsed).toBeGreaterThanOrEqual(1000);
    // Late by at most a tick (250 ms here); the margin is for a busy machine.
    expect(elapsed).toBeLessThan(5000);
    await waitFor(() => rt.logs.find('session').length === 1);
    expect(rt.logs.find('session')[0]?.reason).toBe('preface_timeout');
  });
});

describe('TLS passthrough with SNI routing', () => {
  let cert: TestCert;
  beforeAll(() => {
    cert = makeCert(['api.example.com', 'www.example.com', 'other.test']);
  });

  /**
   * A real TLS server that answers with its name, the SNI it saw and the ALPN it chose; with
   * `withProxy`, behind a relay that strips and records a PROXY header first.
   */
  async function tlsBackend(
    name: string,
    withProxy: boolean,
  ): Promise<TestServer & { headers: ProxyHeader[] }> {
    const server = tls.createServer(
      { key: cert.key, cert: cert.cert, ALPNProtocols: ['h2', 'http/1.1'] },
      (t) => {
        t.on('error', () => undefined);
        t.end(
          `${name} ${(t as tls.TLSSocket & { servername?: string }).servername ?? '-'} ${t.alpnProtocol || '-'}`,
        );
      },
    );
    server.on('tlsClientError', () => undefined);
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as net.AddressInfo).port;
    scope.defer(() => new Promise((r) => server.close(() => r())));
    const direct = {
      port,
      host: '127.0.0.1',
      address: `127.0.0.1:${port}`,
      sockets: new Set<net.Socket>(),
      accepted: 0,
      close: () => Promise.resolve(),
      headers: [] as ProxyHeader[],
    };
    if (!withProxy) return direct;
    return proxyBackend((s, rest) => {
      const up = net.connect({ port, host: '127.0.0.1' });
      up.on('error', () => s.destroy());
      up.write(rest);
      s.pipe(up).pipe(s);
    });
  }

  async function tlsRequest(port: number, servername: string | undefined): Promise<string> {
    const t = tls.connect({
      port,
      host: '127.0.0.1',
      rejectUnauthorized: false,
      ALPNProtocols: ['h2', 'http/1.1'],
      ...(servername ? { servername } : {}),
    });
    t.on('error', () => undefined);
    const chunks: Buffer[] = [];
    t.on('data', (c: Buffer) => chunks.push(c));
    await new Promise((r) => t.on('close', r));
    return Buffer.concat(chunks).toString();
  }

  it('routes real TLS clients by SNI to real TLS servers, handshakes completing end to end', async () => {
    const api = await tlsBackend('api', true);
    const web = await tlsBackend('web', false);
    const fallback = await tlsBackend('fallback', false);
    const rt = await lb(`listeners:
  - name: t
    bind: "127.0.0.1:0"
    pool: fallback
    tls:
      routes:
        - { sni: api.example.com, pool: api }
        - { sni: "*.example.com", pool: web }
      on_no_match: default
pools:
  - { name: api, proxy_protocol: v2, health: { active: { type: none } }, backends: [{ address: "${api.address}" }] }
  - { name: web, health: { active: { type: none } }, backends: [{ address: "${web.address}" }] }
  - { name: fallback, health: { active: { type: none } }, backends: [{ address: "${fallback.address}" }] }`);
    expect(await tlsRequest(rt.port('t'), 'API.example.com')).toBe('api API.example.com h2');
    expect(await tlsRequest(rt.port('t'), 'www.example.com')).toBe('web www.example.com h2');
    expect(await tlsRequest(rt.port('t'), 'other.test')).toBe('fallback other.test h2');
    const h = api.headers[0];
    expect(tlvText(h, PP2_TYPE.AUTHORITY)).toBe('API.example.com');
    expect(tlvText(h, PP2_TYPE.ALPN)).toBe('h2');
    await waitFor(() => rt.logs.find('session').length === 3);
    expect(
      rt.logs
        .find('session')
        .map((l) => l.sni)
        .sort(),
    ).toEqual(['API.example.com', 'other.test', 'www.example.com']);
  });

  it('routes a ClientHello that arrives one byte at a time', async () => {
    const api = await tlsBackend('api', false);
    const rt =
      await lb(`listeners: [{ name: t, bind: "127.0.0.1:0", pool: api, tls: { routes: [{ sni: api.example.com, pool: api }], on_no_match: reject } }]
pools: [{ name: api, health: { active: { type: none } }, backends: [{ address: "${api.address}" }] }]`);
    // A relay in front of sluice that forwards the client's bytes one at a time.
    const relay = await startServer((c) => {
      const up = net.connect({ port: rt.port('t'), host: '127.0.0.1' });
      up.on('error', () => c.destroy());
      c.on('data', (d: Buffer) => {
        c.pause();
        let i = 0;
        const next = (): void => {
          if (i >= d.length) return void c.resume();
          up.write(d.subarray(i, ++i), () => setImmediate(next));
        };
        next();
      });
      up.pipe(c);
    });
    scope.defer(() => relay.close());
    expect(await tlsRequest(relay.port, 'api.example.com')).toBe('api api.example.com h2');
  });

  it('rejects unmatched names with on_no_match: reject, and non-TLS bytes, counting reason tls', async () => {
    const api = await tlsBackend('api', false);
    const rt =
      await lb(`listeners: [{ name: t, bind: "127.0.0.1:0", pool: api, tls: { routes: [{ sni: api.example.com, pool: api }], on_no_match: reject } }]
pools: [{ name: api, health: { active: { type: none } }, backends: [{ address: "${api.address}" }] }]`);
    expect(await tlsRequest(rt.port('t'), 'www.example.com')).toBe('');
    const plain = net.connect({ port: rt.port('t'), host: '127.0.0.1' });
    plain.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    await untilClosed(plain);
    expect(await rt.metric('sluice_listener_rejected_total', { listener: 't', reason: 'tls' })).toBe(2);
    expect(api.accepted).toBe(0);
  });

  it('sends non-TLS bytes to the default pool with on_non_tls: default', async () => {
    const echo = await echoServer();
    scope.defer(() => echo.close());
    const rt =
      await lb(`listeners: [{ name: t, bind: "127.0.0.1:0", pool: p, tls: { routes: [], on_non_tls: default } }]
pools: [{ name: p, health: { active: { type: none } }, backends: [{ address: "${echo.address}" }] }]`);
    const s = await connect(rt.port('t'));
    const reply = readAll(s);
    s.end('plain text');
    expect((await reply).toString()).toBe('plain text');
  });
});
