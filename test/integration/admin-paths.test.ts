import net from 'node:net';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TestRuntime } from '../support/runtime.js';
import { startRuntime } from '../support/runtime.js';

let rt: TestRuntime;
let port = 0;

beforeAll(async () => {
  rt = await startRuntime(`listeners: [{ name: web, bind: "127.0.0.1:0", pool: p }]
pools: [{ name: p, health: { active: { type: none } }, backends: [{ address: "127.0.0.1:9" }] }]`);
  port = Number(rt.adminUrl.slice(rt.adminUrl.lastIndexOf(':') + 1));
});

afterAll(() => rt.stop());

/**
 * Sends one request line as given (no client-side checks or normalization, as curl
 * --path-as-is) and resolves with the status code, or 0 when the server closed without an
 * answer (Node refuses a request line it cannot parse that way).
 */
function rawRequest(method: string, target: string): Promise<{ status: number }> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: '127.0.0.1' });
    const chunks: Buffer[] = [];
    s.setTimeout(5000, () => s.destroy(new Error(`no answer to ${method} ${target}`)));
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('error', reject);
    s.on('close', () => {
      const text = Buffer.concat(chunks).toString('latin1');
      const status = /^HTTP\/1\.1 (\d{3})/.exec(text)?.[1];
      resolve({ status: Number(status ?? 0) });
    });
    s.end(Buffer.from(`${method} ${target} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n`, 'latin1'));
  });
}

const failures = (): number => rt.logs.find('admin request failed').length;

describe('admin API paths from a hostile client', () => {
  it('answers a malformed percent-encoding with 400 and a one-line reason, logging no stack', async () => {
    // fetch keeps `%ZZ` as it is (a URL does not check its escapes), as curl --path-as-is does.
    const r = await fetch(`${rt.adminUrl}/api/v1/pools/%ZZ/backends/x/drain`, { method: 'POST' });
    expect(r.status).toBe(400);
    expect(await r.text()).toBe('{"error":"malformed percent-encoding in the path"}');
    const other = await rawRequest('POST', '/api/v1/pools/p/backends/%E2%82/enable');
    expect(other.status).toBe(400);
    expect(failures()).toBe(0);
    expect(JSON.stringify(rt.logs.lines)).not.toContain('URIError');
  });

  it('reads `//host/path` as a path, not as another host', async () => {
    expect((await rawRequest('GET', '//evil/api/v1/pools')).status).toBe(404);
    expect((await rawRequest('GET', '*')).status).toBe(400);
  });

  it('never answers 500 nor logs a failure, whatever the path (fuzz)', async () => {
    const piece = fc.oneof(
      fc.constantFrom('/', '%', '%ZZ', '%2F', '%C0', '%E2%82', '..', '%2e', '?', '#', '\\'),
      fc.constantFrom('api', 'v1', 'pools', 'p', 'backends', '127.0.0.1%3A9', 'drain', 'enable', 'history'),
      fc.string({ maxLength: 4 }),
    );
    const target = fc.oneof(
      fc.array(piece, { maxLength: 10 }).map((parts) => `/${parts.join('')}`),
      fc.array(piece, { maxLength: 3 }).map((p) => `/api/v1/pools/${p.join('')}/backends/x/disable`),
    );
    const method = fc.constantFrom('GET', 'HEAD', 'POST', 'PUT', 'OPTIONS');
    await fc.assert(
      fc.asyncProperty(method, target, async (m, t) => {
        const r = await rawRequest(m, t);
        expect(r.status, `${m} ${t}`).toBeLessThan(500);
      }),
      { numRuns: 300, seed: 0x5eed },
    );
    expect(failures()).toBe(0);
    expect(await (await fetch(`${rt.adminUrl}/healthz`)).text()).toBe('ok\n');
  });
});
