import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';

/**
 * Collects the JSON lines a child writes on `out` into `logs` (other lines are skipped), calling
 * `onLine` after each.
 */
export function collectJsonLines(out: Readable, logs: Record<string, unknown>[], onLine: () => void): void {
  let buf = '';
  out.on('data', (c: Buffer) => {
    buf += c.toString();
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      try {
        logs.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        // not a log line
      }
      onLine();
    }
  });
}

export const SLUICE = fileURLToPath(new URL('../../bin/sluice', import.meta.url));

/** Writes `text` to a fresh temp file and returns its path. */
export function tempFile(name: string, text: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-test-'));
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

/** Runs the CLI to completion: exit code, stdout, stderr. */
export function runCli(
  args: string[],
  timeoutMs = 20_000,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [SLUICE, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`sluice ${args.join(' ')} did not exit within ${timeoutMs} ms`));
    }, timeoutMs);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Sends `signal` to `pid`; false when no such process is left. */
export function tryKill(pid: number, signal: NodeJS.Signals | 0 = 'SIGKILL'): boolean {
  try {
    process.kill(pid, signal);
    return true;
  } catch {
    return false;
  }
}

/** EPOLLEXCLUSIVE in an epoll entry's event mask (/proc/PID/fdinfo of an epoll descriptor). */
const EPOLLEXCLUSIVE = 1 << 28;

/** How many epoll entries of process `pid` wake only one of the processes waiting on their file. */
export function exclusiveWatches(pid: number): number {
  let n = 0;
  for (const fd of readdirSync(`/proc/${pid}/fdinfo`)) {
    let text: string;
    try {
      text = readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8');
    } catch {
      continue; // closed meanwhile
    }
    for (const m of text.matchAll(/^tfd:\s*\d+\s+events:\s*([0-9a-f]+)/gm))
      if ((parseInt(m[1] ?? '0', 16) & EPOLLEXCLUSIVE) !== 0) n++;
  }
  return n;
}

/** A forked `sluice run` and what it has logged. */
export interface SluiceProcess {
  readonly child: ChildProcess;
  /** The config file it runs (rewrite it, then send SIGHUP, to test reloads). */
  readonly configPath: string;
  readonly logs: Record<string, unknown>[];
  /** listener name → bound port */
  readonly ports: Map<string, number>;
  adminUrl: string;
  readonly exited: Promise<number | null>;
  waitForLog(
    pred: (l: Record<string, unknown>) => boolean,
    timeoutMs?: number,
  ): Promise<Record<string, unknown>>;
  kill(signal?: NodeJS.Signals): void;
}

/**
 * Starts `sluice run -c` on YAML text and waits for "sluice ready". `wrap` is a command put in
 * front of node, e.g. `['prlimit', '--nofile=256:256', '--']` to run it with fewer descriptors;
 * `nodeArgs` go to node itself, e.g. `['--expose-gc']`.
 */
export async function spawnSluice(
  yaml: string,
  timeoutMs = 15_000,
  wrap: readonly string[] = [],
  nodeArgs: readonly string[] = [],
): Promise<SluiceProcess> {
  const path = tempFile('sluice.yaml', yaml);
  const argv = [...wrap, process.execPath, ...nodeArgs, SLUICE, 'run', '-c', path];
  const child = spawn(argv[0] ?? process.execPath, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  const logs: Record<string, unknown>[] = [];
  const waiters = new Set<() => void>();
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
  if (child.stdout !== null) collectJsonLines(child.stdout, logs, () => waiters.forEach((w) => w()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const proc: SluiceProcess = {
    child,
    configPath: path,
    logs,
    ports: new Map(),
    adminUrl: '',
    exited,
    kill: (signal = 'SIGTERM') => child.kill(signal),
    waitForLog: (pred, ms = 10_000) =>
      new Promise((resolve, reject) => {
        const check = (): void => {
          const hit = logs.find(pred);
          if (hit) {
            waiters.delete(check);
            clearTimeout(timer);
            resolve(hit);
          }
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`no matching log line within ${ms} ms; stderr: ${stderr}`));
        }, ms);
        waiters.add(check);
        check();
      }),
  };
  let ready: Record<string, unknown>;
  try {
    ready = await Promise.race([
      proc.waitForLog((l) => l.msg === 'sluice ready', timeoutMs),
      exited.then((code) => {
        throw new Error(`sluice exited with ${code} before it was ready: ${stderr}`);
      }),
    ]);
  } catch (err) {
    child.kill('SIGKILL'); // not ready: the caller never gets it to stop
    throw err;
  }
  proc.adminUrl = `http://${String(ready.admin)}`;
  for (const l of logs)
    if (l.msg === 'listener bound')
      proc.ports.set(String(l.listener), Number(String(l.address).split(':').pop()));
  return proc;
}
