import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, realpathSync, symlinkSync, writeFileSync } from 'node:fs';
import { delimiter, dirname, join } from 'node:path';
import { collectJsonLines } from './process.js';

/**
 * Runs commands as on a server without Node.js: no `node` can be found or executed, so whatever
 * runs must bring its own. As root, with `unshare --mount`: a private mount namespace in which an
 * empty, non-executable file is bind-mounted over every node binary found (/usr/bin/node,
 * /usr/local/bin/node, every node on PATH, the one running the tests), PATH is /usr/bin:/bin,
 * and `/opt` can be replaced by a directory of an install root (so that the absolute symlinks an
 * installer made, e.g. /usr/local/bin/sluice -> /opt/sluice/current/bin/sluice, resolve as on the
 * server). Otherwise PATH holds only the few tools a launcher needs, and no node.
 */
export interface BareHost {
  /** namespace: node binaries masked in a mount namespace; path: only PATH is without node. */
  readonly mode: 'namespace' | 'path';
  /** The command line and environment that run `argv` on the bare host. */
  command(argv: readonly string[]): { file: string; args: string[]; env: NodeJS.ProcessEnv };
}

/** Every node binary this machine could run: the usual paths, PATH, the test runner's own. */
function nodeBinaries(): string[] {
  const candidates = ['/usr/bin/node', '/usr/bin/nodejs', '/usr/local/bin/node', process.execPath];
  // The npm `node` package's bin/node is a hard link of node-linux-<arch>/bin/node: mask both.
  const own = dirname(dirname(realpathSync(process.execPath)));
  candidates.push(join(own, 'node_modules', `node-linux-${process.arch}`, 'bin', 'node'));
  for (const dir of (process.env.PATH ?? '').split(delimiter))
    if (dir !== '') candidates.push(join(dir, 'node'), join(dir, 'nodejs'));
  const found = new Set<string>();
  for (const c of candidates) if (existsSync(c)) found.add(realpathSync(c));
  return [...found];
}

const MASK_SCRIPT = `set -eu
empty=$1 opt=$2
shift 2
while [ "$1" != -- ]; do
  mount --bind "$empty" "$1"
  shift
done
shift
if [ -n "$opt" ]; then mount --bind "$opt" /opt; fi
if node --version >/dev/null 2>&1; then
  echo 'bare host: a system node still runs' >&2
  exit 97
fi
exec "$@"
`;

/**
 * A bare host whose scratch files go to `dir` (made on first use); `opt` (namespace mode only,
 * when /opt exists) is mounted on /opt.
 */
export function bareHost(dir: string, opt?: string): BareHost {
  const namespaces = process.getuid?.() === 0 && spawnSync('unshare', ['--mount', '--', 'true']).status === 0;
  if (namespaces) {
    const empty = join(dir, 'no-node');
    const masked = nodeBinaries();
    const optSource = opt !== undefined && existsSync('/opt') ? opt : '';
    return {
      mode: 'namespace',
      command: (argv) => {
        mkdirSync(dir, { recursive: true });
        writeFileSync(empty, '', { mode: 0o644 });
        return {
          file: 'unshare',
          args: ['--mount', '--', 'sh', '-c', MASK_SCRIPT, 'sh', empty, optSource, ...masked, '--', ...argv],
          env: { PATH: '/usr/bin:/bin' },
        };
      },
    };
  }
  const bin = join(dir, 'bin');
  return {
    mode: 'path',
    command: (argv) => {
      mkdirSync(bin, { recursive: true });
      for (const tool of ['readlink', 'dirname']) {
        const r = spawnSync('sh', ['-c', `command -v ${tool}`], { encoding: 'utf8' });
        const path = r.stdout.trim();
        if (r.status !== 0 || path === '') throw new Error(`bare host: ${tool} not found`);
        if (!existsSync(join(bin, tool))) symlinkSync(path, join(bin, tool));
      }
      if (readdirSync(bin).some((f) => f.startsWith('node'))) throw new Error(`bare host: node in ${bin}`);
      return { file: argv[0] ?? '', args: argv.slice(1), env: { PATH: bin } };
    },
  };
}

/** A process whose stdout is JSON lines (pino), collected as they come. */
export interface LoggedProcess {
  readonly child: ChildProcess;
  readonly logs: Record<string, unknown>[];
  readonly exited: Promise<number | null>;
  stderr(): string;
  /** The first log line matching `pred` (now or later); rejects on timeout or exit. */
  waitForLog(
    pred: (l: Record<string, unknown>) => boolean,
    timeoutMs?: number,
  ): Promise<Record<string, unknown>>;
}

export function spawnLogged(file: string, args: readonly string[], env: NodeJS.ProcessEnv): LoggedProcess {
  const child = spawn(file, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const logs: Record<string, unknown>[] = [];
  const waiters = new Set<() => void>();
  let err = '';
  child.stderr.on('data', (c: Buffer) => (err += c.toString()));
  collectJsonLines(child.stdout, logs, () => waiters.forEach((w) => w()));
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  return {
    child,
    logs,
    exited,
    stderr: () => err,
    waitForLog: (pred, timeoutMs = 15_000) =>
      new Promise((resolve, reject) => {
        const done = (): void => {
          waiters.delete(check);
          clearTimeout(timer);
        };
        const check = (): void => {
          const hit = logs.find(pred);
          if (hit === undefined) return;
          done();
          resolve(hit);
        };
        const timer = setTimeout(() => {
          done();
          reject(new Error(`no matching log line within ${timeoutMs} ms; stderr: ${err}`));
        }, timeoutMs);
        void exited.then((code) => {
          if (!waiters.has(check)) return;
          done();
          reject(new Error(`exited with ${code} before the log line; stderr: ${err}`));
        });
        waiters.add(check);
        check();
      }),
  };
}
