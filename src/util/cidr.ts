import { isIPv4, isIPv6 } from 'node:net';

/**
 * CIDR sets for ACLs and trusted PROXY sources. Addresses are compared as 128-bit values in four
 * 32-bit words; IPv4 (and IPv4-mapped IPv6, ::ffff:a.b.c.d) live in the ::ffff:0:0/96 range so that
 * one rule list serves both families.
 */
export interface Cidr {
  readonly text: string;
  readonly words: readonly [number, number, number, number];
  readonly bits: number;
}

function v4Words(ip: string): [number, number, number, number] | undefined {
  const parts = ip.split('.');
  if (parts.length !== 4) return undefined;
  let n = 0;
  for (const p of parts) {
    if (!/^\d{1,3}$/.test(p)) return undefined;
    const v = Number(p);
    if (v > 255) return undefined;
    n = n * 256 + v;
  }
  return [0, 0, 0xffff, n >>> 0];
}

function v6Words(ip: string): [number, number, number, number] | undefined {
  let text = ip;
  const zone = text.indexOf('%');
  if (zone >= 0) text = text.slice(0, zone);
  let tail: number[] = [];
  const lastColon = text.lastIndexOf(':');
  if (text.includes('.', lastColon)) {
    const v4 = v4Words(text.slice(lastColon + 1));
    if (!v4) return undefined;
    tail = [v4[3] >>> 16, v4[3] & 0xffff];
    text = text.slice(0, lastColon + 1) + '0:0';
  }
  const halves = text.split('::');
  if (halves.length > 2) return undefined;
  const parse = (s: string): number[] => (s === '' ? [] : s.split(':').map((h) => parseInt(h, 16)));
  const head = parse(halves[0] ?? '');
  const rest = halves.length === 2 ? parse(halves[1] ?? '') : [];
  const fill = 8 - head.length - rest.length;
  if (fill < 0 || (halves.length === 1 && fill !== 0)) return undefined;
  const groups = [...head, ...new Array<number>(fill).fill(0), ...rest];
  if (tail.length === 2) {
    groups[6] = tail[0] ?? 0;
    groups[7] = tail[1] ?? 0;
  }
  if (groups.some((g) => !Number.isInteger(g) || g < 0 || g > 0xffff)) return undefined;
  const w = (i: number): number => (((groups[i] ?? 0) << 16) | (groups[i + 1] ?? 0)) >>> 0;
  return [w(0), w(2), w(4), w(6)];
}

/** Parses an IP literal into 128-bit words (IPv4 as ::ffff:a.b.c.d), or undefined. */
export function ipWords(ip: string): [number, number, number, number] | undefined {
  if (isIPv4(ip)) return v4Words(ip);
  if (isIPv6(ip)) return v6Words(ip);
  return undefined;
}

/** `10.0.0.0/8`, `::/0`, or a bare address (a /32 or /128). */
export function parseCidr(text: string): Cidr | undefined {
  const slash = text.indexOf('/');
  const ip = slash < 0 ? text : text.slice(0, slash);
  const words = ipWords(ip);
  if (!words) return undefined;
  const v4 = isIPv4(ip);
  const max = v4 ? 32 : 128;
  let bits = max;
  if (slash >= 0) {
    const b = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(b)) return undefined;
    bits = Number(b);
    if (bits > max) return undefined;
  }
  if (v4) bits += 96;
  return { text, words: maskWords(words, bits), bits };
}

function maskWords(w: readonly number[], bits: number): [number, number, number, number] {
  const out: [number, number, number, number] = [0, 0, 0, 0];
  for (let i = 0; i < 4; i++) {
    const b = Math.max(0, Math.min(32, bits - i * 32));
    const mask = b === 0 ? 0 : b === 32 ? 0xffffffff : (0xffffffff << (32 - b)) >>> 0;
    out[i] = ((w[i] ?? 0) & mask) >>> 0;
  }
  return out;
}

function contains(c: Cidr, w: readonly [number, number, number, number]): boolean {
  for (let i = 0; i < 4; i++) {
    const b = Math.max(0, Math.min(32, c.bits - i * 32));
    if (b === 0) return true;
    const mask = b === 32 ? 0xffffffff : (0xffffffff << (32 - b)) >>> 0;
    if (((w[i] ?? 0) & mask) >>> 0 !== c.words[i]) return false;
    if (b < 32) return true;
  }
  return true;
}

/** An immutable list of CIDRs; `has` is linear in the list, which stays short in practice. */
export class CidrSet {
  readonly #cidrs: readonly Cidr[];

  constructor(cidrs: readonly Cidr[]) {
    this.#cidrs = cidrs;
  }

  static parse(texts: readonly string[]): CidrSet {
    return new CidrSet(texts.map((t) => parseCidr(t)).filter((c): c is Cidr => c !== undefined));
  }

  get size(): number {
    return this.#cidrs.length;
  }

  /**
   * True when every address is inside: `::/0` is in the list (IPv4 lives in ::ffff:0:0/96, so
   * it covers IPv4 too). Lets a listener with the default allow list skip the lookup.
   */
  get coversAll(): boolean {
    return this.#cidrs.some((c) => c.bits === 0);
  }

  /** True when `ip` (any textual form, v4-mapped included) is inside one of the CIDRs. */
  has(ip: string): boolean {
    if (this.#cidrs.length === 0) return false;
    const w = ipWords(ip);
    if (!w) return false;
    for (const c of this.#cidrs) if (contains(c, w)) return true;
    return false;
  }
}

/** `::ffff:1.2.3.4` → `1.2.3.4`; anything else unchanged. */
export function normalizeIp(ip: string): string {
  return ip.startsWith('::ffff:') && isIPv4(ip.slice(7)) ? ip.slice(7) : ip;
}

const LOOPBACK = CidrSet.parse(['127.0.0.0/8', '::1/128']);

/**
 * True for a bind address only this host can reach: 127.0.0.0/8, ::1 (v4-mapped forms too), or
 * the name `localhost`. Any other name may resolve to an address the network reaches.
 */
export function isLoopbackHost(host: string): boolean {
  return /^localhost\.?$/i.test(host) || LOOPBACK.has(host);
}
