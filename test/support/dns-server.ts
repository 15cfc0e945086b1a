import { createSocket } from 'node:dgram';
import type { RemoteInfo, Socket } from 'node:dgram';
import { isIP } from 'node:net';

/**
 * A tiny authoritative DNS server on UDP 127.0.0.1 for tests (RFC 1035; SRV per RFC 2782). It
 * answers A, AAAA and SRV from a mutable in-memory zone: NXDOMAIN for a name not in the zone,
 * NODATA (NOERROR, no answer) for a known name without records of the asked type. It can also go
 * silent (drop queries) or answer SERVFAIL, to test failure handling.
 */

export interface SrvTarget {
  readonly priority: number;
  readonly weight: number;
  readonly port: number;
  /** Host name; "." means "no service here". */
  readonly target: string;
}

export interface ZoneRecords {
  readonly A: readonly string[];
  readonly AAAA: readonly string[];
  readonly SRV: readonly SrvTarget[];
}

export type RecordType = keyof ZoneRecords;
export type ServerMode = 'answer' | 'silent' | 'servfail';

const TYPE: Record<RecordType, number> = { A: 1, AAAA: 28, SRV: 33 };
const RCODE = { noError: 0, formErr: 1, servFail: 2, nxDomain: 3, notImp: 4 } as const;
const HEADER_LEN = 12;
const CLASS_IN = 1;

export interface Question {
  /** Labels joined by dots, case kept, no trailing dot; "" for the root. */
  readonly name: string;
  readonly type: number;
  readonly qclass: number;
}

export class TestDnsServer {
  /** What the server does with queries; change at any time. */
  mode: ServerMode = 'answer';
  /** Every well-formed question received, in order (also while silent). */
  readonly questions: Question[] = [];
  readonly #socket: Socket;
  readonly #zone = new Map<string, Partial<ZoneRecords>>();

  private constructor(socket: Socket) {
    this.#socket = socket;
    socket.on('message', (msg, from) => this.#onMessage(msg, from));
  }

  /** Binds 127.0.0.1 on a free port. */
  static async start(): Promise<TestDnsServer> {
    const socket = createSocket('udp4');
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(0, '127.0.0.1', () => {
        socket.off('error', reject);
        resolve();
      });
    });
    // A failed send to a vanished client must not crash the test run.
    socket.on('error', () => undefined);
    return new TestDnsServer(socket);
  }

  get port(): number {
    return this.#socket.address().port;
  }

  /** `127.0.0.1:port`, as Resolver.setServers takes it. */
  get server(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Replaces the records of one type; an empty list keeps the name known (NODATA, not NXDOMAIN). */
  setRecords<T extends RecordType>(name: string, type: T, records: ZoneRecords[T]): void {
    for (const r of records) {
      if (typeof r === 'string' && isIP(r) !== (type === 'A' ? 4 : 6))
        throw new Error(`bad ${type} record ${r}`);
    }
    const key = zoneKey(name);
    const entry: Partial<ZoneRecords> = { ...this.#zone.get(key) };
    Object.assign(entry, { [type]: records });
    this.#zone.set(key, entry);
  }

  /** Forgets a name: it answers NXDOMAIN again. */
  deleteName(name: string): void {
    this.#zone.delete(zoneKey(name));
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.#socket.close(() => resolve()));
  }

  #onMessage(msg: Buffer, from: RemoteInfo): void {
    const reply = this.#reply(msg);
    if (reply !== undefined) this.#socket.send(reply, from.port, from.address);
  }

  #reply(msg: Buffer): Buffer | undefined {
    if (msg.length < HEADER_LEN || (msg.readUInt16BE(2) & 0x8000) !== 0) return undefined; // not a query
    const id = msg.readUInt16BE(0);
    const flags = msg.readUInt16BE(2);
    const opcode = (flags >> 11) & 0xf;
    const q = msg.readUInt16BE(4) === 1 ? decodeQuestion(msg, HEADER_LEN) : undefined;
    if (q === undefined) return encodeResponse(id, flags, undefined, RCODE.formErr, []);
    this.questions.push(q);
    if (this.mode === 'silent') return undefined;
    if (this.mode === 'servfail') return encodeResponse(id, flags, q, RCODE.servFail, []);
    if (opcode !== 0) return encodeResponse(id, flags, q, RCODE.notImp, []);
    const entry = this.#zone.get(zoneKey(q.name));
    if (entry === undefined) return encodeResponse(id, flags, q, RCODE.nxDomain, []);
    return encodeResponse(id, flags, q, RCODE.noError, q.qclass === CLASS_IN ? answers(q, entry) : []);
  }
}

function zoneKey(name: string): string {
  return name.toLowerCase().replace(/\.$/, '');
}

function answers(q: Question, entry: Partial<ZoneRecords>): Buffer[] {
  const record = (rdata: Buffer): Buffer => encodeRecord(q.name, q.type, rdata);
  if (q.type === TYPE.A) return (entry.A ?? []).map((ip) => record(Buffer.from(ip.split('.').map(Number))));
  if (q.type === TYPE.AAAA) return (entry.AAAA ?? []).map((ip) => record(ipv6Bytes(ip)));
  if (q.type === TYPE.SRV) return (entry.SRV ?? []).map((s) => record(srvData(s)));
  return [];
}

function srvData(s: SrvTarget): Buffer {
  const head = Buffer.alloc(6);
  head.writeUInt16BE(s.priority, 0);
  head.writeUInt16BE(s.weight, 2);
  head.writeUInt16BE(s.port, 4);
  return Buffer.concat([head, encodeName(s.target)]);
}

/** Header, the question echoed (name as asked, uncompressed), then the answer records. */
function encodeResponse(
  id: number,
  queryFlags: number,
  q: Question | undefined,
  rcode: number,
  records: Buffer[],
): Buffer {
  const header = Buffer.alloc(HEADER_LEN);
  header.writeUInt16BE(id, 0);
  // QR, opcode copied, AA, RD copied, RA clear (we do not recurse), then the response code.
  header.writeUInt16BE(0x8000 | (queryFlags & 0x7800) | 0x0400 | (queryFlags & 0x0100) | rcode, 2);
  header.writeUInt16BE(q === undefined ? 0 : 1, 4);
  header.writeUInt16BE(records.length, 6);
  const parts: Buffer[] = [header];
  if (q !== undefined) {
    const tail = Buffer.alloc(4);
    tail.writeUInt16BE(q.type, 0);
    tail.writeUInt16BE(q.qclass, 2);
    parts.push(encodeName(q.name), tail);
  }
  return Buffer.concat([...parts, ...records]);
}

function encodeRecord(name: string, type: number, rdata: Buffer): Buffer {
  const fixed = Buffer.alloc(10);
  fixed.writeUInt16BE(type, 0);
  fixed.writeUInt16BE(CLASS_IN, 2);
  fixed.writeUInt32BE(0, 4); // TTL 0: no resolver may cache, so zone changes show at once
  fixed.writeUInt16BE(rdata.length, 8);
  return Buffer.concat([encodeName(name), fixed, rdata]);
}

/** Uncompressed wire name; "" and "." are the root. */
export function encodeName(name: string): Buffer {
  const labels = name.split('.').filter((l) => l !== '');
  const parts = labels.map((l) => {
    const bytes = Buffer.from(l, 'latin1');
    if (bytes.length > 63) throw new Error(`label too long: ${l}`);
    return Buffer.concat([Buffer.from([bytes.length]), bytes]);
  });
  return Buffer.concat([...parts, Buffer.from([0])]);
}

/** The question at `offset`, or undefined when malformed. Compression pointers are followed. */
export function decodeQuestion(msg: Buffer, offset: number): Question | undefined {
  const name = decodeName(msg, offset);
  if (name === undefined || name.end + 4 > msg.length) return undefined;
  return { name: name.name, type: msg.readUInt16BE(name.end), qclass: msg.readUInt16BE(name.end + 2) };
}

/** A name and the offset just after it where it started; undefined on truncation, loops or bad labels. */
export function decodeName(msg: Buffer, offset: number): { name: string; end: number } | undefined {
  const labels: string[] = [];
  let pos = offset;
  let end: number | undefined;
  let wireLength = 1;
  for (let jumps = 0; jumps < 64;) {
    const len = msg[pos];
    if (len === undefined) return undefined;
    if ((len & 0xc0) === 0xc0) {
      const low = msg[pos + 1];
      if (low === undefined) return undefined;
      end ??= pos + 2;
      pos = ((len & 0x3f) << 8) | low;
      jumps++;
      continue;
    }
    if ((len & 0xc0) !== 0) return undefined; // 0x40 and 0x80 label types are not defined for us
    if (len === 0) return { name: labels.join('.'), end: end ?? pos + 1 };
    if (pos + 1 + len > msg.length) return undefined;
    wireLength += len + 1;
    if (wireLength > 255) return undefined;
    labels.push(msg.toString('latin1', pos + 1, pos + 1 + len));
    pos += 1 + len;
  }
  return undefined; // pointer loop
}

/** 16 bytes of an IPv6 literal (with "::" and an optional dotted IPv4 tail). */
export function ipv6Bytes(text: string): Buffer {
  if (isIP(text) !== 6) throw new Error(`not IPv6: ${text}`);
  const groups = (part: string): number[] =>
    part === ''
      ? []
      : part.split(':').flatMap((g) => {
          if (!g.includes('.')) return [parseInt(g, 16)];
          const [a = 0, b = 0, c = 0, d = 0] = g.split('.').map(Number);
          return [(a << 8) | b, (c << 8) | d];
        });
  const [head = '', tail] = text.split('::');
  const h = groups(head);
  const t = tail === undefined ? [] : groups(tail);
  const all = [...h, ...new Array<number>(8 - h.length - t.length).fill(0), ...t];
  const out = Buffer.alloc(16);
  all.forEach((g, i) => out.writeUInt16BE(g, i * 2));
  return out;
}
