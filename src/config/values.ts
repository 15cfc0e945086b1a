import { isIP } from 'node:net';

/** Parsers for the value types of the config file. Each returns the value or an error message. */
export type Parsed<T> = { ok: true; value: T } | { ok: false; error: string };

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
const DURATION_RE = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/;

/** `250ms`, `5s`, `2m`, `1h`, or an integer number of milliseconds. */
export function parseDuration(input: unknown): Parsed<number> {
  if (typeof input === 'number') {
    if (Number.isInteger(input) && input >= 0) return { ok: true, value: input };
    return { ok: false, error: 'expected a duration such as 250ms, 5s, 2m, 1h or whole milliseconds' };
  }
  if (typeof input === 'string') {
    const m = DURATION_RE.exec(input.trim());
    const unit = m?.[2];
    if (m && unit !== undefined) {
      const ms = Number(m[1]) * (UNIT_MS[unit] ?? 1);
      if (Number.isFinite(ms) && Number.isInteger(ms)) return { ok: true, value: ms };
    }
  }
  return { ok: false, error: 'expected a duration such as 250ms, 5s, 2m, 1h or whole milliseconds' };
}

export interface HostPort {
  /** IP literal or host name, without brackets. */
  readonly host: string;
  readonly port: number;
}

const HOSTNAME_RE =
  /^(?=.{1,253}$)([a-zA-Z0-9_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9_])?)(\.[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9_])?)*\.?$/;

/** `host:port` or `[v6]:port`. Port 0 is allowed only where `allowZeroPort` (listeners: pick a free port). */
export function parseHostPort(input: unknown, allowZeroPort = false): Parsed<HostPort> {
  const bad: Parsed<HostPort> = { ok: false, error: 'expected host:port (IPv6 as [::1]:port)' };
  if (typeof input !== 'string') return bad;
  let host: string;
  let portText: string;
  if (input.startsWith('[')) {
    const close = input.indexOf(']');
    if (close < 0 || input[close + 1] !== ':') return bad;
    host = input.slice(1, close);
    portText = input.slice(close + 2);
    if (isIP(host) !== 6) return { ok: false, error: `"${host}" is not an IPv6 address` };
  } else {
    const colon = input.lastIndexOf(':');
    if (colon <= 0) return bad;
    host = input.slice(0, colon);
    portText = input.slice(colon + 1);
    if (host.includes(':')) return { ok: false, error: 'IPv6 addresses need brackets: [::1]:port' };
    if (isIP(host) === 0 && !HOSTNAME_RE.test(host))
      return { ok: false, error: `"${host}" is not a host name or IP` };
  }
  if (!/^\d{1,5}$/.test(portText)) return bad;
  const port = Number(portText);
  if (port > 65535 || (port === 0 && !allowZeroPort))
    return { ok: false, error: `port ${port} is out of range` };
  return { ok: true, value: { host, port } };
}

/** Canonical `host:port` text: IPv6 in brackets. */
export function formatHostPort(host: string, port: number): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}

const SIZE_UNIT: Record<string, number> = {
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  kib: 1024,
  mib: 1024 ** 2,
  gib: 1024 ** 3,
};
const SIZE_RE = /^(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|kib|mib|gib)$/i;

/** `512MiB`, `1.5GB`, `800kb`, or an integer number of bytes. */
export function parseSize(input: unknown): Parsed<number> {
  const error = 'expected a size such as 512MiB, 2GB or whole bytes';
  if (typeof input === 'number')
    return Number.isInteger(input) && input >= 0 ? { ok: true, value: input } : { ok: false, error };
  if (typeof input !== 'string') return { ok: false, error };
  const m = SIZE_RE.exec(input.trim());
  const unit = SIZE_UNIT[(m?.[2] ?? '').toLowerCase()];
  if (m === null || unit === undefined) return { ok: false, error };
  return { ok: true, value: Math.round(Number(m[1]) * unit) };
}
