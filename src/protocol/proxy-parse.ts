/**
 * PROXY protocol v1/v2 header parser, receiver side (haproxy doc/proxy-protocol.txt).
 *
 * Pure and incremental: the caller passes every byte received so far and the parser re-examines
 * them from the start (a header is at most 107 bytes for v1 and the caller's cap for v2), so no
 * state is kept between calls. It never throws, never reads past the header it reports, and
 * answers as early as the bytes allow: a wrong signature, version, command or family is rejected
 * on the byte that shows it, and an oversized `len` before its bytes arrive.
 */
import { PROXY_V2_SIGNATURE, V1_SIGNATURE, NEED_MORE, compareSignature, invalid } from './proxy-header.js';
import type { ProxyParseResult } from './proxy-header.js';
import { parseV1 } from './proxy-v1.js';
import { parseV2 } from './proxy-v2.js';

export { PP2_TYPE, PROXY_V1_MAX_BYTES, PROXY_V2_FIXED_BYTES, PROXY_V2_SIGNATURE } from './proxy-header.js';
export type { ProxyAddress, ProxyHeader, ProxyInvalidReason, ProxyParseResult, Tlv } from './proxy-header.js';

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
