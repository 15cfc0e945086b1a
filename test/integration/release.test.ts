import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  readlinkSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bareHost, spawnLogged } from '../support/bare-host.js';
import type { LoggedProcess } from '../support/bare-host.js';
import { echoServer, exchange } from '../support/net.js';
import type { TestServer } from '../support/net.js';

// `npm run release` end to end: the archive is built once, installed into a throw-away root with
// its install.sh, and the installed sluice is run on its bundled node on a host where no system
// node can be found or executed (see test/support/bare-host.ts), proxying a real connection.

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
const ARCH = process.arch;
const NAME = `sluice-${VERSION}-linux-${ARCH}`;
const PREFIX = '/opt/sluice';
const COMMAND = `${PREFIX}/current/bin/sluice`;

const hasCc = spawnSync('sh', ['-c', `command -v "${process.env.CC ?? 'cc'}"`]).status === 0;
const work = join(tmpdir(), `sluice-release-test-${process.pid}-${Date.now()}`);
const host = bareHost(join(work, 'host'), join(work, 'root', 'opt'));
const analyze = spawnSync('systemd-analyze', ['--version']).error === undefined;
const systemdUnits = ['/usr/lib/systemd/system', '/lib/systemd/system'].find((d) => existsSync(d));

/** Runs a command to completion (without blocking the event loop): exit code and output. */
function run(
  file: string,
  args: readonly string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { ...opts, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (out += c.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, out }));
  });
}

function sha256(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/** The unit's lines from [Unit] on: the header comments differ between the two copies. */
function unitBody(text: string): string {
  return text.slice(text.indexOf('[Unit]'));
}

describe.skipIf(!hasCc)(
  hasCc
    ? `npm run release: archive, install.sh --root, run without a system node (${host.mode} mode)`
    : 'npm run release: skipped, no C compiler (cc) to build the splice relay the archive bundles',
  () => {
    const archive = join(work, 'out', `${NAME}.tar.gz`);
    const extracted = join(work, 'extract');
    const dist = join(extracted, NAME);
    const root = join(work, 'root');
    const base = join(root, PREFIX);
    const release = join(base, 'releases', VERSION);
    const procs: LoggedProcess[] = [];
    const servers: TestServer[] = [];
    /** Measured spans (ms) and the archive's size (bytes). */
    const figures = { buildMs: 0, archiveBytes: 0, extractMs: 0, installMs: 0, startMs: 0, connectMs: 0 };
    let firstConnectionMs: number | undefined;
    let present = 0;

    const install = (...args: string[]): Promise<{ code: number | null; out: string }> =>
      run('sh', [join(dist, 'install.sh'), '--root', root, ...args]);

    beforeAll(async () => {
      // 0755: the refusal test runs install.sh as an unprivileged user.
      mkdirSync(work, { recursive: true, mode: 0o755 });
      chmodSync(work, 0o755);
      const t = Date.now();
      const r = await run(
        process.execPath,
        [join(ROOT, 'scripts', 'release.mjs'), '--out', join(work, 'out')],
        {
          cwd: ROOT,
        },
      );
      if (r.code !== 0) throw new Error(`npm run release failed:\n${r.out}`);
      figures.buildMs = Date.now() - t;
      figures.archiveBytes = statSync(archive).size;
    }, 150_000);

    afterAll(async () => {
      for (const p of procs) p.child.kill('SIGKILL');
      for (const s of servers) await s.close();
      rmSync(work, { recursive: true, force: true });
      if (firstConnectionMs !== undefined)
        console.log(
          `release: ${NAME}.tar.gz ${(figures.archiveBytes / 2 ** 20).toFixed(1)} MiB, built in ` +
            `${(figures.buildMs / 1000).toFixed(1)} s; tarball present -> first proxied connection ` +
            `${firstConnectionMs} ms (extract ${figures.extractMs}, install ${figures.installMs}, ` +
            `start ${figures.startMs}, connect ${figures.connectMs}) [${host.mode} mode]`,
        );
    });

    it('builds the archive with the fixed layout, its checksum and SHA256SUMS', async () => {
      const listing = await run('tar', ['-tzf', archive]);
      expect(listing.code).toBe(0);
      const entries = new Set(listing.out.split('\n').filter((l) => l !== ''));
      for (const path of [
        'install.sh',
        'VERSION',
        'SHA256SUMS',
        'bin/sluice',
        'node/bin/node',
        'node/LICENSE',
        'app/package.json',
        'app/bin/sluice',
        'app/dist/cli/index.js',
        'app/dist/relay/binding.js',
        'app/node_modules/commander/package.json',
        'app/node_modules/pino/package.json',
        'app/build/sluice_relay.node',
        'app/examples/demo.yaml',
        'share/sluice.service',
        'share/sluice.socket',
        'share/sluice.yaml',
      ])
        expect(entries, path).toContain(`${NAME}/${path}`);
      for (const entry of entries) expect(entry.startsWith(`${NAME}/`), entry).toBe(true);
      // The runtime alone (no headers, npm, corepack, docs); production dependencies only.
      const names = [...entries];
      expect(names.filter((e) => e.startsWith(`${NAME}/node/`)).sort()).toEqual(
        [`${NAME}/node/`, `${NAME}/node/LICENSE`, `${NAME}/node/bin/`, `${NAME}/node/bin/node`].sort(),
      );
      for (const dev of ['typescript', 'vitest', 'eslint', 'node', 'prettier'])
        expect(entries, dev).not.toContain(`${NAME}/app/node_modules/${dev}/`);
      expect(names.some((e) => e.endsWith('.js.map') && e.includes('/app/dist/'))).toBe(false);
      // The operator kit travels with the archive when the tree has it.
      for (const [from, ext, to] of [
        ['deploy/grafana', '.json', 'grafana'],
        ['deploy/prometheus', '.yaml', 'prometheus'],
      ] as const) {
        const dir = join(ROOT, from);
        for (const f of existsSync(dir) ? readdirSync(dir).filter((n) => n.endsWith(ext)) : [])
          expect(entries).toContain(`${NAME}/share/${to}/${f}`);
      }
      expect(readFileSync(`${archive}.sha256`, 'utf8')).toBe(`${sha256(archive)}  ${NAME}.tar.gz\n`);
    });

    it('extracts and installs with install.sh --root: release, current, links, config, unit', async () => {
      present = Date.now();
      mkdirSync(extracted);
      chmodSync(extracted, 0o755);
      const x = await run('tar', ['-xzf', archive, '-C', extracted]);
      expect(x.code, x.out).toBe(0);
      figures.extractMs = Date.now() - present;
      const t = Date.now();
      const r = await install();
      figures.installMs = Date.now() - t;
      expect(r.code, r.out).toBe(0);
      expect(r.out).toContain(`config: ${root}/etc/sluice/sluice.yaml is valid for sluice ${VERSION}`);
      expect(readFileSync(join(release, 'VERSION'), 'utf8')).toBe(`${VERSION}\n`);
      for (const f of ['bin/sluice', 'node/bin/node', 'app/build/sluice_relay.node', 'install.sh'])
        expect(statSync(join(release, f)).mode & 0o755, f).toBe(0o755);
      expect(readlinkSync(join(base, 'current'))).toBe(`releases/${VERSION}`);
      expect(readlinkSync(join(root, 'usr/local/bin/sluice'))).toBe(COMMAND);
      expect(readFileSync(join(root, 'etc/sluice/sluice.yaml'), 'utf8')).toBe(
        readFileSync(join(dist, 'share/sluice.yaml'), 'utf8'),
      );
      // The unit is systemd/sluice.service, hardening and all, with its commands at current/.
      const unit = readFileSync(join(root, 'etc/systemd/system/sluice.service'), 'utf8');
      expect(unit).toContain(`\nExecStart=${COMMAND} run -c /etc/sluice/sluice.yaml\n`);
      expect(unit).toContain(`\nExecReload=${COMMAND} validate -c /etc/sluice/sluice.yaml\n`);
      expect(unitBody(unit).replaceAll(COMMAND, '/usr/local/bin/sluice')).toBe(
        unitBody(readFileSync(join(ROOT, 'systemd/sluice.service'), 'utf8')),
      );
    });

    it(`runs on its bundled node with no system node (${host.mode} mode): proxies on the splice relay, exits 0 on SIGTERM`, async () => {
      const echo = await echoServer();
      servers.push(echo);
      const config = join(work, 'run.yaml');
      writeFileSync(
        config,
        `admin: { listen: "127.0.0.1:0" }
log: { level: info }
shutdown: { drain_timeout: 5s }
listeners: [{ name: web, protocol: tcp, bind: "127.0.0.1:0", pool: echo }]
pools: [{ name: echo, health: { active: { type: none } }, backends: [{ address: "${echo.address}" }] }]
`,
      );
      // As on the server: /usr/local/bin/sluice -> /opt/sluice/current/bin/sluice (namespace mode).
      const entry =
        host.mode === 'namespace' ? join(root, 'usr/local/bin/sluice') : join(base, 'current/bin/sluice');
      const t = Date.now();
      const cmd = host.command([entry, 'run', '-c', config]);
      const p = spawnLogged(cmd.file, cmd.args, cmd.env);
      procs.push(p);
      const ready = await p.waitForLog((l) => l.msg === 'sluice ready');
      figures.startMs = Date.now() - t;
      expect(ready.relay).toBe('splice');
      const bound = await p.waitForLog((l) => l.msg === 'listener bound' && l.listener === 'web');
      const port = Number(String(bound.address).split(':').pop());
      const c = Date.now();
      const payload = `hello through the release ${VERSION}\n`.repeat(100);
      expect(await exchange(port, payload)).toBe(payload);
      figures.connectMs = Date.now() - c;
      firstConnectionMs = Date.now() - present;
      // It is the bundled node that runs, from the release directory.
      expect(readlinkSync(`/proc/${p.child.pid}/exe`)).toMatch(
        new RegExp(`/releases/${VERSION.replaceAll('.', '\\.')}/node/bin/node$`),
      );
      const metrics = await (await fetch(`http://${String(ready.admin)}/metrics`)).text();
      expect(metrics).toMatch(/^sluice_spliced_sessions_total\{listener="web"\} 1$/m);
      expect(metrics).toMatch(/^sluice_listener_connections_total\{listener="web"\} 1$/m);
      p.child.kill('SIGTERM');
      expect(await p.exited).toBe(0);
    });

    it('falls back to the stream relay with a log line when the splice relay cannot be loaded', async () => {
      const echo = await echoServer();
      servers.push(echo);
      const config = join(work, 'fallback.yaml');
      writeFileSync(
        config,
        `admin: { listen: "127.0.0.1:0" }
listeners: [{ name: web, bind: "127.0.0.1:0", pool: echo }]
pools: [{ name: echo, health: { active: { type: none } }, backends: [{ address: "${echo.address}" }] }]
`,
      );
      const relay = join(release, 'app/build/sluice_relay.node');
      renameSync(relay, `${relay}.aside`);
      writeFileSync(relay, 'not an ELF object\n');
      try {
        const cmd = host.command([join(base, 'current/bin/sluice'), 'run', '-c', config]);
        const p = spawnLogged(cmd.file, cmd.args, cmd.env);
        procs.push(p);
        const ready = await p.waitForLog((l) => l.msg === 'sluice ready');
        expect(ready.relay).toBe('stream');
        const warn = p.logs.find((l) => l.msg === 'splice relay unavailable; relaying through Node streams');
        expect(String(warn?.reason)).toMatch(/^build\/sluice_relay\.node could not be loaded: /);
        const bound = await p.waitForLog((l) => l.msg === 'listener bound');
        expect(await exchange(Number(String(bound.address).split(':').pop()), 'ping')).toBe('ping');
        p.child.kill('SIGTERM');
        expect(await p.exited).toBe(0);
      } finally {
        rmSync(relay);
        renameSync(`${relay}.aside`, relay);
      }
    });

    it('installs again without change and never overwrites an existing config', async () => {
      const config = join(root, 'etc/sluice/sluice.yaml');
      const mine = `# the operator's own\nlisteners: [{ name: t, bind: "127.0.0.1:0", pool: p }]\npools: [{ name: p, backends: [{ address: "127.0.0.1:9" }] }]\n`;
      writeFileSync(config, mine);
      const r = await install();
      expect(r.code, r.out).toBe(0);
      expect(r.out).toContain(`release: ${release} already holds these files: kept`);
      expect(r.out).toContain('exists: kept as it is');
      expect(r.out).toContain(`current: ${base}/current -> releases/${VERSION} (unchanged)`);
      expect(readFileSync(config, 'utf8')).toBe(mine);
      expect(readlinkSync(join(base, 'current'))).toBe(`releases/${VERSION}`);
      expect(existsSync(join(base, 'previous'))).toBe(false);
      // The installed copy of install.sh (what a rollback runs) finds its own files in place.
      const own = await run('sh', [join(release, 'install.sh'), '--root', root]);
      expect(own.code, own.out).toBe(0);
      expect(own.out).toContain(`release: ${release} already holds these files: kept`);
      // An invalid config stops the switch: current keeps pointing where it did.
      writeFileSync(config, 'listeners: [{ name: t, bind: nowhere }]\n');
      const bad = await install();
      expect(bad.code).toBe(1);
      expect(bad.out).toContain('listeners[0].bind: expected host:port');
      expect(bad.out).toContain('is not valid for sluice');
      writeFileSync(config, mine);
    });

    it('upgrades beside older releases (previous kept for rollback); --prune keeps current and previous', async () => {
      for (const old of ['0.0.8', '0.0.9']) {
        mkdirSync(join(base, 'releases', old));
        writeFileSync(join(base, 'releases', old, 'VERSION'), `${old}\n`);
      }
      rmSync(join(base, 'current'));
      symlinkSync('releases/0.0.9', join(base, 'current'));
      const up = await install();
      expect(up.code, up.out).toBe(0);
      expect(up.out).toContain(`current: ${base}/current -> releases/${VERSION} (was: releases/0.0.9`);
      expect(readlinkSync(join(base, 'current'))).toBe(`releases/${VERSION}`);
      expect(readlinkSync(join(base, 'previous'))).toBe('releases/0.0.9');
      expect(readdirSync(join(base, 'releases')).sort()).toEqual(['0.0.8', '0.0.9', VERSION].sort());
      const pruned = await install('--prune');
      expect(pruned.code, pruned.out).toBe(0);
      expect(readdirSync(join(base, 'releases')).sort()).toEqual(['0.0.9', VERSION].sort());
    });

    // systemd-analyze verify --root checks ExecStart= inside the root, but needs systemd's own units
    // (sysinit.target, ...) there too: they are copied in, as on a server.
    it.skipIf(!analyze || systemdUnits === undefined)(
      'passes systemd-analyze verify --root on the installed unit',
      async () => {
        cpSync(systemdUnits ?? '', join(root, 'usr/lib/systemd/system'), {
          recursive: true,
          verbatimSymlinks: true,
        });
        const ok = await run('systemd-analyze', ['verify', `--root=${root}`, 'sluice.service']);
        expect(ok.out.trim()).toBe('');
        expect(ok.code).toBe(0);
        // The check resolves ExecStart= under the root: a unit whose command is missing fails.
        const unit = readFileSync(join(root, 'etc/systemd/system/sluice.service'), 'utf8');
        const missing = join(root, 'etc/systemd/system/sluice-missing.service');
        writeFileSync(missing, unit.replaceAll(COMMAND, `${PREFIX}/nowhere/bin/sluice`));
        const bad = await run('systemd-analyze', ['verify', `--root=${root}`, 'sluice-missing.service']);
        rmSync(missing);
        expect(bad.out).toContain(`${PREFIX}/nowhere/bin/sluice is not executable`);
        expect(bad.code).not.toBe(0);
      },
    );

    const setpriv = spawnSync('setpriv', ['--version']).error === undefined;
    it.skipIf(process.getuid?.() === 0 && !setpriv)(
      'refuses to install for a user other than root without --root',
      async () => {
        const argv = ['sh', join(dist, 'install.sh')];
        const r =
          process.getuid?.() === 0
            ? await run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', ...argv])
            : await run(argv[0] ?? 'sh', argv.slice(1));
        expect(r.code).toBe(1);
        expect(r.out).toContain(
          'install.sh: run as root (sudo ./install.sh), or install into a directory with --root DIR',
        );
      },
    );

    it('uninstalls: releases, links and unit go, /etc/sluice stays', async () => {
      const r = await install('--uninstall');
      expect(r.code, r.out).toBe(0);
      for (const path of [
        join(base, 'releases'),
        join(base, 'current'),
        join(base, 'previous'),
        join(root, 'usr/local/bin/sluice'),
        join(root, 'etc/systemd/system/sluice.service'),
      ])
        expect(existsSync(path) || lstatSync(path, { throwIfNoEntry: false }) !== undefined, path).toBe(
          false,
        );
      expect(existsSync(join(root, 'etc/sluice/sluice.yaml'))).toBe(true);
      expect(r.out).toContain(`config: ${root}/etc/sluice kept`);
      const again = await install('--uninstall');
      expect(again.code, again.out).toBe(0);
    });
  },
);
