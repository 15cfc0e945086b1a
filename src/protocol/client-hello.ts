/**
 * TLS ClientHello peeker for SNI routing (TLS passthrough: nothing is decrypted or answered).
 *
 * Pure and incremental like the PROXY parser: the caller passes every byte received so far and
 * the whole prefix is re-examined, so a hello split across TCP segments or across several TLS
 * records (RFC 8446 §5.1 lets a handshake message span records) is handled alike. The bytes are
 * only read, never consumed: the caller replays its buffer to the backend unchanged.
 */

/** Why a handshake was refused; usable as a metric label. */
export type ClientHelloInvalidReason =
  | 'too_large'
  | 'bad_record'
  | 'bad_length'
  | 'not_client_hello'
  | 'duplicate_extension'
  | 'bad_sni'
  | 'bad_alpn';

/** Outcome of {@link parseClientHello}. */
export type ClientHelloResult =
  | { readonly kind: 'need-more' }
  | { readonly kind: 'not-tls' }
  | { readonly kind: 'invalid'; readonly reason: ClientHelloInvalidReason }
  | {
      readonly kind: 'done';
      readonly sni: string | undefined;
      readonly alpn: readonly string[];
      readonly bytes: number;
    };

/** Default cap on the bytes examined, as Envoy's TLS inspector (16 KiB). */
export const CLIENT_HELLO_MAX_BYTES = 16384;

const RECORD_HEADER_BYTES = 5;
const HANDSHAKE_HEADER_BYTES = 4;
const CONTENT_HANDSHAKE = 22;
const HANDSHAKE_CLIENT_HELLO = 1;
const MAX_RECORD_PAYLOAD = 16384; // 2^14, RFC 8446 §5.1
const EXT_SERVER_NAME = 0;
const EXT_ALPN = 16;
const SNI_HOST_NAME = 0;
const MAX_HOST_NAME = 255;

const NEED_MORE = { kind: 'need-more' } as const;
const NOT_TLS = { kind: 'not-tls' } as const;

function invalid(reason: ClientHelloInvalidReason): ClientHelloResult {
  return { kind: 'invalid', reason };
}

/** Bounds-checked reader over `buf[at, end)`; every read returns undefined past the end. */
class Cursor {
  private at: number;
  constructor(
    private readonly buf: Buffer,
    start = 0,
    private readonly end = buf.length,
  ) {
    this.at = start;
  }
  remaining(): number {
    return this.end - this.at;
  }
  u8(): number | undefined {
    return this.remaining() >= 1 ? this.buf[this.at++] : undefined;
  }
  u16(): number | undefined {
    if (this.remaining() < 2) return undefined;
    const v = this.buf.readUInt16BE(this.at);
    this.at += 2;
    return v;
  }
  take(n: number): Buffer | undefined {
    if (this.remaining() < n) return undefined;
    const out = this.buf.subarray(this.at, this.at + n);
    this.at += n;
    return out;
  }
  /** A vector with a 1- or 2-byte length prefix. */
  vector(lengthBytes: 1 | 2): Buffer | undefined {
    const n = lengthBytes === 1 ? this.u8() : this.u16();
    return n === undefined ? undefined : this.take(n);
  }
}

/** The handshake message reassembled from the records, and where its last record ends. */
interface Reassembled {
  readonly message: Buffer;
  readonly bytes: number;
}

/**
 * Checks a record header (possibly still partial) at `at`. The first record decides whether
 * this is TLS at all; a later record that is not a handshake record breaks the hello.
 */
function checkRecordHeader(buf: Buffer, at: number): ClientHelloResult | undefined {
  const type = buf[at];
  const major = buf[at + 1];
  const minor = buf[at + 2];
  const wrong = (type !== undefined && type !== CONTENT_HANDSHAKE) || (major !== undefined && major !== 3);
  if (wrong || (minor !== undefined && minor > 4)) return at === 0 ? NOT_TLS : invalid('bad_record');
  return undefined;
}

/** Length of the whole handshake message once its 4-byte header is in, -1 before. */
function handshakeNeed(
  fragments: readonly Buffer[],
  have: number,
  maxBytes: number,
): number | ClientHelloResult {
  const head = Buffer.concat(fragments, Math.min(have, HANDSHAKE_HEADER_BYTES));
  if (head.length >= 1 && head[0] !== HANDSHAKE_CLIENT_HELLO) return invalid('not_client_hello');
  if (head.length < HANDSHAKE_HEADER_BYTES) return -1;
  const need = HANDSHAKE_HEADER_BYTES + head.readUIntBE(1, 3);
  // At least one record header precedes the message: refuse early what can never fit.
  return need + RECORD_HEADER_BYTES > maxBytes ? invalid('too_large') : need;
}

/** Walks consecutive handshake records until they hold the whole first handshake message. */
function reassemble(buf: Buffer, maxBytes: number): Reassembled | ClientHelloResult {
  const fragments: Buffer[] = [];
  let have = 0;
  let need = -1;
  for (let at = 0; ;) {
    const bad = checkRecordHeader(buf, at);
    if (bad) return bad;
    if (buf.length < at + RECORD_HEADER_BYTES) return NEED_MORE;
    const length = buf.readUInt16BE(at + 3);
    const recordEnd = at + RECORD_HEADER_BYTES + length;
    if (recordEnd > maxBytes) return invalid('too_large');
    if (length === 0 || length > MAX_RECORD_PAYLOAD) return invalid('bad_record');
    const fragment = buf.subarray(at + RECORD_HEADER_BYTES, Math.min(buf.length, recordEnd));
    fragments.push(fragment);
    have += fragment.length;
    if (need < 0) {
      const n = handshakeNeed(fragments, have, maxBytes);
      if (typeof n !== 'number') return n;
      need = n;
    }
    // Done only once the record carrying the last byte is complete, so `bytes` <= input.
    if (recordEnd > buf.length) return NEED_MORE;
    if (need >= 0 && have >= need) {
      const all = fragments.length === 1 ? fragment : Buffer.concat(fragments, have);
      return { message: all.subarray(0, need), bytes: recordEnd };
    }
    at = recordEnd;
  }
}

/** A field's value, or why the field is malformed. */
type Field<T> =
  | { readonly ok: true; readonly value: T }
  | { readonly ok: false; readonly reason: ClientHelloInvalidReason };

function fail<T>(reason: ClientHelloInvalidReason): Field<T> {
  return { ok: false, reason };
}

/** First host_name of a server_name extension (RFC 6066 §3); undefined when it has none. */
function parseServerName(data: Buffer): Field<string | undefined> {
  const ext = new Cursor(data);
  const list = ext.vector(2);
  if (list === undefined || list.length === 0 || ext.remaining() !== 0) return fail('bad_sni');
  const names = new Cursor(list);
  let first: string | undefined;
  while (names.remaining() > 0) {
    const type = names.u8();
    const name = names.vector(2);
    if (type === undefined || name === undefined) return fail('bad_sni');
    if (type !== SNI_HOST_NAME || first !== undefined) continue;
    if (name.length === 0 || name.length > MAX_HOST_NAME) return fail('bad_sni');
    // Printable ASCII without space: what a DNS name (or an A-label) can be. NUL, CR/LF, ESC and
    // UTF-8 are refused outright, as BoringSSL does, rather than matched or logged.
    if (name.some((b) => b < 0x21 || b > 0x7e)) return fail('bad_sni');
    first = name.toString('latin1');
  }
  return { ok: true, value: first };
}

/** Protocol names of an ALPN extension (RFC 7301 §3.1), in the client's order. */
function parseAlpn(data: Buffer): Field<string[]> {
  const ext = new Cursor(data);
  const list = ext.vector(2);
  if (list === undefined || list.length < 2 || ext.remaining() !== 0) return fail('bad_alpn');
  const names = new Cursor(list);
  const out: string[] = [];
  while (names.remaining() > 0) {
    const name = names.vector(1);
    if (name === undefined || name.length === 0) return fail('bad_alpn');
    out.push(name.toString('latin1'));
  }
  return { ok: true, value: out };
}

interface HelloFields {
  sni: string | undefined;
  alpn: string[];
}

/** SNI and ALPN from the extensions block; every extension's framing is checked. */
function parseExtensions(block: Buffer): Field<HelloFields> {
  const c = new Cursor(block);
  const seen = new Set<number>();
  const fields: HelloFields = { sni: undefined, alpn: [] };
  while (c.remaining() > 0) {
    const type = c.u16();
    const data = c.vector(2);
    if (type === undefined || data === undefined) return fail('bad_length');
    if (seen.has(type)) return fail('duplicate_extension'); // RFC 8446 §4.2
    seen.add(type);
    if (type === EXT_SERVER_NAME) {
      const sni = parseServerName(data);
      if (!sni.ok) return sni;
      fields.sni = sni.value;
    } else if (type === EXT_ALPN) {
      const alpn = parseAlpn(data);
      if (!alpn.ok) return alpn;
      fields.alpn = alpn.value;
    }
  }
  return { ok: true, value: fields };
}

/** The ClientHello body (after the 4-byte handshake header), RFC 8446 §4.1.2. */
function parseHelloBody(body: Buffer): Field<HelloFields> {
  const c = new Cursor(body);
  if (c.take(2 + 32) === undefined) return fail('bad_length'); // legacy_version, random
  const sessionId = c.vector(1);
  if (sessionId === undefined || sessionId.length > 32) return fail('bad_length');
  const suites = c.vector(2);
  if (suites === undefined || suites.length < 2 || suites.length % 2 !== 0) return fail('bad_length');
  const compression = c.vector(1);
  if (compression === undefined || compression.length < 1) return fail('bad_length');
  // Pre-TLS 1.2 hellos may end here, without an extensions block.
  if (c.remaining() === 0) return { ok: true, value: { sni: undefined, alpn: [] } };
  const extensions = c.vector(2);
  if (extensions === undefined || c.remaining() !== 0) return fail('bad_length');
  return parseExtensions(extensions);
}

/**
 * Peeks at a TLS ClientHello at the start of `buf` (all bytes received so far) and returns its
 * SNI and ALPN.
 *
 * - 'not-tls' as soon as the first record header is not a TLS handshake record (type 22,
 *   version 3.0–3.4); this includes SSLv2-format hellos, HTTP, PROXY headers and random bytes.
 * - The handshake message is reassembled from consecutive handshake records; a record of another
 *   type before it is complete, an empty or over-2^14 record → 'bad_record'.
 * - At most `maxBytes` (default 16384) bytes of records are examined: a record or a handshake
 *   length that cannot fit is 'too_large' as soon as its length field arrives.
 * - Every length is checked ('bad_length'); extensions may not repeat ('duplicate_extension').
 * - SNI: the first host_name entry (type 0) of the server_name list, exactly as sent (not
 *   lower-cased). A malformed list, an empty name, one over 255 bytes, or one with a byte outside
 *   printable ASCII (0x21–0x7E) makes the whole hello 'bad_sni' (not "no SNI"), so a mangled name
 *   can never fall through to a default route. This is the outer SNI only (ECH, renegotiation and
 *   HelloRetryRequest are out of sight): route on it, do not use it as access control.
 * - `bytes`: end of the record holding the last byte of the hello; 'done' waits for that record
 *   to be complete, so `bytes` never exceeds `buf.length`. Bytes after it are not examined.
 */
export function parseClientHello(buf: Buffer, maxBytes: number = CLIENT_HELLO_MAX_BYTES): ClientHelloResult {
  const message = reassemble(buf, maxBytes);
  if ('kind' in message) return message;
  const fields = parseHelloBody(message.message.subarray(HANDSHAKE_HEADER_BYTES));
  if (!fields.ok) return invalid(fields.reason);
  return { kind: 'done', sni: fields.value.sni, alpn: fields.value.alpn, bytes: message.bytes };
}
