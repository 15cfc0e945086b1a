import type net from 'node:net';
import type { ListenerConfig } from '../config/schema.js';
import { parseClientHello } from '../protocol/client-hello.js';
import { parseProxyHeader, sniffProxySignature } from '../protocol/proxy-parse.js';
import type { ProxyHeader } from '../protocol/proxy-parse.js';
import { SniRouter } from '../protocol/sni-match.js';
import type { RejectReason } from '../telemetry/metrics.js';
import { CidrSet, normalizeIp } from '../util/cidr.js';
import type { Session } from './session.js';

/** What the preface asks of the listener that owns the session. */
export interface PrefaceHost {
  allowed(ip: string): boolean;
  admitSource(session: Session): boolean;
  reject(session: Session, reason: RejectReason): void;
  route(session: Session, pool: string): void;
  /** Counts a refused PROXY header by parser reason (and logs it, escaped). */
  proxyError(session: Session, reason: string, sample: Buffer): void;
}

interface Pending {
  readonly session: Session;
  readonly host: PrefaceHost;
  readonly plan: PrefacePlan;
  buf: Buffer;
  /** The PROXY stage is still ahead. */
  needHeader: boolean;
}

const pending = new WeakMap<net.Socket, Pending>();

/**
 * The stage between accept and connect, for listeners with `proxy_protocol_in` or `tls`: reads
 * the PROXY header (only from trusted sources) and the TLS ClientHello (SNI, ALPN), within
 * `timeouts.preface` and a byte cap, then routes. Every byte read is replayed upstream untouched
 * (the PROXY header excepted): the backend's handshake completes as if sluice were not there.
 *
 * Parsers are pure and see the bytes gathered so far; a header arriving byte by byte works.
 */
export class PrefacePlan {
  readonly #cfg: ListenerConfig;
  readonly #trusted: CidrSet | undefined;
  readonly #router: SniRouter<string> | undefined;

  constructor(cfg: ListenerConfig) {
    this.#cfg = cfg;
    this.#trusted = cfg.proxy_protocol_in ? CidrSet.parse(cfg.proxy_protocol_in.trusted) : undefined;
    this.#router = cfg.tls
      ? new SniRouter(cfg.tls.routes.map((r) => ({ sni: r.sni, target: r.pool })))
      : undefined;
  }

  /** True when this listener reads anything before connecting. */
  static needed(cfg: ListenerConfig): boolean {
    return cfg.proxy_protocol_in !== undefined || cfg.tls !== undefined;
  }

  get maxHeaderBytes(): number {
    return this.#cfg.proxy_protocol_in?.max_header_bytes ?? 0;
  }

  /** Takes over a new session; ends with host.route(...) or host.reject(...). */
  begin(session: Session, host: PrefaceHost): void {
    const trusted = this.#trusted?.has(session.clientIp) ?? false;
    if (!trusted) {
      // No header can change the client address: apply the ACL and limits now.
      if (!host.allowed(session.clientIp)) return host.reject(session, 'acl');
      if (!host.admitSource(session)) return;
      if (this.#router === undefined) {
        // Nothing to read first (PROXY-in only, untrusted client): connect at once so
        // server-speaks-first protocols work, and refuse a PROXY signature in the first bytes.
        session.guardProxySignature = true;
        return host.route(session, this.#cfg.pool);
      }
    }
    const state: Pending = { session, host, plan: this, buf: EMPTY, needHeader: trusted };
    const down = session.downstream.socket();
    pending.set(down, state);
    session.armPreface(this.#cfg.timeouts.preface);
    down.on('data', onPrefaceData);
    down.on('end', onPrefaceEnd);
    down.resume();
  }

  /** Runs the stages on the bytes gathered so far; true once the session has left the preface. */
  step(p: Pending, ended: boolean): boolean {
    const { session, host } = p;
    if (p.needHeader) {
      const r = parseProxyHeader(p.buf, this.maxHeaderBytes);
      if (r.kind === 'need-more') {
        if (!ended) return false;
        host.proxyError(session, 'truncated', p.buf);
        host.reject(session, 'proxy_protocol');
        return true;
      }
      if (r.kind === 'invalid') {
        host.proxyError(session, r.reason, p.buf);
        host.reject(session, 'proxy_protocol');
        return true;
      }
      if (r.header.command === 'proxy' && r.header.family === 'unix') {
        // A UNIX-socket source means nothing to a TCP balancer's ACLs and logs: refuse it.
        host.proxyError(session, 'unix_family', p.buf);
        host.reject(session, 'proxy_protocol');
        return true;
      }
      applyHeader(session, r.header);
      session.proxyHeaderBytes = r.length;
      p.buf = p.buf.subarray(r.length);
      p.needHeader = false;
      if (!host.allowed(session.clientIp)) {
        host.reject(session, 'acl');
        return true;
      }
      if (!host.admitSource(session)) return true;
    } else if (this.#trusted !== undefined) {
      const sniff = sniffProxySignature(p.buf);
      if (sniff === 'v1' || sniff === 'v2') {
        host.proxyError(session, 'untrusted_source', p.buf);
        host.reject(session, 'proxy_protocol');
        return true;
      }
      if (sniff === 'need-more' && !ended) return false;
    }
    if (this.#router === undefined) return this.#done(p, this.#cfg.pool);
    return this.#tls(p, ended);
  }

  #tls(p: Pending, ended: boolean): boolean {
    const tls = this.#cfg.tls;
    if (tls === undefined) return this.#done(p, this.#cfg.pool);
    const r = parseClientHello(p.buf);
    if (r.kind === 'need-more' && !ended) return false;
    if (r.kind === 'need-more' || r.kind === 'invalid') {
      p.host.reject(p.session, 'tls');
      return true;
    }
    if (r.kind === 'not-tls') {
      if (tls.on_non_tls === 'default') return this.#done(p, this.#cfg.pool);
      p.host.reject(p.session, 'tls');
      return true;
    }
    p.session.sni = r.sni;
    p.session.alpn = r.alpn;
    const routed = this.#router?.match(r.sni);
    if (routed !== undefined) return this.#done(p, routed);
    if (tls.on_no_match === 'default') return this.#done(p, this.#cfg.pool);
    p.host.reject(p.session, 'tls');
    return true;
  }

  #done(p: Pending, pool: string): boolean {
    const down = p.session.downstream.socket();
    down.pause();
    down.off('data', onPrefaceData);
    down.off('end', onPrefaceEnd);
    pending.delete(down);
    if (p.buf.length > 0) p.session.pending = Buffer.from(p.buf);
    p.host.route(p.session, pool);
    return true;
  }

  /** Most bytes the preface may hold before it must have decided. */
  get cap(): number {
    return this.maxHeaderBytes + (this.#router !== undefined ? 16 * 1024 + 5 * 4 : 0) + 16;
  }
}

const EMPTY = Buffer.alloc(0);

function applyHeader(session: Session, h: ProxyHeader): void {
  if (h.command === 'proxy' && h.source !== undefined) {
    session.clientIp = normalizeIp(h.source.ip);
    session.clientPort = h.source.port;
    if (h.destination !== undefined) session.setLocal(normalizeIp(h.destination.ip), h.destination.port);
  }
  // LOCAL (a cloud balancer's own health check) and UNKNOWN keep the socket's addresses.
  session.receivedTlvs = h.tlvs;
}

function onPrefaceData(this: net.Socket, chunk: Buffer): void {
  const p = pending.get(this);
  if (p === undefined) return;
  p.buf = p.buf.length === 0 ? chunk : Buffer.concat([p.buf, chunk]);
  if (p.plan.step(p, false)) {
    pending.delete(this);
    return;
  }
  if (p.buf.length > p.plan.cap) {
    pending.delete(this);
    p.host.reject(p.session, p.needHeader ? 'proxy_protocol' : 'tls');
  }
}

function onPrefaceEnd(this: net.Socket): void {
  const p = pending.get(this);
  if (p === undefined) return;
  pending.delete(this);
  p.plan.step(p, true);
}
