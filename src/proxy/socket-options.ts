import type net from 'node:net';

/**
 * What each of a session's four stream buffers (the client's and the upstream's, readable and
 * writable) holds before it says "wait" on the stream relay: 16 KiB, as HAProxy's buffers.
 *
 * A write that returns false pauses the other side; a paused socket still takes one more read
 * (up to 64 KiB, libuv's read size) before its readable buffer is past this mark and reading
 * stops. So a direction whose destination does not read holds less than 2 × (16 + 64) KiB in
 * this process, and the rest waits in the kernel and in TCP flow control. While both peers
 * read, the marks do not matter: a socket that flows buffers nothing, and a write the kernel
 * takes at once returns true whatever the mark (the kernel's socket buffers, megabytes when
 * autotuned, are what keeps bulk transfers going).
 */
export const SOCKET_HIGH_WATER_MARK = 16 * 1024;

/**
 * Options of the upstream socket (the listener gives accepted sockets the same mark).
 * net.Socket passes `highWaterMark` to its Duplex, though its type does not list it.
 */
export const UPSTREAM_SOCKET_OPTIONS: net.SocketConstructorOpts & { highWaterMark: number } = {
  highWaterMark: SOCKET_HIGH_WATER_MARK,
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
