import type { ListenerConfig } from '../config/schema.js';
import type { EncodeResult } from '../protocol/proxy-encode.js';
import { encodeProxyV1, encodeProxyV2 } from '../protocol/proxy-encode.js';
import { PP2_TYPE } from '../protocol/proxy-parse.js';
import type { Tlv } from '../protocol/proxy-parse.js';
import type { Pool } from '../upstream/pool.js';
import type { SessionIdentity } from './session-identity.js';

/** TLV types we fill ourselves; a relayed TLV of the same type is not sent twice. */
const OWN_TYPES = new Set<number>([PP2_TYPE.AUTHORITY, PP2_TYPE.ALPN, PP2_TYPE.UNIQUE_ID, PP2_TYPE.CRC32C]);

/**
 * The PROXY header a session's backend receives before any client byte: the real client address
 * (after a trusted PROXY-in header), and for v2 the TLVs AUTHORITY (the SNI peeked from the
 * ClientHello), ALPN (the client's first offered protocol), UNIQUE_ID (the session id the access
 * log prints), plus, when `pass_tlvs` is on, the TLVs received from the trusted upstream (e.g.
 * AWS 0xEA). Relayed TLVs are left out whole when they would not fit; the header is never cut.
 */
export function proxyPreamble(
  session: SessionIdentity,
  pool: Pool,
  listener: ListenerConfig,
): EncodeResult | undefined {
  const mode = pool.config.proxy_protocol;
  if (mode === 'off') return undefined;
  const source = { ip: session.clientIp, port: session.clientPort };
  const destination = { ip: session.localIp, port: session.localPort };
  if (mode === 'v1')
    return { header: encodeProxyV1(source, destination), droppedPassTlvs: false, droppedOwnTlvs: 0 };
  const tlvs: Tlv[] = [{ type: PP2_TYPE.UNIQUE_ID, value: Buffer.from(session.id, 'latin1') }];
  if (session.sni !== undefined)
    tlvs.push({ type: PP2_TYPE.AUTHORITY, value: Buffer.from(session.sni, 'latin1') });
  const alpn = session.alpn[0];
  if (alpn !== undefined) tlvs.push({ type: PP2_TYPE.ALPN, value: Buffer.from(alpn, 'latin1') });
  const pass =
    listener.proxy_protocol_in?.pass_tlvs === true
      ? session.receivedTlvs.filter((t) => !OWN_TYPES.has(t.type))
      : [];
  return encodeProxyV2({ command: 'proxy', transport: 'stream', source, destination, tlvs, passTlvs: pass });
}
