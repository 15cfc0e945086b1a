import { createSocket } from 'node:dgram';
import type { Socket as UdpSocket } from 'node:dgram';
import { lookup } from 'node:dns';
import { connect, isIP } from 'node:net';
import type { Socket } from 'node:net';
import type { ActiveHealthConfig } from '../config/schema.js';
import type { Parsed } from '../config/values.js';
import { formatHostPort } from '../config/values.js';
import { checkHttpHead, compileExpect, decodeEscapes } from '../config/probe-settings.js';
import type { Matcher } from '../config/probe-settings.js';

/**
 * One active health-check attempt per probe type. A probe never rejects and always settles
 * within the configured timeout, and it destroys its socket on every path (pass, failure,
 * timeout), so a backend that accepts and never answers costs one descriptor for at most
 * `timeout`. Errors are classified by `err.code`, never by message text.
 */

/** Why a probe failed. `closed`: the backend closed before answering; `error`: every other code. */
export type ProbeFailure =
  'refused' | 'timeout' | 'reset' | 'unreachable' | 'closed' | 'unexpected_reply' | 'bad_status' | 'error';

export type ProbeResult = { readonly ok: true } | { readonly ok: false; readonly reason: ProbeFailure };

/** Where to probe: the backend's own host and port (the config's `port` overrides the port). */
export interface ProbeTarget {
  readonly host: string;
  readonly port: number;
}

/** One probe attempt. Never rejects; settles within the configured timeout. */
export type Probe = (target: ProbeTarget) => Promise<ProbeResult>;

export interface ProbeOptions {
  /** Written first, in the same write as the request, on TCP probes (PROXY v1 line or v2 LOCAL header). */
  readonly preamble?: Buffer;
}

/** At most this many reply bytes are read; a reply that has not matched by then fails. */
export const REPLY_CAP = 64 * 1024;

const PASS: ProbeResult = { ok: true };
const fail = (reason: ProbeFailure): ProbeResult => ({ ok: false, reason });

const REASON_BY_CODE: Readonly<Partial<Record<string, ProbeFailure>>> = {
  ECONNREFUSED: 'refused',
  ECONNRESET: 'reset',
  ECONNABORTED: 'reset',
  EPIPE: 'reset',
  ETIMEDOUT: 'timeout',
  EHOSTUNREACH: 'unreachable',
  ENETUNREACH: 'unreachable',
  EHOSTDOWN: 'unreachable',
  ENETDOWN: 'unreachable',
  EADDRNOTAVAIL: 'unreachable',
  EAFNOSUPPORT: 'unreachable',
  ENOTFOUND: 'unreachable',
  EAI_AGAIN: 'unreachable',
  EAI_FAIL: 'unreachable',
  EAI_NONAME: 'unreachable',
};

/** Maps a Node error to a failure reason by its `code`. */
export function classifyError(err: unknown): ProbeFailure {
  const code = typeof err === 'object' && err !== null && 'code' in err ? err.code : undefined;
  return (typeof code === 'string' ? REASON_BY_CODE[code] : undefined) ?? 'error';
}

const STATUS_LINE_RE = /^HTTP\/1\.[01] ([1-5]\d\d)(?: [^\r\n]*)?$/;
/** A status line longer than this is not HTTP. */
const STATUS_LINE_CAP = 4096;

/**
 * Reads the status code from the head of an HTTP/1.x reply. Pure and incremental: `need-more`
 * until the line ends (CRLF), `invalid` for anything that is not an HTTP/1.0 or 1.1 status line.
 */
export function parseStatusLine(reply: Buffer): number | 'need-more' | 'invalid' {
  const eol = reply.indexOf('\r\n');
  if (eol < 0) return reply.length > STATUS_LINE_CAP ? 'invalid' : 'need-more';
  const m = STATUS_LINE_RE.exec(reply.subarray(0, eol).toString('latin1'));
  return m ? Number(m[1]) : 'invalid';
}

/** `expect_status`: an exact code, or a class written `2xx`. */
export function statusMatches(status: number, expect: number | string): boolean {
  if (typeof expect === 'number') return status === expect;
  return Math.floor(status / 100) === Number(expect[0]);
}

/** A TCP conversation: what to write once connected, and how to judge the reply. */
interface Exchange {
  /** Written in one write after connecting; empty writes nothing. */
  readonly request: Buffer;
  /** Verdict on the bytes so far, or undefined to wait for more. Absent: pass once connected and written. */
  readonly judge?: (reply: Buffer) => ProbeResult | undefined;
}

function runTcp(target: ProbeTarget, timeoutMs: number, exchange: Exchange): Promise<ProbeResult> {
  return new Promise((resolve) => {
    const { judge, request } = exchange;
    let reply = Buffer.alloc(0);
    let settled = false;
    let socket: Socket | undefined;
    const finish = (result: ProbeResult): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      // destroy() closes the descriptor; with nothing unread the kernel ends with a FIN.
      socket?.destroy();
      resolve(result);
    };
    // Bytes that arrived but never matched say more than a bare timeout.
    const timer = setTimeout(
      () => finish(fail(reply.length > 0 ? 'unexpected_reply' : 'timeout')),
      timeoutMs,
    );
    const onData = (chunk: Buffer): void => {
      if (!judge) return;
      reply = Buffer.concat([reply, chunk]);
      if (reply.length > REPLY_CAP) reply = reply.subarray(0, REPLY_CAP);
      const verdict = judge(reply);
      if (verdict) finish(verdict);
      else if (reply.length >= REPLY_CAP) finish(fail('unexpected_reply'));
    };
    try {
      socket = connect({ host: target.host, port: target.port });
    } catch (err) {
      // Argument errors (a bad port) throw synchronously; a probe still only ever resolves.
      return finish(fail(classifyError(err)));
    }
    const s = socket;
    s.on('error', (err) => finish(fail(classifyError(err))));
    s.on('close', () => finish(fail('closed')));
    s.on('connect', () => {
      if (request.length === 0) {
        if (!judge) finish(PASS);
        return;
      }
      // A failed write also emits 'error', which settles the probe.
      s.write(request, (err) => {
        if (!err && !judge) finish(PASS);
      });
    });
    // Without a judge nothing is read: the probe ends at connect, and 'close' covers the rest.
    if (!judge) return;
    s.on('data', onData);
    s.on('end', () => finish(fail(reply.length > 0 ? 'unexpected_reply' : 'closed')));
  });
}

function resolveHost(host: string, done: (err: Error | null, address: string, family: number) => void): void {
  const family = isIP(host);
  if (family !== 0) queueMicrotask(() => done(null, host, family));
  else lookup(host, (err, address, fam) => done(err, address, fam));
}

function closeQuietly(socket: UdpSocket): void {
  try {
    socket.close();
  } catch {
    // Already closed: nothing left to release.
  }
}

function runUdp(
  target: ProbeTarget,
  timeoutMs: number,
  payload: Buffer,
  match: Matcher,
): Promise<ProbeResult> {
  return new Promise((resolve) => {
    let socket: UdpSocket | undefined;
    let settled = false;
    const finish = (result: ProbeResult): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (socket) closeQuietly(socket);
      resolve(result);
    };
    const timer = setTimeout(() => finish(fail('timeout')), timeoutMs);
    const exchange = (address: string, family: number): void => {
      const s = createSocket(family === 6 ? 'udp6' : 'udp4');
      socket = s;
      s.on('error', (err) => finish(fail(classifyError(err))));
      s.on('message', (msg) => finish(match(msg) ? PASS : fail('unexpected_reply')));
      // Connected, so that an ICMP port unreachable comes back as ECONNREFUSED.
      s.connect(target.port, address, (err?: Error) => {
        if (err) return finish(fail(classifyError(err)));
        if (settled) return;
        s.send(payload, (sendErr) => {
          if (sendErr) finish(fail(classifyError(sendErr)));
        });
      });
    };
    resolveHost(target.host, (lookupErr, address, family) => {
      if (settled) return;
      if (lookupErr) return finish(fail(classifyError(lookupErr)));
      try {
        exchange(address, family);
      } catch (err) {
        // Argument errors (a bad port) throw synchronously; this runs in a callback, so catch here.
        finish(fail(classifyError(err)));
      }
    });
  });
}

function httpProbe(cfg: ActiveHealthConfig, preamble: Buffer): Parsed<Probe> {
  const { path, host } = cfg;
  const head = checkHttpHead(path, host);
  if (!head.ok) return head;
  const judge = (reply: Buffer): ProbeResult | undefined => {
    const status = parseStatusLine(reply);
    if (status === 'need-more') return undefined;
    if (status === 'invalid') return fail('unexpected_reply');
    return statusMatches(status, cfg.expect_status) ? PASS : fail('bad_status');
  };
  const probe: Probe = (target) => {
    const hostHeader = host ?? formatHostPort(target.host, target.port);
    const head = `GET ${path} HTTP/1.1\r\nHost: ${hostHeader}\r\nConnection: close\r\nUser-Agent: sluice-health\r\nAccept: */*\r\n\r\n`;
    const request = Buffer.concat([preamble, Buffer.from(head, 'latin1')]);
    return runTcp(target, cfg.timeout, { request, judge });
  };
  return { ok: true, value: probe };
}

function sendExpectProbe(cfg: ActiveHealthConfig, preamble: Buffer): Parsed<Probe> {
  const send = decodeEscapes(cfg.send ?? '');
  if (!send.ok) return { ok: false, error: `send: ${send.error}` };
  const match = compileExpect(cfg.expect);
  if (!match.ok) return { ok: false, error: `expect: ${match.error}` };
  const exchange: Exchange = {
    request: Buffer.concat([preamble, send.value]),
    judge: (reply) => (match.value(reply) ? PASS : undefined),
  };
  return { ok: true, value: (target) => runTcp(target, cfg.timeout, exchange) };
}

function udpProbe(cfg: ActiveHealthConfig): Parsed<Probe> {
  const send = decodeEscapes(cfg.send ?? '');
  if (!send.ok) return { ok: false, error: `send: ${send.error}` };
  // Without `expect` any datagram back, even an empty one, proves the service answers.
  const match: Parsed<Matcher> =
    cfg.expect === undefined ? { ok: true, value: () => true } : compileExpect(cfg.expect);
  if (!match.ok) return { ok: false, error: `expect: ${match.error}` };
  return { ok: true, value: (target) => runUdp(target, cfg.timeout, send.value, match.value) };
}

function tcpProbe(cfg: ActiveHealthConfig, preamble: Buffer): Parsed<Probe> {
  return { ok: true, value: (target) => runTcp(target, cfg.timeout, { request: preamble }) };
}

function probeFor(cfg: ActiveHealthConfig, preamble: Buffer): Parsed<Probe> | undefined {
  switch (cfg.type) {
    case 'tcp':
      return tcpProbe(cfg, preamble);
    case 'send-expect':
      return sendExpectProbe(cfg, preamble);
    case 'http':
      return httpProbe(cfg, preamble);
    case 'udp':
      return udpProbe(cfg);
    case 'none':
      return undefined;
  }
}

/**
 * Builds the probe for a pool's `health.active` config, compiling `send` and `expect` once.
 * Returns `{ ok: true, value: undefined }` for `type: none` (no checker at all), and an error
 * for a bad escape, an invalid regex or an unsafe path/host (validate.ts can call this to report
 * them at load time). `tcp` without a preamble passes on connect; with one, once it is written.
 * `send-expect` without `expect` passes on any reply byte; `udp` without `expect` on any datagram.
 */
export function createProbe(cfg: ActiveHealthConfig, options: ProbeOptions = {}): Parsed<Probe | undefined> {
  const built = probeFor(cfg, options.preamble ?? Buffer.alloc(0));
  if (!built) return { ok: true, value: undefined };
  if (!built.ok || cfg.port === undefined) return built;
  const inner = built.value;
  const port = cfg.port;
  return { ok: true, value: (target) => inner({ host: target.host, port }) };
}
