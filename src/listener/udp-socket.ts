import dgram from 'node:dgram';
import { lookup as dnsLookup } from 'node:dns';
import type { LookupOneOptions } from 'node:dns';
import { isIP } from 'node:net';
import { networkInterfaces } from 'node:os';
import { encodeProxyV2 } from '../protocol/proxy-encode.js';
import type { Logger } from '../telemetry/logger.js';
import { normalizeIp } from '../util/cidr.js';

/* The UDP listener's socket: how it is made and sized, and what it can say about itself. */

/**
 * SO_SNDBUF, and SO_RCVBUF when the splice relay reads the socket; the kernel caps it
 * (net.core.rmem_max) and doubles it. The relay reads in batches of 32 and needs the room.
 */
const SOCKET_BUFFER_BYTES = 4 * 1024 * 1024;

/**
 * SO_RCVBUF when Node reads the socket (`relay: stream`). The queue is time: a 64-byte datagram
 * takes 832 bytes of it, so 4 MiB (8 MiB once doubled) held about 10,000, 200 ms behind at the
 * 50 kpps Node forwards. Under overload that queue stays full: a client that stopped kept
 * reaching its backend for that long (iperf3 took such a late datagram for the next test's
 * stream and failed the test, 2 runs in 4 back to back). 512 KiB holds about 1,260: 25 ms at
 * overload, still a 40 ms stall of the process absorbed at 30 kpps (256 KiB was not).
 */
const STREAM_RECEIVE_BUFFER_BYTES = 512 * 1024;

/** A UDP listener socket of `family`, bound later; SO_REUSEPORT when the workers share the port. */
export function listenerSocket(ipv6: boolean, reusePort: boolean): dgram.Socket {
  return dgram.createSocket({
    type: ipv6 ? 'udp6' : 'udp4',
    ipv6Only: false,
    lookup: literalLookup,
    ...(reusePort ? { reusePort: true } : {}),
  });
}

/** Sizes a bound listener socket's buffers for whoever reads it (the splice relay, or Node). */
export function tuneBuffers(socket: dgram.Socket, relayReads: boolean, logger: Logger): void {
  try {
    socket.setRecvBufferSize(relayReads ? SOCKET_BUFFER_BYTES : STREAM_RECEIVE_BUFFER_BYTES);
    socket.setSendBufferSize(SOCKET_BUFFER_BYTES);
  } catch (err) {
    // A kernel that refuses the size leaves its default: slower under bursts, still correct.
    logger.warn({ code: (err as NodeJS.ErrnoException).code }, 'cannot set UDP socket buffer sizes');
  }
}

/**
 * The PROXY v2 header of a flow from ip:port to the listener bound at boundIp:boundPort: constant
 * for the flow's life, so built once. A wildcard bind cannot tell which local address the client
 * used (Node has no IP_PKTINFO), so it sends the wildcard of the client's family.
 */
export function flowHeader(boundIp: string, boundPort: number, ip: string, port: number): Buffer {
  const wildcard = boundIp === '0.0.0.0' || boundIp === '::';
  const dest = wildcard ? (isIP(ip) === 6 ? '::' : '0.0.0.0') : boundIp;
  const destination = { ip: dest, port: boundPort };
  return encodeProxyV2({ command: 'proxy', transport: 'dgram', source: { ip, port }, destination }).header;
}

/**
 * The listener socket's lookup: replies go to the address a datagram came from, always an IP
 * literal, which Node's default lookup still answers a tick later (one more callback and a
 * closure per reply). This answers literals at once; names (never expected here) go to DNS.
 */
function literalLookup(
  host: string,
  options: LookupOneOptions,
  done: (err: NodeJS.ErrnoException | null, address: string, family: number) => void,
): void {
  const family = isIP(host);
  if (family !== 0) done(null, host, family);
  else dnsLookup(host, options, done);
}

/** The addresses a datagram from ourselves can carry: the bound one, or every local one for a wildcard. */
export function ownAddresses(boundIp: string): Set<string> {
  if (boundIp !== '0.0.0.0' && boundIp !== '::') return new Set([boundIp]);
  const ips = new Set<string>([boundIp]);
  for (const list of Object.values(networkInterfaces()))
    for (const i of list ?? []) ips.add(normalizeIp(i.address));
  return ips;
}
