import http from 'node:http';
import { closeSync, openSync, readSync } from 'node:fs';
import { timingSafeEqual } from 'node:crypto';
import type { AdminApi } from './api.js';
import { listenError } from '../listener/bind-error.js';
import { formatHostPort } from '../config/values.js';
import { isLoopbackHost } from '../util/cidr.js';
import { isMutating, route } from './route.js';
import type { Page } from './route.js';
import type { Logger } from '../telemetry/logger.js';

/**
 * AdminApi, whose answers (readiness aside) may also come later: a multi-worker primary asks its
 * workers over IPC. A Runtime (synchronous answers) is one.
 */
export type AdminSource = {
  [K in Exclude<keyof AdminApi, 'readiness'>]: (
    ...args: Parameters<AdminApi[K]>
  ) => ReturnType<AdminApi[K]> | Promise<Awaited<ReturnType<AdminApi[K]>>>;
} & Pick<AdminApi, 'readiness'>;

/** The admin HTTP server: health, readiness, metrics, the pools API and runtime actions. */
export class AdminServer {
  readonly #server: http.Server;
  readonly #api: AdminSource;
  readonly #logger: Logger;
  #token: Buffer | undefined;
  #disabled = false;
  boundAddress = '';

  constructor(api: AdminSource, logger: Logger) {
    this.#api = api;
    this.#logger = logger.child({ component: 'admin' });
    this.#server = http.createServer((req, res) => {
      this.#handle(req, res).catch((err: unknown) => {
        this.#logger.error({ err }, 'admin request failed');
        if (!res.headersSent) send(res, 500, { error: 'internal error' });
        else res.destroy();
      });
    });
    this.#server.on('clientError', (_err, socket) => socket.destroy());
    this.#server.requestTimeout = 10_000;
    this.#server.headersTimeout = 5_000;
  }

  /** Reads the bearer token for mutating calls; undefined path means no token. Throws with a one-line cause. */
  setTokenFile(path: string | undefined): void {
    if (path === undefined) {
      this.#token = undefined;
      return;
    }
    let text: string;
    try {
      text = readToken(path);
    } catch (err) {
      if (err instanceof TokenTooLarge)
        throw new Error(`admin.token_file: ${path} is over ${MAX_TOKEN_BYTES} bytes`, { cause: err });
      throw new Error(
        `admin.token_file: cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? 'EIO'})`,
        {
          cause: err,
        },
      );
    }
    if (text === '') throw new Error(`admin.token_file: ${path} is empty`);
    this.#token = Buffer.from(text);
  }

  /**
   * A worker process serves no admin port: its primary does, at `servedBy`, which is what
   * `boundAddress` then reports. listen() binds nothing afterwards.
   */
  disable(servedBy: string): void {
    this.#disabled = true;
    this.boundAddress = servedBy;
  }

  /**
   * Binds `host:port`. Without a token on an address that is not loopback, logs a warning (the
   * config allowed it explicitly). Call setTokenFile first.
   */
  listen(host: string, port: number): Promise<void> {
    if (this.#disabled) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException): void => reject(listenError('admin', host, port, err));
      this.#server.once('error', onError);
      this.#server.listen({ host, port }, () => {
        this.#server.off('error', onError);
        this.#server.on('error', (err) => this.#logger.error({ err }, 'admin server error'));
        const a = this.#server.address();
        this.boundAddress = a !== null && typeof a === 'object' ? formatHostPort(a.address, a.port) : '';
        // Validation lets this through only with admin.allow_unauthenticated_remote: say so at every start.
        if (this.#token === undefined && !isLoopbackHost(host))
          this.#logger.warn(
            { admin: this.boundAddress, key: 'admin.allow_unauthenticated_remote' },
            'admin API reachable from the network without a token',
          );
        resolve();
      });
    });
  }

  close(): Promise<void> {
    if (!this.#server.listening) return Promise.resolve();
    return new Promise((resolve) => {
      this.#server.close(() => resolve());
      this.#server.closeAllConnections();
    });
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const r = route(req.method ?? 'GET', req.url ?? '/');
    res.setHeader('Cache-Control', 'no-store');
    res.setHeader('X-Content-Type-Options', 'nosniff');
    if (r.kind === 'refused')
      return send(res, r.status, { error: r.error }, r.allow === undefined ? {} : { Allow: r.allow });
    if (isMutating(r) && !this.#authorized(req))
      return send(res, 401, { error: 'missing or wrong bearer token' });
    switch (r.kind) {
      case 'page':
        return this.#page(res, r.page);
      case 'reload': {
        const done = await this.#api.reload();
        return send(
          res,
          done.ok ? 200 : 400,
          done.ok ? { result: 'success' } : { result: 'failure', errors: done.errors },
        );
      }
      case 'backend': {
        const b = await this.#api.setAdmin(r.pool, r.address, r.verb);
        return b === undefined ? send(res, 404, { error: 'no such pool or backend' }) : send(res, 200, b);
      }
    }
  }

  async #page(res: http.ServerResponse, page: Page): Promise<void> {
    switch (page) {
      case 'healthz':
        return sendText(res, 200, 'ok\n');
      case 'readyz': {
        const r = this.#api.readiness();
        return sendText(res, r.ready ? 200 : 503, `${r.reason}\n`);
      }
      case 'metrics': {
        const m = await this.#api.metricsText();
        res.writeHead(200, { 'Content-Type': m.contentType });
        res.end(m.body);
        return;
      }
      case 'pools':
        return send(res, 200, await this.#api.poolsJson());
      case 'listeners':
        return send(res, 200, await this.#api.listenersJson());
      case 'history':
        return send(res, 200, await this.#api.historyJson());
      case 'status': {
        const html = await this.#api.statusPage();
        res.writeHead(200, {
          'Content-Type': 'text/html; charset=utf-8',
          'Content-Security-Policy':
            "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'",
        });
        res.end(html);
        return;
      }
    }
  }

  #authorized(req: http.IncomingMessage): boolean {
    if (this.#token === undefined) return true;
    const h = req.headers.authorization ?? '';
    const m = /^Bearer (.+)$/.exec(h);
    if (m === null) return false;
    const given = Buffer.from(m[1] ?? '');
    // Compare in constant time; hash lengths first would leak nothing useful, a mismatch in length is a plain no.
    return given.length === this.#token.length && timingSafeEqual(given, this.#token);
  }
}

function send(
  res: http.ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', ...headers });
  res.end(text);
}

function sendText(res: http.ServerResponse, status: number, text: string): void {
  res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8' });
  res.end(text);
}

/** A bearer token is a line, not a file: a path such as /dev/zero must not hang the start. */
const MAX_TOKEN_BYTES = 4096;

class TokenTooLarge extends Error {}

/** Reads at most MAX_TOKEN_BYTES of the token file; throws TokenTooLarge when there is more. */
function readToken(path: string): string {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(MAX_TOKEN_BYTES + 1);
    let n = 0;
    for (let got = -1; got !== 0 && n < buf.length; n += got)
      got = readSync(fd, buf, n, buf.length - n, null);
    if (n > MAX_TOKEN_BYTES) throw new TokenTooLarge();
    return buf.subarray(0, n).toString('utf8').trim();
  } finally {
    closeSync(fd);
  }
}
