import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { route } from '../../src/admin/route.js';

const ACTION = '/api/v1/pools/p/backends/10.0.0.1%3A80/drain';

describe('admin routes', () => {
  it.each([
    ['GET', '/healthz', { kind: 'page', page: 'healthz' }],
    ['HEAD', '/api/v1/pools?x=1', { kind: 'page', page: 'pools' }],
    ['GET', '/', { kind: 'page', page: 'status' }],
    ['POST', '/api/v1/reload', { kind: 'reload' }],
    ['POST', ACTION, { kind: 'backend', pool: 'p', address: '10.0.0.1:80', verb: 'drain' }],
    ['POST', 'http://127.0.0.1:9090/api/v1/reload', { kind: 'reload' }],
    ['POST', '/metrics', { kind: 'refused', status: 405, allow: 'GET, HEAD' }],
    ['GET', ACTION, { kind: 'refused', status: 405, allow: 'POST' }],
    ['GET', '/nope', { kind: 'refused', status: 404 }],
    // `//host/path` is a path here, not another host whose path is /api/v1/pools.
    ['GET', '//evil/api/v1/pools', { kind: 'refused', status: 404 }],
    ['GET', '*', { kind: 'refused', status: 400, error: 'bad request target' }],
    ['GET', 'ftp://x/healthz', { kind: 'refused', status: 400 }],
  ])('%s %s', (method, target, expected) => {
    expect(route(method, target)).toMatchObject(expected);
  });

  it.each([
    '/api/v1/pools/%ZZ/backends/x/drain',
    '/api/v1/pools/p/backends/%/enable',
    '/api/v1/pools/p/backends/%C0%80/disable',
    '/api/v1/pools/%E2%82/backends/x/drain',
  ])('answers a malformed percent-encoding with 400 and a one-line reason: %s', (target) => {
    const r = route('POST', target);
    expect(r).toEqual({ kind: 'refused', status: 400, error: 'malformed percent-encoding in the path' });
  });

  /** Targets made of the pieces that matter to the router: slashes, escapes, dots, the API's words. */
  const piece = fc.oneof(
    fc.constantFrom(
      '/',
      '%',
      '%2',
      '%ZZ',
      '%2F',
      '%25',
      '%C0',
      '%E2%82',
      '%F0%9F%98',
      '.',
      '..',
      '%2e',
      '?',
      '#',
    ),
    fc.constantFrom('api', 'v1', 'pools', 'backends', 'drain', 'enable', 'disable', 'reload', 'metrics', 'p'),
    fc.string({ maxLength: 6 }),
    fc.string({ unit: 'binary', maxLength: 4 }),
  );
  const target = fc.oneof(
    fc.array(piece, { maxLength: 14 }).map((parts) => parts.join('')),
    fc
      .array(piece, { maxLength: 3 })
      .map((p) => `/api/v1/pools/${p.join('')}/backends/${[...p].reverse().join('')}/drain`),
    fc.array(piece, { maxLength: 8 }).map((parts) => `http://h${parts.join('')}`),
  );
  const method = fc.oneof(
    fc.constantFrom('GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'OPTIONS'),
    fc.string({ maxLength: 8 }),
  );

  it('never throws and never answers outside 400, 404, 405 or a route (fuzz)', () => {
    fc.assert(
      fc.property(method, target, (m, t) => {
        const r = route(m, t);
        if (r.kind === 'refused') expect([400, 404, 405]).toContain(r.status);
      }),
      { numRuns: 20_000, seed: 0x5eed },
    );
  });
});
