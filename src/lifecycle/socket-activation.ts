import { readFileSync, readlinkSync } from 'node:fs';
import { endianness } from 'node:os';
import type { ListenerConfig } from '../config/schema.js';
import { formatHostPort } from '../config/values.js';
import { ipWords } from '../util/cidr.js';

/**
 * Listening sockets passed by systemd socket activation (sd_listen_fds(3)): a `.socket` unit
 * binds the addresses and keeps them open across restarts of the service, which receives them
 * as descriptors 3, 4, … with LISTEN_PID (its own pid) and LISTEN_FDS (how many). A listener
 * whose protocol and bind address match one adopts it instead of binding: connections that
 * arrive while sluice restarts wait in the socket's backlog instead of being refused.
 */
export interface PassedSocket {
  readonly fd: number;
  /** 'tcp' for a listening TCP socket, 'udp' for a UDP one; 'other' for anything else. */
  readonly protocol: 'tcp' | 'udp' | 'other';
  /** Bound address as /proc/net reports it ('' for 'other'). */
  readonly host: string;
  readonly port: number;
}

const FIRST_FD = 3;
/** Where a worker finds them: after its IPC channel (descriptor 3), from 4 on. */
const WORKER_FIRST_FD = 4;
const LISTEN = '0A'; // TCP_LISTEN in /proc/net/tcp's st column

/** One word of /proc/net's address, printed in host byte order, as its four bytes in network order. */
function wordBytes(hex: string): number[] {
  const bytes = [0, 2, 4, 6].map((i) => parseInt(hex.slice(i, i + 2), 16));
  return endianness() === 'LE' ? bytes.reverse() : bytes;
}

/** `0100007F:1F90` (tcp) or a 32-hex-digit address (tcp6) → host and port. */
export function parseProcAddress(text: string): { host: string; port: number } {
  const [hex = '', portHex = ''] = text.split(':');
  const port = parseInt(portHex, 16);
  if (hex.length === 8) return { host: wordBytes(hex).join('.'), port };
  const bytes = [0, 8, 16, 24].flatMap((i) => wordBytes(hex.slice(i, i + 8)));
  const groups = [];
  for (let i = 0; i < 16; i += 2) groups.push((((bytes[i] ?? 0) << 8) | (bytes[i + 1] ?? 0)).toString(16));
  return { host: groups.join(':'), port };
}

/** The socket behind `fd`, from /proc: its inode, then the /proc/net table that lists it. */
export function describeFd(
  fd: number,
  read: (path: string) => string = (p) => readFileSync(p, 'utf8'),
  link: (path: string) => string = readlinkSync,
): PassedSocket {
  let target = '';
  try {
    target = link(`/proc/self/fd/${fd}`);
  } catch {
    /* not open */
  }
  const inode = /^socket:\[(\d+)\]$/.exec(target)?.[1];
  const tables = [
    ['tcp', '/proc/net/tcp'],
    ['tcp', '/proc/net/tcp6'],
    ['udp', '/proc/net/udp'],
    ['udp', '/proc/net/udp6'],
  ] as const;
  for (const [protocol, path] of inode === undefined ? [] : tables) {
    let text: string;
    try {
      text = read(path);
    } catch {
      continue; // no IPv6 on this host
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
      if (f[9] !== inode || (protocol === 'tcp' && f[3] !== LISTEN)) continue;
      return { fd, protocol, ...parseProcAddress(f[1] ?? '') };
    }
  }
  return { fd, protocol: 'other', host: '', port: 0 };
}

/** 0.0.0.0 and :: both mean every address here (a dual-stack :: socket takes IPv4 too). */
function isWildcard(words: readonly number[]): boolean {
  return words[0] === 0 && words[1] === 0 && (words[2] === 0 || words[2] === 0xffff) && words[3] === 0;
}

function sameHost(a: string, b: string): boolean {
  const wa = ipWords(a);
  const wb = ipWords(b);
  if (wa === undefined || wb === undefined) return false;
  return (isWildcard(wa) && isWildcard(wb)) || wa.every((w, i) => w === wb[i]);
}

/** Whether listener `cfg` adopts socket `s`: a TCP listener bound where the socket is. */
function adopts(cfg: ListenerConfig, s: PassedSocket): boolean {
  return (
    cfg.protocol === 'tcp' &&
    s.protocol === 'tcp' &&
    s.port === cfg.bind.port &&
    sameHost(s.host, cfg.bind.host)
  );
}

/** The sockets systemd passed to this process, taken by listeners as they bind. */
export class PassedSockets {
  /** Every socket passed, taken or not. */
  readonly all: readonly PassedSocket[];
  readonly #left: PassedSocket[];

  constructor(sockets: readonly PassedSocket[]) {
    this.all = [...sockets];
    this.#left = [...sockets];
  }

  /**
   * Reads LISTEN_PID / LISTEN_FDS once and removes them (and LISTEN_FDNAMES) from the environment,
   * as sd_listen_fds does, so that no child process takes them for its own. None when LISTEN_PID
   * names another process (they were meant for a parent).
   */
  static fromEnv(
    env: NodeJS.ProcessEnv = process.env,
    pid: number = process.pid,
    describe: (fd: number) => PassedSocket = describeFd,
  ): PassedSockets {
    const forUs = env.LISTEN_PID === String(pid);
    const n = Number(env.LISTEN_FDS);
    delete env.LISTEN_PID;
    delete env.LISTEN_FDS;
    delete env.LISTEN_FDNAMES;
    if (!forUs || !Number.isInteger(n) || n <= 0) return new PassedSockets([]);
    return new PassedSockets(Array.from({ length: n }, (_, i) => describe(FIRST_FD + i)));
  }

  /** Whether one of the sockets not yet taken is for `cfg` (a TCP listener on its address). */
  has(cfg: ListenerConfig): boolean {
    return this.#find(cfg) >= 0;
  }

  /** The descriptor of the passed socket for `cfg` (a TCP listener on its address), once; or undefined. */
  take(cfg: ListenerConfig): number | undefined {
    const i = this.#find(cfg);
    if (i < 0) return undefined;
    const [s] = this.#left.splice(i, 1);
    return s?.fd;
  }

  /**
   * For worker processes: every socket as a worker sees it (from descriptor 4, after the IPC
   * channel), and the `stdio` entries of `fork` that put them there. All workers share each
   * socket: the kernel queues its connections once, and whichever worker is free accepts them.
   */
  forWorkers(): { passed: PassedSocket[]; stdio: number[] } {
    return {
      passed: this.all.map((s, k) => ({ ...s, fd: WORKER_FIRST_FD + k })),
      stdio: this.all.map((s) => s.fd),
    };
  }

  #find(cfg: ListenerConfig): number {
    return this.#left.findIndex((s) => adopts(cfg, s));
  }

  /** The sockets that none of `listeners` adopts, as one line each for the log. */
  unadopted(listeners: readonly ListenerConfig[]): string[] {
    const left = this.all.filter((s) => !listeners.some((l) => adopts(l, s)));
    return left.map((s) =>
      s.protocol === 'other'
        ? `descriptor ${s.fd} is not a listening TCP or UDP socket`
        : `${s.protocol} ${formatHostPort(s.host, s.port)} (descriptor ${s.fd})`,
    );
  }
}
