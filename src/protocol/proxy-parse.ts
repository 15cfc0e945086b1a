/**
 * PROXY protocol v1/v2 header parser, receiver side (haproxy doc/proxy-protocol.txt).
 *
 * Pure and incremental: the caller passes every byte received so far and the parser re-examines
 * them from the start (a header is at most 107 bytes for v1 and the caller's cap for v2), so no
 * state is kept between calls. It never throws, never reads past the header it reports, and
 * answers as early as the bytes allow: a wrong signature, version, command or family is rejected
 * on the byte that shows it, and an oversized `len` before its bytes arrive.
 */
import { CRC32C_INIT, crc32cFinish, crc32cUpdate, crc32cZeros } from './crc32c.js';

/** An IP address (IPv4 dotted quad or RFC 5952 IPv6 text) and a port. */
export interface ProxyAddress {
  readonly ip: string;
  readonly port: number;
}

/** One v2 TLV; `value` is a private copy, it does not pin the caller's buffer. */
export interface Tlv {
  readonly type: number;
  readonly value: Buffer;
}

/** A complete, validated PROXY header. */
export interface ProxyHeader {
  readonly version: 1 | 2;
  /** 'local' for v2 LOCAL and v1 UNKNOWN: the caller uses the socket's own addresses. */
  readonly command: 'proxy' | 'local';
  readonly transport: 'stream' | 'dgram' | 'unspec';
  /** As on the wire (v2), even for LOCAL where it carries no meaning; 'unspec' for v1 UNKNOWN. */
  readonly family: 'inet' | 'inet6' | 'unix' | 'unspec';
  /** Set only for PROXY over inet/inet6 with a stream or dgram transport. */
  readonly source: ProxyAddress | undefined;
  readonly destination: ProxyAddress | undefined;
  /** v2 TLVs in wire order, unknown types and duplicates included; always [] for v1. */
  readonly tlvs: readonly Tlv[];
}

/** Machine-readable reasons for an invalid header (usable as a metric label). */
export type ProxyInvalidReason =
  | 'not_proxy'
  | 'v1_too_long'
  | 'v1_bad_line'
  | 'v1_bad_protocol'
  | 'v1_bad_fields'
  | 'v1_bad_address'
  | 'v1_bad_port'
  | 'v2_bad_version'
  | 'v2_bad_command'
  | 'v2_bad_family'
  | 'v2_bad_transport'
  | 'v2_short_address'
  | 'v2_too_long'
  | 'v2_bad_tlv'
  | 'v2_bad_crc';

/** Outcome of {@link parseProxyHeader}. `length` counts header bytes; what follows is payload. */
export type ProxyParseResult =
  | { readonly kind: 'need-more' }
  | { readonly kind: 'invalid'; readonly reason: ProxyInvalidReason }
  | { readonly kind: 'done'; readonly header: ProxyHeader; readonly length: number };

/** Registered PP2 TLV types (proxy-protocol.txt §2.2, plus AWS's 0xEA). */
export const PP2_TYPE = {
  ALPN: 0x01,
  AUTHORITY: 0x02,
  CRC32C: 0x03,
  NOOP: 0x04,
  UNIQUE_ID: 0x05,
  SSL: 0x20,
  NETNS: 0x30,
  AWS: 0xea,
} as const;

/** Longest v1 line, CRLF included ("PROXY UNKNOWN" with two full IPv6 addresses). */
export const PROXY_V1_MAX_BYTES = 107;
/** Size of the v2 fixed part: signature, ver_cmd, fam, len. */
export const PROXY_V2_FIXED_BYTES = 16;
/** v2 signature (12 bytes, contains a NUL). */
export const PROXY_V2_SIGNATURE: Buffer = Buffer.from([
  0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
]);
/** v1 signature; the space is part of it because exactly one must follow "PROXY". */
const V1_SIGNATURE = Buffer.from('PROXY ', 'latin1');

const CR = 0x0d;
const LF = 0x0a;
const NEED_MORE = { kind: 'need-more' } as const;
const FAMILIES = ['unspec', 'inet', 'inet6', 'unix'] as const;
const TRANSPORTS = ['unspec', 'stream', 'dgram'] as const;
/** Address block size per family nibble: none, 2*4+2*2, 2*16+2*2, 2*108. */
const ADDRESS_BYTES = [0, 12, 36, 216] as const;

function invalid(reason: ProxyInvalidReason): ProxyParseResult {
  return { kind: 'invalid', reason };
}

/** 'full' when buf starts with sig, 'partial' when buf is a strict prefix of sig. */
function compareSignature(buf: Buffer, sig: Buffer): 'full' | 'partial' | 'mismatch' {
  const n = Math.min(buf.length, sig.length);
  if (buf.compare(sig, 0, n, 0, n) !== 0) return 'mismatch';
  return n === sig.length ? 'full' : 'partial';
}

/**
 * Early look at the first bytes, e.g. to refuse a PROXY header from a source that is not trusted
 * (the spec forbids guessing, so such a header must not be taken as payload either).
 *
 * 'v1' once "PROXY " has arrived, 'v2' once the 12-byte v2 signature has arrived, 'need-more'
 * while the bytes so far are a strict prefix of either (or none arrived), 'none' as soon as they
 * cannot be. A lone "P" is therefore 'need-more', not 'v1', so "POST …" is never mistaken.
 */
export function sniffProxySignature(buf: Buffer): 'v1' | 'v2' | 'none' | 'need-more' {
  const v1 = compareSignature(buf, V1_SIGNATURE);
  if (v1 === 'full') return 'v1';
  const v2 = compareSignature(buf, PROXY_V2_SIGNATURE);
  if (v2 === 'full') return 'v2';
  return v1 === 'partial' || v2 === 'partial' ? 'need-more' : 'none';
}

/**
 * Parses a PROXY v1 or v2 header at the start of `buf` (all bytes received so far).
 *
 * - v1: the line must end with CRLF within 107 bytes; exact single spaces; TCP4/TCP6 with
 *   addresses of that family (no leading zeros in IPv4 octets, no IPv6 zone), ports 0–65535
 *   without leading zeros or signs; UNKNOWN ignores the rest of the line and yields 'local'.
 *   Only printable ASCII may precede the CRLF; a lone CR or LF is invalid.
 * - v2: version 2, command LOCAL/PROXY, defined family and transport nibbles; `16 + len` must not
 *   exceed `maxV2Bytes` (checked before waiting for the bytes); PROXY needs `len` to cover the
 *   family's address block. `len` bytes are always consumed. After the address block (for LOCAL:
 *   skipped when `len` covers it, else absent) the rest must be exactly a sequence of TLVs. A
 *   CRC32C TLV must be 4 bytes, unique, and match the header computed with it zeroed.
 *   AF_UNSPEC, AF_UNIX, transport UNSPEC and LOCAL yield undefined addresses. IPv4-mapped IPv6
 *   addresses are reported as given (`::ffff:a.b.c.d`).
 */
export function parseProxyHeader(buf: Buffer, maxV2Bytes: number): ProxyParseResult {
  const first = buf[0];
  if (first === undefined) return NEED_MORE;
  if (first === V1_SIGNATURE[0]) return parseV1(buf);
  if (first === PROXY_V2_SIGNATURE[0]) return parseV2(buf, maxV2Bytes);
  return invalid('not_proxy');
}

// ---- v1 -------------------------------------------------------------------------------------

/** Index of the CR of the terminating CRLF, or a parse result when there is none (yet). */
function findV1LineEnd(buf: Buffer): number | ProxyParseResult {
  const end = Math.min(buf.length, PROXY_V1_MAX_BYTES);
  for (let i = V1_SIGNATURE.length; i < end; i++) {
    const b = buf[i] ?? 0;
    if (b === CR) {
      if (i + 1 >= PROXY_V1_MAX_BYTES) return invalid('v1_too_long');
      const next = buf[i + 1];
      if (next === undefined) return NEED_MORE;
      return next === LF ? i : invalid('v1_bad_line');
    }
    // A bare LF, a control byte or a non-ASCII byte can never be part of a valid line.
    if (b < 0x20 || b > 0x7e) return invalid('v1_bad_line');
  }
  return buf.length >= PROXY_V1_MAX_BYTES ? invalid('v1_too_long') : NEED_MORE;
}

function parseV1(buf: Buffer): ProxyParseResult {
  const sig = compareSignature(buf, V1_SIGNATURE);
  if (sig === 'mismatch') return invalid('not_proxy');
  if (sig === 'partial') return NEED_MORE;
  const lineEnd = findV1LineEnd(buf);
  if (typeof lineEnd !== 'number') return lineEnd;
  return decodeV1Line(buf.toString('latin1', 0, lineEnd), lineEnd + 2);
}

const V1_PORT = /^(?:0|[1-9][0-9]{0,4})$/;

function v1Port(text: string): number | undefined {
  if (!V1_PORT.test(text)) return undefined;
  const port = Number(text);
  return port <= 0xffff ? port : undefined;
}

function v1Address(text: string, inet6: boolean): string | undefined {
  if (!inet6) return ipv4Bytes(text) ? text : undefined;
  const bytes = ipv6Bytes(text);
  return bytes ? formatIpv6(bytes, 0, true) : undefined;
}

function decodeV1Line(line: string, length: number): ProxyParseResult {
  const fields = line.split(' ');
  const protocol = fields[1];
  if (protocol === 'UNKNOWN') {
    const header: ProxyHeader = {
      version: 1,
      command: 'local',
      transport: 'unspec',
      family: 'unspec',
      source: undefined,
      destination: undefined,
      tlvs: [],
    };
    return { kind: 'done', header, length };
  }
  if (protocol !== 'TCP4' && protocol !== 'TCP6') return invalid('v1_bad_protocol');
  if (fields.length !== 6) return invalid('v1_bad_fields');
  const inet6 = protocol === 'TCP6';
  const srcIp = v1Address(fields[2] ?? '', inet6);
  const dstIp = v1Address(fields[3] ?? '', inet6);
  if (srcIp === undefined || dstIp === undefined) return invalid('v1_bad_address');
  const srcPort = v1Port(fields[4] ?? '');
  const dstPort = v1Port(fields[5] ?? '');
  if (srcPort === undefined || dstPort === undefined) return invalid('v1_bad_port');
  const header: ProxyHeader = {
    version: 1,
    command: 'proxy',
    transport: 'stream',
    family: inet6 ? 'inet6' : 'inet',
    source: { ip: srcIp, port: srcPort },
    destination: { ip: dstIp, port: dstPort },
    tlvs: [],
  };
  return { kind: 'done', header, length };
}

// ---- v2 -------------------------------------------------------------------------------------

interface V2Fixed {
  readonly command: number;
  readonly family: number;
  readonly transport: number;
  readonly total: number;
}

/** Validates the 16-byte fixed part byte by byte, so garbage is refused as soon as it shows. */
function parseV2Fixed(buf: Buffer, maxV2Bytes: number): V2Fixed | ProxyParseResult {
  const sig = compareSignature(buf, PROXY_V2_SIGNATURE);
  if (sig === 'mismatch') return invalid('not_proxy');
  if (sig === 'partial') return NEED_MORE;
  const verCmd = buf[12];
  if (verCmd === undefined) return NEED_MORE;
  if (verCmd >> 4 !== 2) return invalid('v2_bad_version');
  const command = verCmd & 0x0f;
  if (command > 1) return invalid('v2_bad_command');
  const fam = buf[13];
  if (fam === undefined) return NEED_MORE;
  const family = fam >> 4;
  const transport = fam & 0x0f;
  if (family >= FAMILIES.length) return invalid('v2_bad_family');
  if (transport >= TRANSPORTS.length) return invalid('v2_bad_transport');
  if (buf.length < PROXY_V2_FIXED_BYTES) return NEED_MORE;
  const total = PROXY_V2_FIXED_BYTES + buf.readUInt16BE(14);
  if (total > maxV2Bytes) return invalid('v2_too_long');
  const addressBytes = ADDRESS_BYTES[family] ?? 0;
  if (command === 1 && total - PROXY_V2_FIXED_BYTES < addressBytes) return invalid('v2_short_address');
  return { command, family, transport, total };
}

interface TlvSpan {
  readonly type: number;
  readonly start: number;
  readonly end: number;
}

/** Splits [start, end) into TLVs; undefined unless they tile the range exactly. */
function splitTlvs(buf: Buffer, start: number, end: number): TlvSpan[] | undefined {
  const spans: TlvSpan[] = [];
  let at = start;
  while (at < end) {
    if (end - at < 3) return undefined;
    const valueStart = at + 3;
    const valueEnd = valueStart + buf.readUInt16BE(at + 1);
    if (valueEnd > end) return undefined;
    spans.push({ type: buf[at] ?? 0, start: valueStart, end: valueEnd });
    at = valueEnd;
  }
  return spans;
}

/** True when there is no CRC32C TLV, or exactly one, 4 bytes long, matching the header. */
function crcMatches(buf: Buffer, total: number, spans: readonly TlvSpan[]): boolean {
  const crcs = spans.filter((s) => s.type === PP2_TYPE.CRC32C);
  if (crcs.length === 0) return true;
  const field = crcs[0];
  if (crcs.length > 1 || field === undefined || field.end - field.start !== 4) return false;
  let crc = crc32cUpdate(CRC32C_INIT, buf, 0, field.start);
  crc = crc32cZeros(crc, 4);
  crc = crc32cUpdate(crc, buf, field.end, total);
  return crc32cFinish(crc) === buf.readUInt32BE(field.start);
}

function v2Addresses(buf: Buffer, family: number): { source: ProxyAddress; destination: ProxyAddress } {
  const inet6 = family === 2;
  const size = inet6 ? 16 : 4;
  const at = PROXY_V2_FIXED_BYTES;
  const ip = (offset: number): string => (inet6 ? formatIpv6(buf, offset, true) : formatIpv4(buf, offset));
  const ports = at + 2 * size;
  return {
    source: { ip: ip(at), port: buf.readUInt16BE(ports) },
    destination: { ip: ip(at + size), port: buf.readUInt16BE(ports + 2) },
  };
}

function parseV2(buf: Buffer, maxV2Bytes: number): ProxyParseResult {
  const fixed = parseV2Fixed(buf, maxV2Bytes);
  if ('kind' in fixed) return fixed;
  const { command, family, transport, total } = fixed;
  if (buf.length < total) return NEED_MORE;
  const addressBytes = ADDRESS_BYTES[family] ?? 0;
  // LOCAL ignores the address block; it is skipped when `len` covers it (LOCAL + AF_INET senders).
  const tlvStart = PROXY_V2_FIXED_BYTES + (total - PROXY_V2_FIXED_BYTES >= addressBytes ? addressBytes : 0);
  const spans = splitTlvs(buf, tlvStart, total);
  if (spans === undefined) return invalid('v2_bad_tlv');
  if (!crcMatches(buf, total, spans)) return invalid('v2_bad_crc');
  const hasAddresses = command === 1 && transport !== 0 && (family === 1 || family === 2);
  const addresses = hasAddresses ? v2Addresses(buf, family) : undefined;
  const header: ProxyHeader = {
    version: 2,
    command: command === 1 ? 'proxy' : 'local',
    transport: TRANSPORTS[transport] ?? 'unspec',
    family: FAMILIES[family] ?? 'unspec',
    source: addresses?.source,
    destination: addresses?.destination,
    tlvs: spans.map((s) => ({ type: s.type, value: Buffer.from(buf.subarray(s.start, s.end)) })),
  };
  return { kind: 'done', header, length: total };
}

// ---- IP text <-> bytes (shared with the encoder) ----------------------------------------------

const V4_OCTET = /^(?:0|[1-9][0-9]{0,2})$/;
const V6_GROUP = /^[0-9a-fA-F]{1,4}$/;

/** Strict dotted quad (no leading zeros, no shorthand) to 4 bytes, or undefined. */
export function ipv4Bytes(text: string): Buffer | undefined {
  const parts = text.split('.');
  if (parts.length !== 4) return undefined;
  const out = Buffer.alloc(4);
  for (let i = 0; i < 4; i++) {
    const part = parts[i] ?? '';
    const value = Number(part);
    if (!V4_OCTET.test(part) || value > 255) return undefined;
    out[i] = value;
  }
  return out;
}

function v6Groups(text: string): number[] | undefined {
  if (text === '') return [];
  const groups: number[] = [];
  for (const g of text.split(':')) {
    if (!V6_GROUP.test(g)) return undefined;
    groups.push(parseInt(g, 16));
  }
  return groups;
}

/**
 * IPv6 text to 16 bytes, or undefined: hex groups of 1–4 digits, at most one "::", an optional
 * trailing dotted quad (inet_pton accepts "::ffff:1.2.3.4"), no zone id, exactly 128 bits.
 */
export function ipv6Bytes(text: string): Buffer | undefined {
  if (text.length < 2 || text.length > 45) return undefined;
  let body = text;
  const lastColon = text.lastIndexOf(':');
  if (lastColon < 0) return undefined;
  if (text.includes('.', lastColon)) {
    const v4 = ipv4Bytes(text.slice(lastColon + 1));
    if (!v4) return undefined;
    body = `${text.slice(0, lastColon + 1)}${v4.readUInt16BE(0).toString(16)}:${v4.readUInt16BE(2).toString(16)}`;
  }
  const halves = body.split('::');
  if (halves.length > 2) return undefined;
  const head = v6Groups(halves[0] ?? '');
  const tail = halves.length === 2 ? v6Groups(halves[1] ?? '') : [];
  if (!head || !tail) return undefined;
  const count = head.length + tail.length;
  if (halves.length === 1 ? count !== 8 : count > 7) return undefined;
  const out = Buffer.alloc(16);
  head.forEach((g, i) => out.writeUInt16BE(g, i * 2));
  tail.forEach((g, i) => out.writeUInt16BE(g, 16 - (tail.length - i) * 2));
  return out;
}

/** Dotted quad of the 4 bytes at `offset`. */
export function formatIpv4(bytes: Buffer, offset: number): string {
  return `${bytes[offset] ?? 0}.${bytes[offset + 1] ?? 0}.${bytes[offset + 2] ?? 0}.${bytes[offset + 3] ?? 0}`;
}

/**
 * RFC 5952 text of the 16 bytes at `offset`: lower case, no leading zeros, the longest run of two
 * or more zero groups (the first on a tie) shortened to "::". With `mixed`, IPv4-mapped addresses
 * are written "::ffff:a.b.c.d" like Node's socket addresses; without it, as hex groups (for v1
 * lines, whose grammar has no dotted form).
 */
export function formatIpv6(bytes: Buffer, offset: number, mixed: boolean): string {
  const groups: number[] = [];
  for (let i = 0; i < 8; i++) groups.push(bytes.readUInt16BE(offset + i * 2));
  if (mixed && groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
    return `::ffff:${formatIpv4(bytes, offset + 12)}`;
  }
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) [bestStart, bestLen] = [i, j - i];
    i = j === i ? i + 1 : j;
  }
  const hex = (gs: number[]): string => gs.map((g) => g.toString(16)).join(':');
  if (bestStart < 0) return hex(groups);
  return `${hex(groups.slice(0, bestStart))}::${hex(groups.slice(bestStart + bestLen))}`;
}
