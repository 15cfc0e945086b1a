/*
 * QUIC packet headers as far as a load balancer may read them: the version-independent
 * invariants (RFC 8999), and server IDs in plaintext connection IDs (QUIC-LB,
 * draft-ietf-quic-load-balancers, unencrypted mode). Pure, allocation-light, never throws.
 *
 * RFC 8999 in short: the first bit of a packet is its header form. A long header (1) carries a
 * 32-bit version, then the Destination and the Source Connection ID, each after a one-octet
 * length (0..255 in the invariants; QUIC v1 and v2 use at most 20). A short header (0) carries
 * the Destination Connection ID right after the first octet, without a length: only the
 * endpoint that chose it (and a load balancer told how) knows where it ends. Everything else,
 * packet types included, is version-specific and not read here.
 */

/** The header-form bit of the first octet: set on a long header. */
export const QUIC_LONG_HEADER_BIT = 0x80;

/** Version Negotiation packets carry version 0 (RFC 8999 §6); only servers send them. */
export const QUIC_VERSION_NEGOTIATION = 0;

/** Longest connection ID QUIC v1 and v2 allow (RFC 9000 §17.2); the invariants allow 255. */
export const QUIC_MAX_V1_CID_LENGTH = 20;

/** A long header: where its two connection IDs lie in the datagram. */
export interface QuicLongHeader {
  readonly form: 'long';
  /** Unsigned 32-bit version; 0 is Version Negotiation. */
  readonly version: number;
  readonly dcidOffset: number;
  readonly dcidLength: number;
  readonly scidOffset: number;
  readonly scidLength: number;
}

/** A short header: the Destination Connection ID starts at octet 1; its length is not in the packet. */
export interface QuicShortHeader {
  readonly form: 'short';
  readonly dcidOffset: 1;
}

export type QuicHeader = QuicLongHeader | QuicShortHeader;

/**
 * `done` with the header; `invalid` when the datagram cannot be a QUIC packet: `empty` (no
 * octet at all), `truncated` (a long header that ends inside its version or connection IDs).
 * A datagram is whole, so there is no need-more.
 */
export type QuicParseResult =
  | { readonly kind: 'done'; readonly header: QuicHeader }
  | { readonly kind: 'invalid'; readonly reason: 'empty' | 'truncated' };

const SHORT: QuicParseResult = { kind: 'done', header: { form: 'short', dcidOffset: 1 } };
const EMPTY: QuicParseResult = { kind: 'invalid', reason: 'empty' };
const TRUNCATED: QuicParseResult = { kind: 'invalid', reason: 'truncated' };

/**
 * Reads the invariant header of the first QUIC packet in a datagram (later coalesced packets
 * share its connection IDs). Never throws; reads only inside `datagram`.
 */
export function parseQuicHeader(datagram: Uint8Array): QuicParseResult {
  const n = datagram.length;
  if (n === 0) return EMPTY;
  if ((datagram[0]! & QUIC_LONG_HEADER_BIT) === 0) return SHORT;
  // first octet (1) + version (4) + DCID length (1)
  if (n < 6) return TRUNCATED;
  const version = ((datagram[1]! << 24) | (datagram[2]! << 16) | (datagram[3]! << 8) | datagram[4]!) >>> 0;
  const dcidLength = datagram[5]!;
  const dcidOffset = 6;
  const scidLengthAt = dcidOffset + dcidLength;
  if (scidLengthAt >= n) return TRUNCATED;
  const scidLength = datagram[scidLengthAt]!;
  const scidOffset = scidLengthAt + 1;
  if (scidOffset + scidLength > n) return TRUNCATED;
  return { kind: 'done', header: { form: 'long', version, dcidOffset, dcidLength, scidOffset, scidLength } };
}

/**
 * The Source Connection ID of a long-header datagram as [offset, length], or undefined for a
 * short header or a datagram that does not parse. What the reply path calls on every
 * long-header datagram a backend sends: the connection IDs a server chooses appear there during
 * the handshake (and in Retry).
 */
export function longHeaderScid(datagram: Uint8Array): readonly [offset: number, length: number] | undefined {
  const r = parseQuicHeader(datagram);
  if (r.kind !== 'done' || r.header.form !== 'long') return undefined;
  return [r.header.scidOffset, r.header.scidLength];
}

// ---- QUIC-LB: plaintext server IDs ----

/** The config rotation code point that marks a connection ID as not routable (QUIC-LB §2.1). */
export const QUIC_LB_UNROUTABLE_ROTATION = 0b111;

/** How the backends encode their server ID in the connection IDs they choose (unencrypted mode). */
export interface ServerIdEncoding {
  /** Config rotation bits, 0..6: the top three bits of the first octet of every such ID. */
  readonly configRotation: number;
  /** Octets of server ID after the first octet, 1..15. */
  readonly serverIdLength: number;
}

/**
 * The server ID inside a plaintext QUIC-LB connection ID that starts at `offset` and has at
 * least `available` octets in `bytes`, as [offset, length] of the server ID; undefined when the
 * first octet's config rotation bits are not `enc.configRotation` (another config, or the
 * unroutable code point 0b111) or the ID is too short to hold a server ID.
 */
export function plaintextServerId(
  bytes: Uint8Array,
  offset: number,
  available: number,
  enc: ServerIdEncoding,
): readonly [offset: number, length: number] | undefined {
  if (available < 1 + enc.serverIdLength || offset + 1 + enc.serverIdLength > bytes.length) return undefined;
  if (bytes[offset]! >>> 5 !== enc.configRotation) return undefined;
  return [offset + 1, enc.serverIdLength];
}

/**
 * A plaintext QUIC-LB connection ID: first octet (config rotation bits, then either the ID's
 * length minus one when `encodeLength`, or `lowBits`), the server ID, the nonce. Throws a
 * RangeError on parameters outside the draft's ranges (a configuration or test error, never
 * network input).
 */
export function encodePlaintextCid(p: {
  readonly configRotation: number;
  readonly serverId: Uint8Array;
  readonly nonce: Uint8Array;
  readonly encodeLength?: boolean;
  readonly lowBits?: number;
}): Buffer {
  const length = 1 + p.serverId.length + p.nonce.length;
  if (!Number.isInteger(p.configRotation) || p.configRotation < 0 || p.configRotation > 6)
    throw new RangeError('config rotation must be 0..6');
  if (p.serverId.length < 1 || p.serverId.length > 15) throw new RangeError('server ID must be 1..15 octets');
  if (length > QUIC_MAX_V1_CID_LENGTH) throw new RangeError('connection ID longer than 20 octets');
  const low = p.encodeLength === true ? length - 1 : (p.lowBits ?? 0) & 0x1f;
  const out = Buffer.allocUnsafe(length);
  out[0] = (p.configRotation << 5) | low;
  out.set(p.serverId, 1);
  out.set(p.nonce, 1 + p.serverId.length);
  return out;
}

/** Lower-case hex of up to the first `max` octets of bytes[offset, offset + length). */
export function cidPrefixHex(bytes: Uint8Array, offset: number, length: number, max = 8): string {
  const end = Math.min(offset + Math.min(length, max), bytes.length);
  return Buffer.from(bytes.buffer, bytes.byteOffset + offset, Math.max(0, end - offset)).toString('hex');
}
