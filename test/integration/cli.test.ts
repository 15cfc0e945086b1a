import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { closedPort, connect, echoServer, readAll, untilClosed, waitFor } from '../support/net.js';
import type { TestServer } from '../support/net.js';
import type { SluiceProcess } from '../support/process.js';
import { runCli, spawnSluice, tempFile } from '../support/process.js';

const procs: SluiceProcess[] = [];
const servers: TestServer[] = [];
afterEach(async () => {
  for (const p of procs.splice(0)) p.kill('SIGKILL');
  for (const s of servers.splice(0)) await s.close();
});

function config(backend: string, extra = ''): string {
  return `admin: { listen: "127.0.0.1:0" }
log: { level: info }
shutdown: { drain_timeout: 10s }
listeners: [{ name: t, bind: "127.0.0.1:0", pool: p }]
pools: [{ name: p, health: { active: { type: none } }, backends: [{ address: "${backend}" }] }]
${extra}`;
}

describe('sluice validate', () => {
  it('accepts a good config with exit 0', async () => {
    const r = await runCli(['validate', '-c', tempFile('ok.yaml', config('127.0.0.1:9'))]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
  });

  it('lists every problem with its key path and exits 78', async () => {
    const bad = `listeners:
  - name: web
    bind: "127.0.0.1"
    pool: p
    timeouts: { idle: 5 minutes }
    colour: blue
pools:
  - name: p
    algorithm: fastest
    backends: [{ address: "[::1]:99999" }]
`;
    const r = await runCli(['validate', '-c', tempFile('bad.yaml', bad)]);
    expect(r.code).toBe(78);
    expect(r.stderr).toContain('listeners[0].bind: expected host:port');
    expect(r.stderr).toContain('listeners[0].timeouts.idle: expected a duration');
    expect(r.stderr).toContain('listeners[0].colour: unknown key');
    expect(r.stderr).toContain('pools[0].algorithm: expected one of');
    expect(r.stderr).toContain('pools[0].backends[0].address: port 99999 is out of range');
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  it('names a dangling pool reference', async () => {
    const r = await runCli([
      'validate',
      '-c',
      tempFile('dangling.yaml', config('127.0.0.1:9').replace('pool: p }', 'pool: nope }')),
    ]);
    expect(r.code).toBe(78);
    expect(r.stderr).toContain('listeners[0].pool: no pool named "nope"');
  });

  it('reports a missing file as a config error', async () => {
    const r = await runCli(['validate', '-c', '/nonexistent/sluice.yaml']);
    expect(r.code).toBe(78);
    expect(r.stderr).toContain('cannot read the file (ENOENT)');
  });

  it.each([
    [
      'an alias bomb',
      `listeners:\n  - &a0 [x, x, x, x, x, x, x, x, x, x]\n${Array.from(
        { length: 9 },
        (_, i) => `  - &a${i + 1} [${Array(10).fill(`*a${i}`).join(', ')}]\n`,
      ).join('')}pools: []\n`,
      'line 7: too many values once aliases are expanded (more than 1,000,000)',
    ],
    [
      'a nest 100,000 deep',
      `listeners: ${'['.repeat(100_000)}${']'.repeat(100_000)}\n`,
      'line 1: nesting too deep (more than 64 levels of lists and mappings)',
    ],
    [
      'a file over 1 MiB',
      `# ${'x'.repeat(1024 * 1024)}\n`,
      'the file is larger than 1 MiB, the most a config file may be',
    ],
  ])('refuses %s with exit 78 and the usual problem lines', async (_what, text, problem) => {
    const path = tempFile('hostile.yaml', text);
    const r = await runCli(['validate', '-c', path]);
    expect(r.code).toBe(78);
    const lines = r.stderr.trimEnd().split('\n');
    expect(lines[0]).toBe(`sluice: invalid configuration in ${path}:`);
    expect(lines.slice(1).some((l) => l.startsWith('  ') && l.endsWith(problem))).toBe(true);
    expect(r.stderr).not.toMatch(/\n\s+at |call stack|resource exhaustion/i);
  });

  it('refuses an admin address the network reaches without a token, naming both keys', async () => {
    const text = config('127.0.0.1:9').replace(
      'admin: { listen: "127.0.0.1:0" }',
      'admin: { listen: "0.0.0.0:9090" }',
    );
    const r = await runCli(['validate', '-c', tempFile('open-admin.yaml', text)]);
    expect(r.code).toBe(78);
    expect(r.stderr).toContain(
      '  admin.listen: 0.0.0.0:9090 is not loopback: set admin.token_file (or admin.allow_unauthenticated_remote: true to serve it without a token)',
    );
    const allowed = text.replace('"0.0.0.0:9090"', '"0.0.0.0:9090", allow_unauthenticated_remote: true');
    expect((await runCli(['validate', '-c', tempFile('allowed.yaml', allowed)])).code).toBe(0);
  });

  it('checks the scope of cluster-wide limits: exit 78 on a udp listener, a warning with the memory store', async () => {
    const udp = `listeners:
  - { name: d, protocol: udp, bind: "127.0.0.1:0", pool: p, limits: { max_connections_scope: cluster } }
pools: [{ name: p, health: { active: { type: none } }, backends: [{ address: "127.0.0.1:9" }] }]
`;
    const bad = await runCli(['validate', '-c', tempFile('udp-scope.yaml', udp)]);
    expect(bad.code).toBe(78);
    expect(bad.stderr).toContain(
      '  listeners[0].limits.max_connections_scope: only for tcp listeners (udp.max_flows caps the flows of a udp listener)',
    );
    const memory = config('127.0.0.1:9').replace(
      'pools: [{ name: p,',
      'pools: [{ name: p, max_connections_per_backend: 30, max_connections_per_backend_scope: cluster,',
    );
    const warned = await runCli(['validate', '-c', tempFile('memory-scope.yaml', memory)]);
    expect(warned.code).toBe(0);
    expect(warned.stderr).toBe(
      "sluice: warning: pools[0].max_connections_per_backend_scope: cluster with state.store: memory: no other replica shares the count, so the limit is this host's (split over its workers)\n",
    );
    const redis = `${memory}state: { store: redis }\n`;
    expect(await runCli(['validate', '-c', tempFile('redis-scope.yaml', redis)])).toMatchObject({
      code: 0,
      stderr: '',
    });
  });

  it('refuses a token file that is not a token (/dev/zero) at once, with a one-line cause', async () => {
    const text = config('127.0.0.1:9').replace(
      'admin: { listen: "127.0.0.1:0" }',
      'admin: { listen: "127.0.0.1:0", token_file: /dev/zero }',
    );
    const r = await runCli(['run', '-c', tempFile('zero-token.yaml', text)], 10_000);
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe('sluice: admin.token_file: /dev/zero is over 4096 bytes');
  });

  it('refuses to run a bad config with exit 78', async () => {
    const r = await runCli(['run', '-c', tempFile('bad.yaml', 'listeners: []\npools: []\n')]);
    expect(r.code).toBe(78);
    expect(r.stderr).toContain('listeners: needs at least 1 item(s)');
  });
});

describe('sluice run', () => {
  it('exits 1 with a one-line cause when the port is taken', async () => {
    const blocker = net.createServer().listen(0, '127.0.0.1');
    await new Promise((r) => blocker.once('listening', r));
    const port = (blocker.address() as net.AddressInfo).port;
    const r = await runCli([
      'run',
      '-c',
      tempFile('busy.yaml', config('127.0.0.1:9').replace('127.0.0.1:0", pool', `127.0.0.1:${port}", pool`)),
    ]);
    blocker.close();
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe(`sluice: listener "t": 127.0.0.1:${port} already in use`);
  });

  it('drains on SIGTERM: readiness 503, no new connections, open sessions finish, exit 0', async () => {
    const echo = await echoServer();
    servers.push(echo);
    const p = await spawnSluice(config(echo.address));
    procs.push(p);
    const port = p.ports.get('t') ?? 0;
    const s = await connect(port);
    s.write('before');
    await waitFor(() => echo.sockets.size === 1);
    p.kill('SIGTERM');
    await p.waitForLog((l) => l.msg === 'draining');
    expect((await fetch(`${p.adminUrl}/readyz`)).status).toBe(503);
    const refused = net.connect({ port, host: '127.0.0.1' });
    const r = await untilClosed(refused);
    expect(r.reset || r.data.length === 0).toBe(true);
    // The open session still works end to end.
    const reply = readAll(s);
    s.end(' and after');
    expect((await reply).toString()).toBe('before and after');
    expect(await p.exited).toBe(0);
    expect(p.logs.some((l) => l.msg === 'session' && l.reason === 'downstream_closed')).toBe(true);
  });

  it('exits at once on a second signal', async () => {
    const echo = await echoServer();
    servers.push(echo);
    const p = await spawnSluice(config(echo.address));
    procs.push(p);
    const s = await connect(p.ports.get('t') ?? 0);
    s.on('error', () => undefined);
    s.write('x');
    await waitFor(() => echo.sockets.size === 1);
    p.kill('SIGTERM');
    await p.waitForLog((l) => l.msg === 'draining');
    p.kill('SIGINT');
    expect(await p.exited).toBe(0);
    s.destroy();
  });

  // A host name counts as reachable from the network, whatever it resolves to: 127.1 is one that
  // resolves to 127.0.0.1, so these runs bind nothing outside loopback.
  it.each([1, 2])(
    'warns at start when told to serve the admin API without a token (workers: %i)',
    async (workers) => {
      const echo = await echoServer();
      servers.push(echo);
      // Several workers share the listener's port: it must be named (port 0 cannot be shared).
      const text = config(echo.address, `workers: ${workers}\n`)
        .replace(
          'admin: { listen: "127.0.0.1:0" }',
          'admin: { listen: "127.1:0", allow_unauthenticated_remote: true }',
        )
        .replace('bind: "127.0.0.1:0"', `bind: "127.0.0.1:${await closedPort()}"`);
      const p = await spawnSluice(text);
      procs.push(p);
      const warn = await p.waitForLog(
        (l) => l.msg === 'admin API reachable from the network without a token',
      );
      expect(warn).toMatchObject({
        level: 'warn',
        admin: expect.stringMatching(/^127\.0\.0\.1:\d+$/) as string,
      });
      expect((await fetch(`${p.adminUrl}/healthz`)).status).toBe(200);
      // Only the process that binds the admin port warns: the primary, not its workers.
      expect(p.logs.filter((l) => l.msg === warn.msg)).toHaveLength(1);
    },
  );

  it('prints the version', async () => {
    const r = await runCli(['--version']);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/);
  });
});
