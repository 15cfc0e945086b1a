/** PROXY protocol v1: the text line (see parseProxyHeader in proxy-parse.ts for the rules). */
import {
  compareSignature,
  PROXY_V1_MAX_BYTES,
  V1_SIGNATURE,
  CR,
  LF,
  NEED_MORE,
  invalid,
} from './proxy-header.js';
import { formatIpv6, ipv4Bytes, ipv6Bytes } from './ip-bytes.js';
import type { ProxyHeader, ProxyParseResult } from './proxy-header.js';

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

export function parseV1(buf: Buffer): ProxyParseResult {
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
