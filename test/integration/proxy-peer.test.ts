import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closedPort, readAll, waitFor } from '../support/net.js';
import { tempFile } from '../support/process.js';
import type { TestRuntime } from '../support/runtime.js';
import { startRuntime } from '../support/runtime.js';

/**
 * A real PROXY protocol receiver: HAProxy with `accept-proxy`, answering every HTTP request with
 * the client address it took from the header. .ci/run installs haproxy.
 */
function haproxyBinary(): string {
  try {
    execFileSync('haproxy', ['-v'], { stdio: 'pipe' });
    return 'haproxy';
  } catch {
    throw new Error('haproxy not found: install the haproxy package (.ci/run does)');
  }
}

let haproxy: ChildProcess | undefined;
let port = 0;

beforeAll(async () => {
  const bin = haproxyBinary();
  port = await closedPort();
  const cfg = tempFile(
    'haproxy.cfg',
    `global
  maxconn 100
defaults
  mode http
  timeout connect 2s
  timeout client 5s
  timeout server 5s
frontend fe
  bind 127.0.0.1:${port} accept-proxy
  http-request return status 200 content-type text/plain lf-string "%[src] %[src_port]"
`,
  );
  haproxy = spawn(bin, ['-db', '-f', cfg], { stdio: 'ignore' });
  await waitFor(
    () =>
      new Promise<boolean>((resolve) => {
        const s = net.connect({ port, host: '127.0.0.1' });
        s.on('connect', () => {
          s.destroy();
          resolve(true);
        });
        s.on('error', () => resolve(false));
      }),
    10_000,
    'haproxy to listen',
  );
});

afterAll(() => {
  haproxy?.kill('SIGKILL');
});

describe('PROXY protocol out to HAProxy accept-proxy', () => {
  let rt: TestRuntime | undefined;
  afterAll(async () => rt?.stop());

  it.each(['v1', 'v2'])('%s: HAProxy sees the real client address', async (version) => {
    rt = await startRuntime(`listeners: [{ name: t, bind: "127.0.0.1:0", pool: p }]
pools:
  - name: p
    proxy_protocol: ${version}
    health: { active: { type: http, path: /, expect_status: 200, interval: 100ms, timeout: 100ms } }
    backends: [{ address: "127.0.0.1:${port}" }]`);
    const s = net.connect({
      port: rt.port('t'),
      host: '127.0.0.1',
      localAddress: '127.0.0.7',
      allowHalfOpen: true,
    });
    s.on('connect', () => s.write('GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'));
    const reply = (await readAll(s)).toString();
    expect(reply).toMatch(/^HTTP\/1\.1 200/);
    expect(reply.split('\r\n\r\n')[1]).toMatch(/^127\.0\.0\.7 \d+$/);
    // HTTP health checks of a PROXY pool open with a header too, so HAProxy answers them.
    const backend = `127.0.0.1:${port}`;
    await waitFor(
      async () =>
        ((await rt?.metric('sluice_health_checks_total', { pool: 'p', backend, result: 'pass' })) ?? 0) >= 3,
      5000,
      'passing checks',
    );
    expect(await rt.metric('sluice_health_checks_total', { pool: 'p', backend, result: 'bad_status' })).toBe(
      0,
    );
    expect(await rt.metric('sluice_backend_up', { pool: 'p', backend })).toBe(1);
    await rt.stop();
    rt = undefined;
  });
});
