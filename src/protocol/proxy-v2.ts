/** PROXY protocol v2: the binary header (see parseProxyHeader in proxy-parse.ts for the rules). */
import { CRC32C_INIT, crc32cFinish, crc32cUpdate, crc32cZeros } from './crc32c.js';
import { formatIpv4, formatIpv6 } from './ip-bytes.js';
import {
  compareSignature,
  PP2_TYPE,
  PROXY_V2_FIXED_BYTES,
  PROXY_V2_SIGNATURE,
  NEED_MORE,
  FAMILIES,
  TRANSPORTS,
  ADDRESS_BYTES,
  invalid,
} from './proxy-header.js';
import type { ProxyAddress, ProxyHeader, ProxyParseResult } from './proxy-header.js';

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

export function parseV2(buf: Buffer, maxV2Bytes: number): ProxyParseResult {
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
