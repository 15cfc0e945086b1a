import net from 'node:net';
import { sniffProxySignature } from '../protocol/proxy-parse.js';
import type { Session } from './session.js';

/*
 * The net.Socket side of a session (Node streams): socket options, the tag that hangs a session
 * off its sockets, and the shared event handlers (one function per event for every session, so
 * a session costs no closures). The splice relay needs none of this once it carries a session.
 */

/** What net.Socket keeps in `_handle` that the hand-off to the splice relay uses. */
interface StreamHandle {
  readonly fd: number;
}

export function handleOf(socket: net.Socket): StreamHandle | undefined {
  const handle = (socket as unknown as { _handle?: StreamHandle | null })._handle;
  return handle === null || handle === undefined || typeof handle.fd !== 'number' || handle.fd < 0
    ? undefined
    : handle;
}

export const kSession = Symbol('sluice.session');
export type Tagged = net.Socket & { [kSession]?: Session | undefined };

/**
 * Both legs buffer up to 256 KiB before a write says "wait" (the listener sets the same on
 * accepted sockets): with the 64 KiB default, every 64 KiB read would pause and resume the other
 * side. net.Socket passes `highWaterMark` to its Duplex, though its type does not list it.
 */
export const UPSTREAM_SOCKET_OPTIONS: net.SocketConstructorOpts & { highWaterMark: number } = {
  highWaterMark: 256 * 1024,
  allowHalfOpen: true,
  noDelay: true,
  // No SO_KEEPALIVE: timeouts.idle reaps dead peers, and the setsockopt calls cost about a sixth
  // of the CPU per connection (bench connrate: 150 → 125 CPU-ms per 1k connections).
  keepAlive: false,
};
/** A client accepted by the splice relay and then given to Node streams (preface, fallback). */
export const CLIENT_SOCKET_OPTIONS = {
  ...UPSTREAM_SOCKET_OPTIONS,
  readable: true,
  writable: true,
  // Not read until the session resumes it, as with the listener's pauseOnConnect.
  pauseOnCreate: true,
} as net.SocketConstructorOpts;

/** What `down` answers once the client's descriptor went to the splice relay. */
export const CLOSED_SOCKET = new net.Socket() as Tagged;
CLOSED_SOCKET.destroy();

function sessionOf(socket: Tagged): Session | undefined {
  return socket[kSession];
}

export function onDownData(this: Tagged, chunk: Buffer): void {
  const s = sessionOf(this);
  if (s === undefined) return;
  if (s.guardProxySignature) {
    s.guardProxySignature = false;
    const sniff = sniffProxySignature(chunk);
    if (sniff === 'v1' || sniff === 'v2') {
      s.host.untrustedHeader(s, chunk);
      return;
    }
  }
  const up = s.up;
  if (up !== undefined && !up.write(chunk)) this.pause();
}

export function onUpData(this: Tagged, chunk: Buffer): void {
  const s = sessionOf(this);
  if (s === undefined) return;
  s.sawUpstreamData();
  if (!s.down.write(chunk)) this.pause();
}

export function onUpDrain(this: Tagged): void {
  const s = sessionOf(this);
  if (s !== undefined && !s.down.readableEnded) s.down.resume();
}

export function onDownDrain(this: Tagged): void {
  const up = sessionOf(this)?.up;
  if (up !== undefined && !up.readableEnded) up.resume();
}

export function onDownEnd(this: Tagged): void {
  sessionOf(this)?.onEnd('down');
}

export function onUpEnd(this: Tagged): void {
  sessionOf(this)?.onEnd('up');
}

export function onUpConnect(this: Tagged): void {
  sessionOf(this)?.onConnected();
}

export function onDownError(this: Tagged, err: NodeJS.ErrnoException): void {
  sessionOf(this)?.onError('down', err);
}

export function onUpError(this: Tagged, err: NodeJS.ErrnoException): void {
  sessionOf(this)?.onError('up', err);
}

export function onSocketClose(this: Tagged): void {
  sessionOf(this)?.onSocketClosed(this);
}
