import net from 'node:net';
import { readFileSync } from 'node:fs';

/** What a load run counted: every request either succeeded or failed, with the failures by cause. */
export interface LoadResult {
  readonly ok: number;
  readonly failed: number;
  readonly failures: Record<string, number>;
  readonly seconds: number;
}

export interface LoadOptions {
  readonly port: number;
  /** Clients running at once, each one request per connection, one after the other. */
  readonly concurrency: number;
  /** Stop starting requests after this long. */
  readonly durationMs: number;
  /** And after this many in all (a bound on the count as well as the time). */
  readonly maxRequests?: number;
  /**
   * `server` sends `Connection: close` and reads to the server's FIN (the backend closes first);
   * `client` sends a keep-alive request, reads the whole response, then half-closes and waits
   * for the server's FIN (the client closes first).
   */
  readonly closes: 'server' | 'client';
  /** Source address of the client sockets (127.0.0.0/8 stands in for distinct clients). */
  readonly localAddress?: string;
}

const EXPECTED = /^HTTP\/1\.1 200 OK\r\n[\s\S]*\r\n\r\nok$/;
const TIMEOUT_MS = 10_000;

/** One request on a new connection; resolves with '' on success, else the cause of the failure. */
function request(o: LoadOptions): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect({
      port: o.port,
      host: '127.0.0.1',
      allowHalfOpen: true,
      ...(o.localAddress !== undefined ? { localAddress: o.localAddress } : {}),
    });
    let body = '';
    let settled = false;
    const settle = (cause: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      s.destroy();
      resolve(cause);
    };
    const timer = setTimeout(() => settle('timeout'), TIMEOUT_MS);
    s.setEncoding('latin1');
    s.on('connect', () =>
      s.write(
        `GET / HTTP/1.1\r\nHost: t\r\nConnection: ${o.closes === 'server' ? 'close' : 'keep-alive'}\r\n\r\n`,
      ),
    );
    s.on('data', (d: string) => {
      body += d;
      // The client closes first: once the whole response is in, send FIN and wait for the reply FIN.
      if (o.closes === 'client' && body.endsWith('\r\n\r\nok') && !s.writableEnded) s.end();
    });
    s.on('end', () =>
      settle(EXPECTED.test(body) ? '' : `bad response (${JSON.stringify(body.slice(0, 24))})`),
    );
    s.on('error', (err: NodeJS.ErrnoException) => settle(err.code ?? 'error'));
  });
}

/** Runs `concurrency` clients for `durationMs` and counts every request. */
export async function runLoad(o: LoadOptions): Promise<LoadResult> {
  const started = performance.now();
  const end = started + o.durationMs;
  const max = o.maxRequests ?? Number.POSITIVE_INFINITY;
  let begun = 0;
  let ok = 0;
  const failures: Record<string, number> = {};
  const client = async (): Promise<void> => {
    while (performance.now() < end && begun < max) {
      begun++;
      const cause = await request(o);
      if (cause === '') ok++;
      else failures[cause] = (failures[cause] ?? 0) + 1;
    }
  };
  await Promise.all(Array.from({ length: o.concurrency }, client));
  const failed = Object.values(failures).reduce((a, b) => a + b, 0);
  return { ok, failed, failures, seconds: (performance.now() - started) / 1000 };
}

/** Sockets in TIME_WAIT on this machine (IPv4), from /proc/net/sockstat. */
export function timeWaitCount(): number {
  const m = /^TCP:.*\btw (\d+)/m.exec(readFileSync('/proc/net/sockstat', 'utf8'));
  return m === null ? 0 : Number(m[1]);
}

/**
 * Leaves about `target` sockets in TIME_WAIT, as a busy balancer's host has: short requests
 * straight at `port` (a server that closes first), from a few 127.0.0.x source addresses so the
 * count can pass one address's ephemeral port range. Bounded by `maxMs`; returns the count reached.
 */
export async function fillTimeWait(port: number, target: number, maxMs: number): Promise<number> {
  const until = performance.now() + maxMs;
  for (let i = 0; timeWaitCount() < target && performance.now() < until; i++) {
    await runLoad({
      port,
      concurrency: 100,
      durationMs: 1000,
      closes: 'server',
      // 127.0.0.1 first: the ports sluice's own upstream connects use to reach the same server.
      localAddress: i % 4 === 0 ? '127.0.0.1' : `127.0.0.${100 + (i % 4)}`,
    });
  }
  return timeWaitCount();
}
