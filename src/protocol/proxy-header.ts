/**
 * The PROXY protocol header as the parser reports it (haproxy doc/proxy-protocol.txt), and what
 * the v1 and v2 parsers share: signatures, sizes, the family and transport tables.
 */

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
export const V1_SIGNATURE = Buffer.from('PROXY ', 'latin1');

export const CR = 0x0d;
export const LF = 0x0a;
export const NEED_MORE = { kind: 'need-more' } as const;
export const FAMILIES = ['unspec', 'inet', 'inet6', 'unix'] as const;
export const TRANSPORTS = ['unspec', 'stream', 'dgram'] as const;
/** Address block size per family nibble: none, 2*4+2*2, 2*16+2*2, 2*108. */
export const ADDRESS_BYTES = [0, 12, 36, 216] as const;

export function invalid(reason: ProxyInvalidReason): ProxyParseResult {
  return { kind: 'invalid', reason };
}

/** 'full' when buf starts with sig, 'partial' when buf is a strict prefix of sig. */
export function compareSignature(buf: Buffer, sig: Buffer): 'full' | 'partial' | 'mismatch' {
  const n = Math.min(buf.length, sig.length);
  if (buf.compare(sig, 0, n, 0, n) !== 0) return 'mismatch';
  return n === sig.length ? 'full' : 'partial';
}
