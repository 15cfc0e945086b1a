import type { HashKey, PickContext } from './picker.js';

/*
 * MurmurHash3 (x86, 32-bit) over the UTF-8 bytes of a string, fed one byte at a time so a key can
 * be hashed straight from its parts (ip, ':', port) without building a string or a Buffer.
 * Everything is 32-bit integer arithmetic (Math.imul, shifts), so the result is the same in every
 * process on every platform: replicas agree on where a client goes.
 */

const C1 = 0xcc9e2d51;
const C2 = 0x1b873593;

// One hashing run's state. Hashing is synchronous and never re-entered, so a single module-level
// state serves every call and a pick allocates nothing.
let h = 0;
let block = 0;
let blockBytes = 0;
let length = 0;

function begin(seed: number): void {
  h = seed >>> 0;
  block = 0;
  blockBytes = 0;
  length = 0;
}

function scramble(k: number): number {
  const k1 = Math.imul(k, C1);
  return Math.imul((k1 << 15) | (k1 >>> 17), C2);
}

function pushByte(b: number): void {
  block |= b << (blockBytes << 3);
  length++;
  if (++blockBytes < 4) return;
  h ^= scramble(block);
  h = (h << 13) | (h >>> 19);
  h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  block = 0;
  blockBytes = 0;
}

function end(): number {
  if (blockBytes > 0) h ^= scramble(block);
  h ^= length;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

function pushCodePoint(cp: number): void {
  if (cp < 0x80) {
    pushByte(cp);
  } else if (cp < 0x800) {
    pushByte(0xc0 | (cp >> 6));
    pushByte(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    pushByte(0xe0 | (cp >> 12));
    pushByte(0x80 | ((cp >> 6) & 0x3f));
    pushByte(0x80 | (cp & 0x3f));
  } else {
    pushByte(0xf0 | (cp >> 18));
    pushByte(0x80 | ((cp >> 12) & 0x3f));
    pushByte(0x80 | ((cp >> 6) & 0x3f));
    pushByte(0x80 | (cp & 0x3f));
  }
}

/**
 * Feeds `s` from `from` as UTF-8, as TextEncoder would encode it (a lone surrogate becomes U+FFFD).
 * With `fold`, ASCII A-Z are hashed as a-z (host names and IPv6 hex digits are case-insensitive).
 */
function pushString(s: string, from: number, fold: boolean): void {
  for (let i = from; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) {
      pushByte(fold && c >= 0x41 && c <= 0x5a ? c | 0x20 : c);
    } else if (c >= 0xd800 && c <= 0xdbff) {
      const next = i + 1 < s.length ? s.charCodeAt(i + 1) : 0;
      if (next >= 0xdc00 && next <= 0xdfff) {
        pushCodePoint(((c - 0xd800) << 10) + (next - 0xdc00) + 0x10000);
        i++;
      } else {
        pushCodePoint(0xfffd);
      }
    } else {
      pushCodePoint(c >= 0xdc00 && c <= 0xdfff ? 0xfffd : c);
    }
  }
}

/** Feeds a non-negative integer as its decimal digits, as `String(n)` spells it. */
function pushDecimal(n: number): void {
  let div = 1;
  while (div * 10 <= n) div *= 10;
  for (; div >= 1; div = Math.floor(div / 10)) pushByte(0x30 + (Math.floor(n / div) % 10));
}

/** MurmurHash3 x86 32-bit of the UTF-8 bytes of `s`; an unsigned 32-bit integer. */
export function murmur3(s: string, seed = 0): number {
  begin(seed);
  pushString(s, 0, false);
  return end();
}

/** MurmurHash3 x86 32-bit of bytes[start, stop): the same value in every process and platform. */
export function murmur3Bytes(bytes: Uint8Array, start: number, stop: number, seed = 0): number {
  begin(seed);
  for (let i = start; i < stop; i++) pushByte(bytes[i] ?? 0);
  return end();
}

/** `murmur3(`${address}#${index}`)` without building the string: a ring-hash point. */
export function hashPoint(address: string, index: number, seed = 0): number {
  begin(seed);
  pushString(address, 0, false);
  pushByte(0x23);
  pushDecimal(index);
  return end();
}

/**
 * Writes hashPoint(address, i) for i in [0, count) to out[at + i]. The address bytes are hashed
 * once and the state after them reused for every point: a ring of a million points is built
 * several times faster than by hashing each `address#i` from the start.
 */
export function hashPoints(address: string, count: number, out: Uint32Array, at: number): void {
  begin(0);
  pushString(address, 0, false);
  const [h0, block0, blockBytes0, length0] = [h, block, blockBytes, length];
  for (let i = 0; i < count; i++) {
    h = h0;
    block = block0;
    blockBytes = blockBytes0;
    length = length0;
    pushByte(0x23);
    pushDecimal(i);
    out[at + i] = end();
  }
}

const MAPPED_V4 = '::ffff:';

/**
 * Where a client address starts once an IPv4-mapped IPv6 prefix is dropped: a dual-stack socket
 * reports `::ffff:10.0.0.1` where an IPv4 socket reports `10.0.0.1`, and both are one client.
 */
function ipStart(ip: string): number {
  return ip.length > MAPPED_V4.length && ip.startsWith(MAPPED_V4) && ip.includes('.') ? MAPPED_V4.length : 0;
}

function usesSni(ctx: PickContext, key: HashKey): ctx is PickContext & { sni: string } {
  return key === 'sni' && ctx.sni !== undefined && ctx.sni.length > 0;
}

/**
 * The canonical key a hashing picker routes on, as a string (for logs and tests; picks use
 * {@link hashContext}, which hashes the same bytes without building it):
 * - `source-ip`: the client IP, lower-case, `::ffff:` dropped from IPv4-mapped addresses;
 * - `source-ip-port`: that IP, `:`, the client port;
 * - `sni`: the SNI host name in lower case; a session without SNI falls back to `source-ip`.
 */
export function hashKey(ctx: PickContext, key: HashKey): string {
  const s = usesSni(ctx, key) ? ctx.sni : ctx.clientIp.slice(ipStart(ctx.clientIp));
  const folded = s.replace(/[A-Z]+/g, (m) => m.toLowerCase());
  return key === 'source-ip-port' ? `${folded}:${ctx.clientPort}` : folded;
}

/**
 * `murmur3(hashKey(ctx, key), seed)`, computed from the context's fields directly: no string is
 * built, nothing is allocated. Deterministic across processes and platforms. A context that
 * carries its own `hash` (a QUIC connection ID's) is routed by that instead.
 */
export function hashContext(ctx: PickContext, key: HashKey, seed = 0): number {
  if (ctx.hash !== undefined) return ctx.hash >>> 0;
  begin(seed);
  if (usesSni(ctx, key)) {
    pushString(ctx.sni, 0, true);
    return end();
  }
  pushString(ctx.clientIp, ipStart(ctx.clientIp), true);
  if (key === 'source-ip-port') {
    pushByte(0x3a);
    pushDecimal(ctx.clientPort);
  }
  return end();
}

/**
 * The targets in address order (UTF-16 code-unit order, not locale order, which can differ between
 * ICU builds). Hashing pickers build from this order so that two processes given the same backends
 * in any order build identical tables.
 */
export function sortedByAddress<T extends { readonly address: string }>(targets: readonly T[]): T[] {
  return [...targets].sort((a, b) => (a.address < b.address ? -1 : a.address > b.address ? 1 : 0));
}

/** Whether some target is not in `exclude`; O(1) unless exclude is as large as the target list. */
export function anyAllowed<T>(targets: readonly T[], exclude: ReadonlySet<T>): boolean {
  if (exclude.size < targets.length) return true;
  for (let i = 0; i < targets.length; i++) {
    const t = targets[i];
    if (t !== undefined && !exclude.has(t)) return true;
  }
  return false;
}
