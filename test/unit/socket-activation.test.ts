import { endianness } from 'node:os';
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { PassedSockets, describeFd, parseProcAddress } from '../../src/lifecycle/socket-activation.js';
import type { PassedSocket } from '../../src/lifecycle/socket-activation.js';
import { parseToWorker } from '../../src/lifecycle/worker-protocol.js';

const LISTENER = `listeners: [{ name: l, bind: "0.0.0.0:443", pool: p }]
pools: [{ name: p, health: { active: { type: none } }, backends: [{ address: "127.0.0.1:7001" }] }]
`;

const LE = endianness() === 'LE';

describe('parseProcAddress (/proc/net/tcp and tcp6 local addresses)', () => {
  it.runIf(LE)('reads IPv4 in host byte order and the port in hex', () => {
    expect(parseProcAddress('0100007F:1F90')).toEqual({ host: '127.0.0.1', port: 8080 });
    expect(parseProcAddress('00000000:01BB')).toEqual({ host: '0.0.0.0', port: 443 });
  });

  it.runIf(LE)('reads IPv6 as four host-order words', () => {
    expect(parseProcAddress('00000000000000000000000001000000:0035')).toEqual({
      host: '0:0:0:0:0:0:0:1',
      port: 53,
    });
    expect(parseProcAddress('0000000000000000FFFF00000100007F:1F90').host).toBe('0:0:0:0:0:ffff:7f00:1');
  });
});

describe('describeFd', () => {
  const tcp = [
    '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode',
    '   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0',
    '   1: 0100007F:1F91 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0',
  ].join('\n');
  const udp = [
    '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops',
    '  7: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 5151 2 0 0',
  ].join('\n');
  const read = (path: string): string => {
    if (path === '/proc/net/tcp') return tcp;
    if (path === '/proc/net/udp') return udp;
    throw new Error('ENOENT');
  };
  const link = (inode: string) => (): string => inode;

  it.runIf(LE)('finds a listening TCP socket and a UDP socket by inode', () => {
    expect(describeFd(3, read, link('socket:[4242]'))).toEqual({
      fd: 3,
      protocol: 'tcp',
      host: '127.0.0.1',
      port: 8080,
    });
    expect(describeFd(4, read, link('socket:[5151]'))).toEqual({
      fd: 4,
      protocol: 'udp',
      host: '0.0.0.0',
      port: 53,
    });
  });

  it('calls a connected TCP socket, a file or a closed descriptor "other"', () => {
    expect(describeFd(3, read, link('socket:[4343]')).protocol).toBe('other');
    expect(describeFd(3, read, link('/dev/null')).protocol).toBe('other');
    const closed = (): string => {
      throw new Error('EBADF');
    };
    expect(describeFd(3, read, closed).protocol).toBe('other');
  });
});

describe('PassedSockets', () => {
  const listener = (bind: string, protocol = 'tcp') =>
    parseConfigText(`listeners: [{ name: l, protocol: ${protocol}, bind: "${bind}", pool: p }]
pools: [{ name: p, health: { active: { type: none } }, backends: [{ address: "127.0.0.1:7001" }] }]
`).listeners[0]!;
  const sock = (
    fd: number,
    host: string,
    port: number,
    protocol: PassedSocket['protocol'] = 'tcp',
  ): PassedSocket => ({
    fd,
    protocol,
    host,
    port,
  });

  it('reads LISTEN_FDS descriptors from 3 when LISTEN_PID is this process, and clears the variables', () => {
    const env: NodeJS.ProcessEnv = {
      LISTEN_PID: '100',
      LISTEN_FDS: '2',
      LISTEN_FDNAMES: 'a:b',
      PATH: '/bin',
    };
    const seen: number[] = [];
    const passed = PassedSockets.fromEnv(env, 100, (fd) => (seen.push(fd), sock(fd, '127.0.0.1', 8000 + fd)));
    expect(seen).toEqual([3, 4]);
    expect(passed.all.map((s) => s.fd)).toEqual([3, 4]);
    expect(env).toEqual({ PATH: '/bin' });
  });

  it('ignores sockets meant for another process (LISTEN_PID), but still clears the variables', () => {
    const env: NodeJS.ProcessEnv = { LISTEN_PID: '99', LISTEN_FDS: '1' };
    expect(PassedSockets.fromEnv(env, 100, () => sock(3, '127.0.0.1', 80)).all).toEqual([]);
    expect(env).toEqual({});
    expect(PassedSockets.fromEnv({}, 100).all).toEqual([]);
  });

  it('gives each socket to the first listener with its protocol and address, once', () => {
    const passed = new PassedSockets([sock(3, '127.0.0.1', 443), sock(4, '0:0:0:0:0:0:0:1', 443)]);
    expect(passed.take(listener('127.0.0.1:80'))).toBeUndefined();
    expect(passed.take(listener('127.0.0.2:443'))).toBeUndefined();
    expect(passed.take(listener('[::1]:443'))).toBe(4);
    expect(passed.take(listener('127.0.0.1:443'))).toBe(3);
    expect(passed.take(listener('127.0.0.1:443'))).toBeUndefined();
    expect(passed.has(listener('[::1]:443'))).toBe(false);
  });

  it('takes 0.0.0.0 and :: for one another (a dual-stack socket serves IPv4 too)', () => {
    expect(new PassedSockets([sock(3, '0:0:0:0:0:0:0:0', 443)]).take(listener('0.0.0.0:443'))).toBe(3);
    expect(new PassedSockets([sock(3, '0.0.0.0', 443)]).take(listener('[::]:443'))).toBe(3);
  });

  it('gives TCP listeners TCP sockets only, and lists what no listener adopts', () => {
    const passed = new PassedSockets([
      sock(3, '127.0.0.1', 53, 'udp'),
      sock(4, '', 0, 'other'),
      sock(5, '127.0.0.1', 443),
    ]);
    const udp = listener('127.0.0.1:53', 'udp');
    expect(passed.take(listener('127.0.0.1:53'))).toBeUndefined();
    expect(passed.take(udp)).toBeUndefined(); // Node cannot adopt a datagram socket
    expect(passed.unadopted([udp, listener('127.0.0.1:443')])).toEqual([
      'udp 127.0.0.1:53 (descriptor 3)',
      'descriptor 4 is not a listening TCP or UDP socket',
    ]);
    expect(passed.unadopted([])).toHaveLength(3);
  });
});

describe('passed sockets for workers', () => {
  const tcp = (fd: number, port: number): PassedSocket => ({ fd, protocol: 'tcp', host: '0.0.0.0', port });

  it('puts them after the IPC channel, from descriptor 4, with the primary descriptors as fork stdio', () => {
    const passed = new PassedSockets([tcp(3, 443), tcp(4, 80)]);
    passed.take(parseConfigText(LISTENER).listeners[0]!); // taken or not, every worker gets all
    expect(passed.forWorkers()).toEqual({ passed: [tcp(4, 443), tcp(5, 80)], stdio: [3, 4] });
  });

  it('travel in the start message, checked like the rest of it', () => {
    const start = { t: 'start', text: 'x', index: 1, workers: 2, admin: '127.0.0.1:9090' };
    expect(parseToWorker({ ...start, passed: [tcp(4, 443)] })).toEqual({ ...start, passed: [tcp(4, 443)] });
    expect(parseToWorker({ ...start, passed: [] })).toEqual({ ...start, passed: [] });
    expect(parseToWorker(start)).toBeUndefined();
    expect(parseToWorker({ ...start, passed: [{ ...tcp(4, 443), fd: '4' }] })).toBeUndefined();
    expect(parseToWorker({ ...start, passed: [{ ...tcp(4, 443), protocol: 'sctp' }] })).toBeUndefined();
  });
});
