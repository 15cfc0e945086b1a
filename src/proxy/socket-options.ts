import type net from 'node:net';

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
