/**
 * What an admin request asks for, decided from its method and request target alone: a pure
 * function, so that it can be fuzzed. It never throws: a target it cannot read is a 400.
 */

/** Pages and documents served to GET and HEAD. */
export type Page = 'healthz' | 'readyz' | 'metrics' | 'pools' | 'listeners' | 'history' | 'status';

export type Verb = 'drain' | 'enable' | 'disable';

export type Route =
  | { readonly kind: 'page'; readonly page: Page }
  | { readonly kind: 'reload' }
  | { readonly kind: 'backend'; readonly pool: string; readonly address: string; readonly verb: Verb }
  /** Refused before anything runs; `allow` is the Allow header of a 405. */
  | {
      readonly kind: 'refused';
      readonly status: 400 | 404 | 405;
      readonly error: string;
      readonly allow?: string;
    };

const PAGES: ReadonlyMap<string, Page> = new Map([
  ['/healthz', 'healthz'],
  ['/readyz', 'readyz'],
  ['/metrics', 'metrics'],
  ['/api/v1/pools', 'pools'],
  ['/api/v1/listeners', 'listeners'],
  ['/api/v1/history', 'history'],
  ['/', 'status'],
]);

const BACKEND_ACTION = /^\/api\/v1\/pools\/([^/]+)\/backends\/([^/]+)\/(drain|enable|disable)$/;

/** Routes which answer only POST: mutating calls (they also need the token, when one is set). */
export function isMutating(route: Route): boolean {
  return route.kind === 'reload' || route.kind === 'backend';
}

/**
 * The route of one request. `target` is the request line's target as received (origin form
 * `/path?query`, or absolute form `http://host/path`). A backend action's pool and address are
 * percent-decoded; the one check left to the caller is the bearer token.
 */
export function route(method: string, target: string): Route {
  const path = pathOf(target);
  if (path === undefined) return refused(400, 'bad request target');
  const page = PAGES.get(path);
  if (page !== undefined) {
    if (method === 'GET' || method === 'HEAD') return { kind: 'page', page };
    return { kind: 'refused', status: 405, error: 'use GET', allow: 'GET, HEAD' };
  }
  const action = BACKEND_ACTION.exec(path);
  if (action === null && path !== '/api/v1/reload') return refused(404, 'not found');
  if (method !== 'POST') return { kind: 'refused', status: 405, error: 'use POST', allow: 'POST' };
  if (action === null) return { kind: 'reload' };
  const pool = decodeSegment(action[1] ?? '');
  const address = decodeSegment(action[2] ?? '');
  if (pool === undefined || address === undefined)
    return refused(400, 'malformed percent-encoding in the path');
  return { kind: 'backend', pool, address, verb: action[3] as Verb };
}

function refused(status: 400 | 404, error: string): Route {
  return { kind: 'refused', status, error };
}

/**
 * The path of a request target, normalized as a browser would (dot segments resolved), or
 * undefined when it is not a URL. An origin-form target is read against a fixed origin: `//x/y`
 * is the path `//x/y`, not the host `x`.
 */
function pathOf(target: string): string | undefined {
  try {
    if (target.startsWith('/')) return new URL(`http://admin${target}`).pathname;
    const url = new URL(target);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url.pathname : undefined;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ERR_INVALID_URL') return undefined;
    throw err;
  }
}

/** One percent-decoded path segment, or undefined when its escapes are not valid UTF-8 (`%ZZ`, `%C0`). */
function decodeSegment(segment: string): string | undefined {
  try {
    return decodeURIComponent(segment);
  } catch (err) {
    if (err instanceof URIError) return undefined;
    throw err;
  }
}
