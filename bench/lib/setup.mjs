// Before any measurement: install the peers when missing, build sluice, and describe the machine.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { which } from './sys.mjs';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));

const NEEDED = { haproxy: 'haproxy', nginx: 'nginx', iperf3: 'iperf3', wrk: 'wrk' };
export const STREAM_MODULE = '/usr/lib/nginx/modules/ngx_stream_module.so';

/** apt-get install only when a binary (or nginx's stream module) is missing. */
export function ensureTools() {
  const missing = Object.keys(NEEDED).filter((b) => which(b) === undefined);
  if (missing.length === 0 && existsSync(STREAM_MODULE)) return;
  if (process.getuid?.() !== 0)
    throw new Error(`missing ${missing.join(', ') || 'nginx stream module'}; run as root to install`);
  console.log(
    `bench: installing haproxy nginx libnginx-mod-stream iperf3 wrk (missing: ${missing.join(', ') || 'stream module'})`,
  );
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  for (const args of [
    ['update'],
    ['install', '-y', 'haproxy', 'nginx', 'libnginx-mod-stream', 'iperf3', 'wrk'],
  ]) {
    const r = spawnSync('timeout', ['600', 'apt-get', ...args], { stdio: 'inherit', env });
    if (r.status !== 0) throw new Error(`apt-get ${args[0]} failed (exit ${r.status})`);
  }
}

/** The Node that runs sluice: the project's Node 24 when installed, else the one running us. */
export function sluiceNode() {
  const local = `${ROOT}node_modules/.bin/node`;
  return existsSync(local) ? local : process.execPath;
}

/**
 * Compiles sluice. A working tree with type errors still emits (the typecheck step is where
 * those fail), so the exit code alone does not fail the bench: dist/cli/index.js must exist.
 */
export function buildSluice() {
  const tsc = `${ROOT}node_modules/.bin/tsc`;
  const r = spawnSync(tsc, ['-p', 'tsconfig.build.json'], { cwd: ROOT, encoding: 'utf8' });
  if (r.status !== 0) {
    const errors = (r.stdout + r.stderr).split('\n').filter((l) => l.includes('error TS'));
    console.log(`bench: tsc reported ${errors.length} type error(s); continuing with what it emitted`);
    for (const l of errors.slice(0, 5)) console.log(`  ${l}`);
  }
  if (!existsSync(`${ROOT}dist/cli/index.js`)) throw new Error('build produced no dist/cli/index.js');
  // The splice relay (up to date: nothing to do). Without it the `sluice` rows cannot start.
  const n = spawnSync(process.execPath, [`${ROOT}scripts/build-native.mjs`], { cwd: ROOT, encoding: 'utf8' });
  if (n.stdout.trim() !== '' || n.stderr.trim() !== '') console.log(`bench: ${(n.stdout + n.stderr).trim()}`);
}

function firstLine(cmd, args) {
  try {
    const r = spawnSync(cmd, args, { encoding: 'utf8' });
    return (
      `${r.stdout}${r.stderr}`
        .split('\n')
        .find((l) => l.trim() !== '')
        ?.trim() ?? '?'
    );
  } catch {
    return '?';
  }
}

export function machineInfo() {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  const model = /model name\s*:\s*(.+)/.exec(cpuinfo)?.[1] ?? os.cpus()[0]?.model ?? '?';
  let git = '?';
  try {
    git = execFileSync('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
  } catch {
    /* not a checkout */
  }
  return {
    date: new Date().toISOString(),
    nproc: os.availableParallelism(),
    cpu: model,
    kernel: `${os.type()} ${os.release()}`,
    memGiB: (os.totalmem() / 2 ** 30).toFixed(1),
    node: execFileSync(sluiceNode(), ['-p', 'process.version'], { encoding: 'utf8' }).trim(),
    haproxy: firstLine('haproxy', ['-v']).replace(/^HAProxy version (\S+).*/, 'HAProxy $1'),
    nginx: firstLine('nginx', ['-v']).replace(/^nginx version: /, ''),
    iperf3: firstLine('iperf3', ['--version']),
    wrk: firstLine('wrk', ['--version']).replace(/ \[.*$| Copyright.*$/, ''),
    sluice: git,
  };
}
