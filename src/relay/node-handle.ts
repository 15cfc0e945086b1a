import type dgram from 'node:dgram';
import type net from 'node:net';

/*
 * The one place that reads Node's private handles. The splice relay works on descriptors, and
 * Node exposes none: a net.Socket or net.Server keeps its libuv handle in `_handle`, a
 * dgram.Socket in the `handle` of a symbol-keyed state object. Every read is checked, so a
 * Node that changes these shapes makes sluice fall back to Node's own I/O, not crash.
 */

interface Handle {
  readonly fd?: unknown;
  readonly recvStop?: unknown;
}

function isHandle(v: unknown): v is Handle {
  return typeof v === 'object' && v !== null;
}

function fdOfHandle(h: unknown): number | undefined {
  return isHandle(h) && typeof h.fd === 'number' && h.fd >= 0 ? h.fd : undefined;
}

/** The descriptor of a connected net.Socket or a listening net.Server; undefined when it has none. */
export function streamFd(s: net.Socket | net.Server): number | undefined {
  return fdOfHandle((s as unknown as { _handle?: unknown })._handle);
}

/**
 * The descriptor of a bound dgram.Socket and a function that stops Node reading it (the relay
 * reads it instead); undefined when this Node keeps either elsewhere.
 */
export function datagramFd(s: dgram.Socket): { fd: number; stopReading: () => void } | undefined {
  const key = Object.getOwnPropertySymbols(s).find((k) => k.description === 'state symbol');
  const state: unknown = key === undefined ? undefined : (s as unknown as Record<symbol, unknown>)[key];
  const handle: unknown = isHandle(state) ? (state as { handle?: unknown }).handle : undefined;
  const fd = fdOfHandle(handle);
  if (fd === undefined || !isHandle(handle) || typeof handle.recvStop !== 'function') return undefined;
  const recvStop = handle.recvStop as () => number;
  return { fd, stopReading: () => void recvStop.call(handle) };
}
