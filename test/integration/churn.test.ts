import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fillTimeWait, runLoad, timeWaitCount } from '../support/http-load.js';
import type { LoadResult } from '../support/http-load.js';
import type { NginxHttp } from '../support/nginx.js';
import { startNginxHttp } from '../support/nginx.js';
import type { SluiceProcess } from '../support/process.js';
import { spawnSluice } from '../support/process.js';
import { readMetric } from '../support/runtime.js';
import { waitFor } from '../support/net.js';

/**
 * Connection churn, the way a busy balancer sees it: 50 clients opening a new connection per
 * request through sluice to a real HTTP server (nginx) for 20 s, on a machine that already holds
 * tens of thousands of sockets in TIME_WAIT, with the default passive health settings. Every
 * request is counted by the client and none may fail; afterwards sluice must hold nothing. Once
 * with the backend closing first (Connection: close), once with the client closing first.
 */

const CONCURRENCY = 50;
const CHURN_MS = 20_000;
const SHORT_MS = 5_000;
const TIME_WAIT_TARGET = 30_000;
/** What the fill must reach at least (it stops at the target or after 30 s). */
const TIME_WAIT_FLOOR = 20_000;

let nginx: NginxHttp;

beforeAll(async () => {
  nginx = await startNginxHttp();
  const reached = await fillTimeWait(nginx.close, TIME_WAIT_TARGET, 30_000);
  console.log(`TIME_WAIT before the churn tests: ${reached}`);
  expect(reached).toBeGreaterThanOrEqual(TIME_WAIT_FLOOR);
}, 60_000);

afterAll(() => nginx?.stop());

function config(relay: string, backendPort: number): string {
  return `
admin: { listen: "127.0.0.1:0" }
log: { level: info, access_log: false }
relay: ${relay}
listeners:
  - name: web
    bind: "127.0.0.1:0"
    pool: p
    limits: { max_connections: 20000 }
pools:
  - name: p
    backends: [{ address: "127.0.0.1:${backendPort}" }]
    health: { active: { type: none } }
`;
}

const metric = (p: SluiceProcess, name: string, labels: Record<string, string> = {}): Promise<number> =>
  readMetric(p.adminUrl, name, labels);

/** Sessions closed for a reason other than a normal end (FIN from either side). */
async function abnormal(p: SluiceProcess): Promise<Record<string, number>> {
  const text = await (await fetch(`${p.adminUrl}/metrics`)).text();
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^sluice_sessions_closed_total\{listener="web",reason="(\w+)"\} (\d+)$/gm)) {
    const [, reason = '', n = '0'] = m;
    if (reason !== 'upstream_closed' && reason !== 'downstream_closed' && Number(n) > 0)
      out[reason] = Number(n);
  }
  return out;
}

/** Runs the load through a fresh sluice and checks that every request and every session went well. */
async function churn(
  relay: string,
  backendPort: number,
  closes: 'server' | 'client',
  ms: number,
): Promise<LoadResult> {
  const p = await spawnSluice(config(relay, backendPort));
  try {
    const port = p.ports.get('web') ?? 0;
    const result = await runLoad({
      port,
      concurrency: CONCURRENCY,
      durationMs: ms,
      closes,
      maxRequests: 1_000_000,
    });
    console.log(
      `relay ${relay}, ${closes} closes first: ${result.ok} requests in ${result.seconds.toFixed(1)} s ` +
        `(${Math.round(result.ok / result.seconds)}/s), ${result.failed} failed ${JSON.stringify(result.failures)}, ` +
        `TIME_WAIT ${timeWaitCount()}`,
    );
    expect(result.failures).toEqual({});
    expect(result.ok).toBeGreaterThan(0);
    // Every accepted connection ended normally, and nothing is left open on either relay.
    await waitFor(
      async () => (await metric(p, 'sluice_backend_connections', { scope: 'local' })) === 0,
      10_000,
      'sessions to end',
    );
    expect(await abnormal(p)).toEqual({});
    expect(await metric(p, 'sluice_listener_connections_total', { listener: 'web' })).toBe(result.ok);
    expect(await metric(p, 'sluice_upstream_connect_failures_total')).toBe(0);
    expect(await metric(p, 'sluice_splice_relays')).toBe(0);
    return result;
  } finally {
    p.kill('SIGKILL');
    await p.exited;
  }
}

describe.each(['splice', 'stream'])('connection churn (relay: %s)', (relay) => {
  it(
    `serves ${CONCURRENCY} clients opening a connection per request for ${CHURN_MS / 1000} s, the backend closing first, with no failure`,
    async () => {
      await churn(relay, nginx.close, 'server', CHURN_MS);
    },
    CHURN_MS + 45_000,
  );

  it(
    'serves the same with the client closing first',
    async () => {
      await churn(relay, nginx.keepalive, 'client', SHORT_MS);
    },
    SHORT_MS + 45_000,
  );
});
