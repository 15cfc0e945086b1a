/**
 * PROXY protocol header encoder, sender side. The fixed part and the address block come from
 * `proxy-protocol-js`; this wrapper adds what it lacks: TLVs with a correct `len` (the library
 * appends extra data but leaves `len` covering the addresses only), a size budget, CRC32C, the
 * v1 short UNKNOWN form (the library would print "undefined" addresses), and address
 * normalisation. Every header produced here is complete and valid; nothing is ever truncated.
 */
import ppjs from 'proxy-protocol-js';

import { crc32c } from './crc32c.js';
import { formatIpv4, formatIpv6, ipv4Bytes, ipv6Bytes } from './ip-bytes.js';
import { PP2_TYPE, PROXY_V2_FIXED_BYTES, type ProxyAddress, type Tlv } from './proxy-header.js';

/** Options of {@link encodeProxyV2}. */
export interface EncodeV2Options {
  readonly command: 'proxy' | 'local';
  readonly transport: 'stream' | 'dgram';
  /** Required for 'proxy'; IPv4 and IPv6 may be mixed (the IPv4 side is then sent v4-mapped). */
  readonly source?: ProxyAddress;
  readonly destination?: ProxyAddress;
  /** Our own TLVs (authority, ALPN, unique id): always included unless they alone overflow. */
  readonly tlvs?: readonly Tlv[];
  /** Relayed TLVs: all included, or all left out when they would overflow `maxBytes`. */
  readonly passTlvs?: readonly Tlv[];
  /** Cap on the whole header; default 4096, never more than 16 + 65535. */
  readonly maxBytes?: number;
  /** Append a PP2_TYPE_CRC32C TLV computed over the finished header. */
  readonly crc32c?: boolean;
}

/** A header ready to be written in one piece before any payload byte. */
export interface EncodeResult {
  readonly header: Buffer;
  /** True when relayed TLVs were left out (all of them) to stay within `maxBytes`. */
  readonly droppedPassTlvs: boolean;
  /** How many of our own TLVs were left out because they alone overflowed `maxBytes`. */
  readonly droppedOwnTlvs: number;
}

const DEFAULT_MAX_BYTES = 4096;
const MAX_V2_BYTES = PROXY_V2_FIXED_BYTES + 0xffff;
const TLV_HEAD_BYTES = 3;
const CRC_TLV_BYTES = TLV_HEAD_BYTES + 4;

interface Endpoint {
  readonly bytes: Buffer; // 4 or 16
  readonly port: number;
}

/**
 * Bytes of an address as Node reports it: IPv4, IPv6 (zone id dropped) or IPv4-mapped IPv6,
 * which is turned back into IPv4 so that a dual-stack listener still sends TCP4 for IPv4 clients.
 */
function endpoint(addr: ProxyAddress | undefined): Endpoint | undefined {
  if (addr === undefined || !Number.isInteger(addr.port) || addr.port < 0 || addr.port > 0xffff) {
    return undefined;
  }
  const v4 = ipv4Bytes(addr.ip);
  if (v4) return { bytes: v4, port: addr.port };
  const zone = addr.ip.indexOf('%');
  const v6 = ipv6Bytes(zone < 0 ? addr.ip : addr.ip.slice(0, zone));
  if (!v6) return undefined;
  const mapped = v6.subarray(0, 10).every((b) => b === 0) && v6.readUInt16BE(10) === 0xffff;
  return { bytes: mapped ? v6.subarray(12) : v6, port: addr.port };
}

function toV6(bytes: Buffer): Buffer {
  if (bytes.length === 16) return bytes;
  return Buffer.concat([Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]), bytes]);
}

type LibAddress = InstanceType<typeof ppjs.IPv4ProxyAddress> | InstanceType<typeof ppjs.IPv6ProxyAddress>;

/** Library address block for a pair; mixed families are sent as IPv6 with the IPv4 side mapped. */
function libAddress(src: Endpoint, dst: Endpoint): LibAddress {
  if (src.bytes.length === 4 && dst.bytes.length === 4) {
    const a = ppjs.IPv4Address.createFrom([...src.bytes]);
    const b = ppjs.IPv4Address.createFrom([...dst.bytes]);
    return new ppjs.IPv4ProxyAddress(a, src.port, b, dst.port);
  }
  const a = ppjs.IPv6Address.createFrom([...toV6(src.bytes)]);
  const b = ppjs.IPv6Address.createFrom([...toV6(dst.bytes)]);
  return new ppjs.IPv6ProxyAddress(a, src.port, b, dst.port);
}

function tlvBytes(t: Tlv): number {
  return TLV_HEAD_BYTES + t.value.length;
}

function isEncodable(t: Tlv): boolean {
  return Number.isInteger(t.type) && t.type >= 0 && t.type <= 0xff && t.value.length <= 0xffff;
}

/**
 * Our TLVs that fit in `budget`: the biggest are left out first (ties: the later one), so the
 * choice depends only on the sizes and order given, and small useful TLVs survive one huge one.
 */
function fitOwnTlvs(tlvs: readonly Tlv[], budget: number): Tlv[] {
  const kept = tlvs.map((t, i) => ({ t, i }));
  let size = kept.reduce((n, k) => n + tlvBytes(k.t), 0);
  const bySizeDesc = [...kept].sort((x, y) => tlvBytes(y.t) - tlvBytes(x.t) || y.i - x.i);
  const dropped = new Set<number>();
  for (const k of bySizeDesc) {
    if (size <= budget) break;
    dropped.add(k.i);
    size -= tlvBytes(k.t);
  }
  return kept.filter((k) => !dropped.has(k.i)).map((k) => k.t);
}

function serializeTlvs(tlvs: readonly Tlv[]): Buffer[] {
  return tlvs.flatMap((t) => {
    const head = Buffer.alloc(TLV_HEAD_BYTES);
    head[0] = t.type;
    head.writeUInt16BE(t.value.length, 1);
    return [head, t.value];
  });
}

interface Pair {
  readonly src: Endpoint;
  readonly dst: Endpoint;
}

/** Both endpoints when the header can describe them; undefined means "send LOCAL". */
function proxiedPair(opts: EncodeV2Options): Pair | undefined {
  if (opts.command !== 'proxy') return undefined;
  const src = endpoint(opts.source);
  const dst = endpoint(opts.destination);
  return src !== undefined && dst !== undefined ? { src, dst } : undefined;
}

function addressBlockBytes(pair: Pair | undefined): number {
  if (pair === undefined) return 0;
  return pair.src.bytes.length === 4 && pair.dst.bytes.length === 4 ? 12 : 36;
}

function buildFixedAndAddresses(
  pair: Pair | undefined,
  transport: EncodeV2Options['transport'],
  data: Buffer,
): Buffer {
  const proto = pair
    ? new ppjs.V2ProxyProtocol(
        ppjs.Command.PROXY,
        transport === 'dgram' ? ppjs.TransportProtocol.DGRAM : ppjs.TransportProtocol.STREAM,
        libAddress(pair.src, pair.dst),
        data,
      )
    : new ppjs.V2ProxyProtocol(
        ppjs.Command.LOCAL,
        ppjs.TransportProtocol.UNSPEC,
        new ppjs.UnspecProxyAddress(),
        data,
      );
  const built = proto.build();
  const header = Buffer.from(built.buffer, built.byteOffset, built.byteLength);
  // The library's `len` covers the address block only; ours must also cover the TLVs.
  header.writeUInt16BE(header.length - PROXY_V2_FIXED_BYTES, 14);
  return header;
}

/**
 * Builds a v2 header.
 *
 * - 'proxy' with both addresses valid: TCP/UDP over IPv4 when both are IPv4 (IPv4-mapped IPv6
 *   counts as IPv4), else over IPv6 with any IPv4 side mapped to ::ffff:a.b.c.d.
 * - 'proxy' with a missing or unparsable address, and 'local': LOCAL with AF_UNSPEC (what HAProxy
 *   sends when it cannot describe the connection), so the receiver uses the socket addresses.
 * - Size: `maxBytes` (default 4096, at most 65551) bounds the whole header. The fixed part, the
 *   addresses and the CRC32C TLV, if asked for, are always present (a smaller `maxBytes` is raised
 *   to fit them). Our TLVs come next; if they alone overflow, the biggest are left out first
 *   (ties: the later one), as is any TLV whose value exceeds 65535 bytes. Relayed TLVs go in
 *   all together or not at all. Relayed CRC32C TLVs (which could no longer match) and relayed
 *   TLVs of a type we send ourselves are never relayed; our own CRC32C entries are ignored.
 */
export function encodeProxyV2(opts: EncodeV2Options): EncodeResult {
  const maxBytes = Math.min(opts.maxBytes ?? DEFAULT_MAX_BYTES, MAX_V2_BYTES);
  const pair = proxiedPair(opts);
  const fixed = PROXY_V2_FIXED_BYTES + addressBlockBytes(pair) + (opts.crc32c === true ? CRC_TLV_BYTES : 0);
  const budget = Math.max(0, maxBytes - fixed);
  const ownAll = (opts.tlvs ?? []).filter((t) => t.type !== PP2_TYPE.CRC32C);
  const own = fitOwnTlvs(ownAll.filter(isEncodable), budget);
  const ownTypes = new Set(own.map((t) => t.type));
  const pass = (opts.passTlvs ?? []).filter((t) => t.type !== PP2_TYPE.CRC32C && !ownTypes.has(t.type));
  const ownSize = own.reduce((n, t) => n + tlvBytes(t), 0);
  const passSize = pass.reduce((n, t) => n + tlvBytes(t), 0);
  const passFits = pass.every(isEncodable) && ownSize + passSize <= budget;
  const tlvs = passFits ? [...own, ...pass] : own;
  const crcTlv: Tlv[] = opts.crc32c === true ? [{ type: PP2_TYPE.CRC32C, value: Buffer.alloc(4) }] : [];
  const header = buildFixedAndAddresses(
    pair,
    opts.transport,
    Buffer.concat(serializeTlvs([...tlvs, ...crcTlv])),
  );
  // The CRC field is the last 4 bytes and still zero here, as the spec requires for computing it.
  if (opts.crc32c === true) header.writeUInt32BE(crc32c(header), header.length - 4);
  return {
    header,
    droppedPassTlvs: pass.length > 0 && !passFits,
    droppedOwnTlvs: ownAll.length - own.length,
  };
}

/**
 * Builds a v1 line: TCP4 when both addresses are IPv4 (IPv4-mapped IPv6 counts as IPv4), TCP6
 * when both are IPv6 (hex groups only, as the v1 grammar has no dotted form), and the short
 * "PROXY UNKNOWN\r\n" when either is missing or unparsable or the families differ.
 */
export function encodeProxyV1(
  source: ProxyAddress | undefined,
  destination: ProxyAddress | undefined,
): Buffer {
  const src = endpoint(source);
  const dst = endpoint(destination);
  if (src === undefined || dst === undefined || src.bytes.length !== dst.bytes.length) {
    return Buffer.from('PROXY UNKNOWN\r\n', 'latin1');
  }
  const inet6 = src.bytes.length === 16;
  const text = (e: Endpoint): string => (inet6 ? formatIpv6(e.bytes, 0, false) : formatIpv4(e.bytes, 0));
  const line = new ppjs.V1ProxyProtocol(
    inet6 ? ppjs.INETProtocol.TCP6 : ppjs.INETProtocol.TCP4,
    new ppjs.Peer(text(src), src.port),
    new ppjs.Peer(text(dst), dst.port),
  ).build();
  return Buffer.from(line, 'latin1');
}

/** The 16-byte v2 LOCAL header (AF_UNSPEC, len 0) for health checks of PROXY pools; a fresh copy. */
export function encodeProxyV2Local(): Buffer {
  return encodeProxyV2({ command: 'local', transport: 'stream' }).header;
}
