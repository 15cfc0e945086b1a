import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import dgram from 'node:dgram';
import { once } from 'node:events';
import net from 'node:net';
import { requireBinary } from './nginx.js';

/** A dnsmasq the test started: answers `name` with `address` on 127.0.0.1:port (UDP). */
export interface Dnsmasq {
  readonly port: number;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

/** A port free for both UDP and TCP on 127.0.0.1 (dnsmasq listens on both). */
async function freeDnsPort(): Promise<number> {
  for (;;) {
    const tcp = net.createServer().listen(0, '127.0.0.1');
    await once(tcp, 'listening');
    const port = (tcp.address() as net.AddressInfo).port;
    const udp = dgram.createSocket('udp4');
    const ok = await new Promise<boolean>((resolve) => {
      udp.once('error', () => resolve(false));
      udp.bind(port, '127.0.0.1', () => resolve(true));
    });
    if (ok) udp.close();
    tcp.close();
    if (ok) return port;
  }
}

/** Starts a real DNS server (Debian's dnsmasq, in the foreground, no upstreams, no files). */
export async function startDnsmasq(name: string, address: string): Promise<Dnsmasq> {
  const bin = requireBinary('dnsmasq', 'dnsmasq-base');
  const port = await freeDnsPort();
  const child: ChildProcess = spawn(
    bin,
    [
      '--keep-in-foreground',
      `--port=${port}`,
      '--listen-address=127.0.0.1',
      '--bind-interfaces',
      '--no-resolv',
      '--no-hosts',
      '--conf-file=/dev/null',
      '--pid-file=',
      '--user=root',
      '--log-facility=-',
      `--address=/${name}/${address}`,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let log = '';
  child.stderr?.on('data', (d: Buffer) => (log += d.toString()));
  const exited = once(child, 'exit');
  // Ready once it answers.
  const probe = dgram.createSocket('udp4');
  probe.on('error', () => undefined);
  try {
    for (let i = 0; ; i++) {
      if (child.exitCode !== null) throw new Error(`dnsmasq exited: ${log.trim()}`);
      probe.send(dnsQuery(1, name), port, '127.0.0.1');
      const answered = await Promise.race([
        once(probe, 'message').then(() => true),
        new Promise<boolean>((r) => setTimeout(() => r(false), 100)),
      ]);
      if (answered) break;
      if (i > 50) throw new Error(`dnsmasq did not answer on port ${port}: ${log.trim()}`);
    }
  } finally {
    probe.close();
  }
  return {
    port,
    kill: async (signal = 'SIGKILL') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      await exited;
    },
  };
}

/** A DNS query for `name`, type A, class IN, recursion desired, with transaction `id`. */
export function dnsQuery(id: number, name: string): Buffer {
  const labels = name.split('.').map((l) => Buffer.concat([Buffer.of(l.length), Buffer.from(l, 'ascii')]));
  const header = Buffer.alloc(12);
  header.writeUInt16BE(id & 0xffff, 0);
  header.writeUInt16BE(0x0100, 2);
  header.writeUInt16BE(1, 4);
  return Buffer.concat([header, ...labels, Buffer.of(0, 0, 1, 0, 1)]);
}

/** The transaction id of a DNS answer with no error, or undefined. */
export function answeredId(reply: Buffer): number | undefined {
  if (reply.length < 12 || (reply[2]! & 0x80) === 0 || (reply[3]! & 0x0f) !== 0) return undefined;
  return reply.readUInt16BE(0);
}
