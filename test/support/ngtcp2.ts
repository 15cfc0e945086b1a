import { spawn, type ChildProcess } from 'node:child_process';
import dgram from 'node:dgram';
import { once } from 'node:events';
import { accessSync, constants, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeCert } from './tls.js';

/*
 * A real QUIC stack for the tests: ngtcp2's example HTTP/3 server and client as Debian ships
 * them (packages ngtcp2-server and ngtcp2-client, GnuTLS builds; .ci/run installs them).
 */

const SERVER = '/usr/sbin/gtlsserver';
const CLIENT = '/usr/bin/gtlsclient';

/** Throws a clear error when the binaries are not installed. */
export function requireNgtcp2(): void {
  for (const bin of [SERVER, CLIENT]) {
    try {
      accessSync(bin, constants.X_OK);
    } catch {
      throw new Error(
        `${bin} is missing: the QUIC tests need Debian's ngtcp2-server and ngtcp2-client ` +
          '(apt-get install ngtcp2-server ngtcp2-client; .ci/run installs them)',
      );
    }
  }
}

export interface QuicServer {
  readonly name: string;
  readonly port: number;
  readonly address: string;
  /** What GET /who and GET /big answer: the server's name, and 1 MB of bytes of its own. */
  readonly big: Buffer;
  close(): Promise<void>;
}

let certDir: string | undefined;

function certificate(): { key: string; cert: string } {
  if (certDir === undefined) {
    const { key, cert } = makeCert(['localhost']);
    certDir = mkdtempSync(join(tmpdir(), 'sluice-quic-cert-'));
    writeFileSync(join(certDir, 'key.pem'), key);
    writeFileSync(join(certDir, 'cert.pem'), cert);
  }
  return { key: join(certDir, 'key.pem'), cert: join(certDir, 'cert.pem') };
}

/** A UDP port that was free a moment ago (ngtcp2's server takes no port 0). */
async function freeUdpPort(): Promise<number> {
  const s = dgram.createSocket('udp4');
  s.bind(0, '127.0.0.1');
  await once(s, 'listening');
  const port = s.address().port;
  s.close();
  return port;
}

/** Whether something is bound to UDP 127.0.0.1:port (read from /proc/net/udp). */
function udpBound(port: number): boolean {
  const hex = `0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  return readFileSync('/proc/net/udp', 'utf8').includes(hex);
}

/** Starts ngtcp2's HTTP/3 server on 127.0.0.1 serving /who (its name) and /big (1 MB of its own). */
export async function startQuicServer(name: string): Promise<QuicServer> {
  requireNgtcp2();
  const { key, cert } = certificate();
  const docs = mkdtempSync(join(tmpdir(), `sluice-quic-${name}-`));
  mkdirSync(docs, { recursive: true });
  writeFileSync(join(docs, 'who'), name);
  const big = Buffer.alloc(1024 * 1024);
  for (let i = 0; i < big.length; i += 4) big.writeUInt32BE((Math.random() * 2 ** 32) >>> 0, i);
  writeFileSync(join(docs, 'big'), big);
  for (let attempt = 0; ; attempt++) {
    const port = await freeUdpPort();
    const child = spawn(SERVER, ['-q', '-d', docs, '127.0.0.1', String(port), key, cert], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
    const started = Date.now();
    while (!udpBound(port) && child.exitCode === null && Date.now() - started < 5000)
      await new Promise((r) => setTimeout(r, 20));
    if (child.exitCode === null && udpBound(port)) {
      return { name, port, address: `127.0.0.1:${port}`, big, close: () => stop(child) };
    }
    await stop(child);
    if (attempt >= 2) throw new Error(`${SERVER} did not start on port ${port}: ${stderr.trim()}`);
  }
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGKILL');
  await once(child, 'exit');
}

export interface ClientRun {
  readonly code: number | null;
  /** The client's log (stderr and stdout), packet and frame lines included. */
  readonly log: string;
  /** Files it downloaded, by name. */
  readonly files: Map<string, Buffer>;
}

/**
 * Runs ngtcp2's HTTP/3 client against 127.0.0.1:port for `paths` and waits for it to exit
 * (killed after `timeoutMs`). `args` go before the host (e.g. `--nat-rebinding`).
 */
export async function runQuicClient(
  port: number,
  paths: readonly string[],
  args: readonly string[] = [],
  timeoutMs = 20_000,
): Promise<ClientRun> {
  requireNgtcp2();
  const dir = mkdtempSync(join(tmpdir(), 'sluice-quic-dl-'));
  const child = spawn(
    CLIENT,
    [
      '--exit-on-all-streams-close',
      '--no-quic-dump',
      '--no-http-dump',
      '--timeout=5s',
      '--download',
      dir,
      ...args,
      '127.0.0.1',
      String(port),
      ...paths.map((p) => `https://localhost${p}`),
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let log = '';
  child.stdout?.on('data', (c: Buffer) => (log += c.toString()));
  child.stderr?.on('data', (c: Buffer) => (log += c.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const [code] = (await once(child, 'exit')) as [number | null];
  clearTimeout(timer);
  const files = new Map<string, Buffer>();
  for (const p of paths) {
    const file = p.slice(p.lastIndexOf('/') + 1);
    try {
      files.set(file, readFileSync(join(dir, file)));
    } catch {
      // not downloaded
    }
  }
  return { code, log, files };
}

/** The Destination Connection IDs of the 1-RTT packets the client sent, in order, without repeats. */
export function oneRttDcids(log: string): string[] {
  const out: string[] = [];
  for (const m of log.matchAll(/pkt tx pkn=\d+ dcid=0x([0-9a-f]+) type=1RTT/g)) {
    const dcid = m[1] ?? '';
    if (out.at(-1) !== dcid) out.push(dcid);
  }
  return out;
}
