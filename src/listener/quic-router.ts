import type { Counter } from 'prom-client';
import type { QuicConfig } from '../config/schema.js';
import { formatHostPort } from '../config/values.js';
import {
  cidPrefixHex,
  parseQuicHeader,
  plaintextServerId,
  QUIC_MAX_V1_CID_LENGTH,
  QUIC_VERSION_NEGOTIATION,
  type ServerIdEncoding,
} from '../protocol/quic.js';
import type { Flow } from '../proxy/flow.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { Backend } from '../upstream/backend.js';
import { murmur3Bytes } from '../upstream/balancer/hash.js';
import type { Pool } from '../upstream/pool.js';

/** How a flow of a QUIC listener found its backend (the `method` label, the access line's `route`). */
export type QuicRouteMethod = 'dcid-hash' | 'server-id' | 'known-cid' | 'address';

/** Why a datagram was not routed by a connection ID (the `reason` label). */
export type QuicUnroutableReason = 'not_quic' | 'unknown_cid' | 'version_negotiation';

/** Connection IDs remembered per connection: the client's first DCID and what the backend chose. */
const MAX_CIDS_PER_CONNECTION = 8;

/**
 * One QUIC connection as this process knows it: its backend, the connection IDs that name it,
 * and how many flows (client addresses) it has. It lives as long as its flows.
 */
interface QuicConnection {
  readonly backend: Backend;
  /** Table keys (latin1 strings of the ID octets) filed for it. */
  readonly keys: string[];
  /** The first 8 octets of the connection ID that created it, in hex (access line). */
  readonly cid: string;
  flows: number;
}

/** What the router decided for a datagram from a client address with no flow. */
export type QuicRoute =
  | {
      readonly kind: 'backend';
      readonly backend: Backend;
      readonly method: Exclude<QuicRouteMethod, 'address'>;
      /** The connection ID's first octets (hex), for the access line. */
      readonly cid: string;
      /** The connection the flow joins; undefined: a new one (see attach). */
      readonly connection: QuicConnection | undefined;
      /** The table key of the DCID (latin1 of its octets); undefined when its length is unknown. */
      readonly key: string | undefined;
    }
  | { readonly kind: 'address' }
  | { readonly kind: 'drop' };

const BY_ADDRESS: QuicRoute = { kind: 'address' };
const DROP: QuicRoute = { kind: 'drop' };

/**
 * Routes a QUIC listener's new flows by Destination Connection ID (RFC 8999 invariants; works
 * for any QUIC version) and remembers which connection IDs name which backend.
 *
 * - A long header (Initial, 0-RTT, Handshake…) whose DCID is unknown goes where maglev (or
 *   ring-hash) puts the hash of that DCID: every replica with the same backends agrees, with no
 *   shared state. Initial and 0-RTT packets carry the DCID the client chose, so every copy of a
 *   client's first flight lands on one backend.
 * - A DCID this process has seen (the client's first one, or one the backend chose, learned
 *   from the Source Connection ID of its long-header replies) goes to that connection's backend.
 * - A DCID holding a QUIC-LB plaintext server ID (`quic.server_id`, `backends[].server_id`) goes
 *   to the backend with that ID: a replica that never saw the connection routes it too.
 * - Otherwise the datagram is unroutable (counted by reason): a flow by client address
 *   (`unroutable: flow`), or dropped.
 *
 * A short header has no DCID length on the wire: the router tries each length it has learned
 * (servers use one length, so usually one try), then the server ID at octet 1.
 *
 * Each new client address gets its own flow (its own upstream socket) to the chosen backend:
 * the backend sees the new path and validates it (RFC 9000 §8.2, §9) before it trusts it, so a
 * spoofed datagram carrying a known connection ID cannot redirect a connection's replies.
 */
export class QuicRouter {
  #cfg: QuicConfig;
  #encoding: ServerIdEncoding | undefined;
  /** Connections by connection ID (latin1 key of its octets). */
  readonly #byCid = new Map<string, QuicConnection>();
  /** Each live flow's connection, and how the flow was routed. */
  readonly #byFlow = new Map<Flow, { readonly conn: QuicConnection; readonly method: QuicRouteMethod }>();
  /** Lengths of the IDs in #byCid, with how many of each: the candidates for a short header. */
  readonly #lengths = new Map<number, number>();
  /** Backend addresses by server ID (latin1 key), for the pool config they were built from. */
  #serverIds = new Map<string, string>();
  #serverIdsOf: unknown;
  readonly #flowsBy: Record<QuicRouteMethod, Counter.Internal>;
  readonly #unroutableBy: Record<QuicUnroutableReason, Counter.Internal>;
  readonly #migrations: Counter.Internal;

  constructor(listener: string, cfg: QuicConfig, metrics: Metrics) {
    this.#cfg = cfg;
    this.#encoding = encodingOf(cfg);
    const f = metrics.quicFlows;
    this.#flowsBy = {
      'dcid-hash': f.labels(listener, 'dcid-hash'),
      'server-id': f.labels(listener, 'server-id'),
      'known-cid': f.labels(listener, 'known-cid'),
      address: f.labels(listener, 'address'),
    };
    const u = metrics.quicUnroutable;
    this.#unroutableBy = {
      not_quic: u.labels(listener, 'not_quic'),
      unknown_cid: u.labels(listener, 'unknown_cid'),
      version_negotiation: u.labels(listener, 'version_negotiation'),
    };
    this.#migrations = metrics.quicMigrations.labels(listener);
  }

  /** Applies a reloaded `quic` block; known connections keep their backends. */
  update(cfg: QuicConfig): void {
    this.#cfg = cfg;
    this.#encoding = encodingOf(cfg);
    this.#serverIdsOf = undefined;
  }

  get enabled(): boolean {
    return this.#cfg.enabled;
  }

  /** Connection IDs remembered (for tests and the status of the table). */
  get size(): number {
    return this.#byCid.size;
  }

  /**
   * Decides the backend of a datagram from a client address that has no flow. Never throws:
   * malformed input is `not_quic`. `kind: 'address'` means "pick by the pool's algorithm".
   */
  route(datagram: Uint8Array, pool: Pool, clientIp: string, clientPort: number): QuicRoute {
    const parsed = parseQuicHeader(datagram);
    if (parsed.kind === 'invalid') return this.#unroutable('not_quic');
    const h = parsed.header;
    if (h.form === 'long') {
      if (h.version === QUIC_VERSION_NEGOTIATION) return this.#unroutable('version_negotiation');
      if (h.dcidLength === 0) return this.#unroutable('unknown_cid');
      const key = latin1(datagram, h.dcidOffset, h.dcidLength);
      const cid = cidPrefixHex(datagram, h.dcidOffset, h.dcidLength);
      const known = this.#byCid.get(key);
      if (known !== undefined) return joined(known, key, cid);
      const bySid = this.#byServerId(datagram, h.dcidOffset, h.dcidLength, pool);
      if (bySid !== undefined) return routed(bySid, 'server-id', key, cid);
      const hash = murmur3Bytes(datagram, h.dcidOffset, h.dcidOffset + h.dcidLength);
      const backend = pool.pick({ clientIp, clientPort, sni: undefined, hash }, undefined);
      // No ready backend: the caller counts it as no_backend, as for any flow.
      return backend === undefined ? BY_ADDRESS : routed(backend, 'dcid-hash', key, cid);
    }
    for (const length of this.#lengths.keys()) {
      if (datagram.length < 1 + length) continue;
      const key = latin1(datagram, 1, length);
      const known = this.#byCid.get(key);
      if (known === undefined) continue;
      this.#migrations.inc();
      return joined(known, key, cidPrefixHex(datagram, 1, length));
    }
    const bySid = this.#byServerId(datagram, 1, datagram.length - 1, pool);
    if (bySid !== undefined) {
      this.#migrations.inc();
      // The ID's length is not on the wire: nothing is filed, the server ID routes it each time.
      const length = 1 + (this.#encoding?.serverIdLength ?? 0);
      return routed(bySid, 'server-id', undefined, cidPrefixHex(datagram, 1, length));
    }
    return this.#unroutable('unknown_cid');
  }

  /**
   * Files a new flow: under the route's connection (a new one for `dcid-hash` and `server-id`),
   * or, for an `address` route, only counted. Call once the flow exists.
   */
  attach(flow: Flow, route: QuicRoute | undefined): void {
    if (route === undefined || route.kind !== 'backend') {
      this.#flowsBy.address.inc();
      return;
    }
    this.#flowsBy[route.method].inc();
    let conn = route.connection;
    if (conn === undefined || conn.flows === 0) {
      conn = { backend: route.backend, keys: [], cid: route.cid, flows: 0 };
      if (route.key !== undefined) this.#file(conn, route.key);
    }
    conn.flows++;
    this.#byFlow.set(flow, { conn, method: route.method });
  }

  /** The flow ended: its connection is forgotten with its last flow. */
  detach(flow: Flow): void {
    const conn = this.#byFlow.get(flow)?.conn;
    if (conn === undefined) return;
    this.#byFlow.delete(flow);
    if (--conn.flows > 0) return;
    for (const key of conn.keys) {
      if (this.#byCid.get(key) !== conn) continue;
      this.#byCid.delete(key);
      const n = (this.#lengths.get(key.length) ?? 1) - 1;
      if (n === 0) this.#lengths.delete(key.length);
      else this.#lengths.set(key.length, n);
    }
  }

  /**
   * The backend of `flow` sent a long-header packet whose Source Connection ID is
   * bytes[offset, offset + length): an ID it chose for the connection (or a Retry's). Filed so
   * that the client's packets carrying it reach this backend from any address.
   */
  learn(flow: Flow, bytes: Uint8Array, offset: number, length: number): void {
    const conn = this.#byFlow.get(flow)?.conn;
    // Longer IDs than QUIC v1 and v2 allow are not learned (the splice relay reports none).
    if (conn === undefined || length === 0 || length > QUIC_MAX_V1_CID_LENGTH) return;
    if (offset + length > bytes.length) return;
    if (conn.keys.length >= MAX_CIDS_PER_CONNECTION) return;
    this.#file(conn, latin1(bytes, offset, length));
  }

  /** The access line's fields for a flow: its route and connection ID prefix. */
  describe(flow: Flow): { route: QuicRouteMethod; cid: string | undefined } {
    const r = this.#byFlow.get(flow);
    return r === undefined ? { route: 'address', cid: undefined } : { route: r.method, cid: r.conn.cid };
  }

  #file(conn: QuicConnection, key: string): void {
    // Longer IDs than QUIC v1 and v2 allow are routed by hash, never filed: a short header is
    // tried at each filed length, so the lengths stay few (at most 20).
    if (key.length > QUIC_MAX_V1_CID_LENGTH) return;
    // An ID already naming a live connection keeps it (first come, first kept).
    if (this.#byCid.has(key) || conn.keys.includes(key)) return;
    conn.keys.push(key);
    this.#byCid.set(key, conn);
    this.#lengths.set(key.length, (this.#lengths.get(key.length) ?? 0) + 1);
  }

  #unroutable(reason: QuicUnroutableReason): QuicRoute {
    this.#unroutableBy[reason].inc();
    return this.#cfg.unroutable === 'drop' ? DROP : BY_ADDRESS;
  }

  /** The backend whose QUIC-LB server ID the connection ID at `offset` carries, if any. */
  #byServerId(bytes: Uint8Array, offset: number, available: number, pool: Pool): Backend | undefined {
    const enc = this.#encoding;
    if (enc === undefined) return undefined;
    const at = plaintextServerId(bytes, offset, available, enc);
    if (at === undefined) return undefined;
    const address = this.#serverIdMap(pool).get(latin1(bytes, at[0], at[1]));
    return address === undefined ? undefined : pool.get(address);
  }

  /** Server IDs of the pool's configured backends, rebuilt when the pool's config changes. */
  #serverIdMap(pool: Pool): Map<string, string> {
    if (this.#serverIdsOf === pool.config) return this.#serverIds;
    const map = new Map<string, string>();
    for (const b of pool.config.backends)
      if (b.server_id !== undefined)
        map.set(
          Buffer.from(b.server_id, 'hex').toString('latin1'),
          formatHostPort(b.address.host, b.address.port),
        );
    this.#serverIds = map;
    this.#serverIdsOf = pool.config;
    return map;
  }
}

function encodingOf(cfg: QuicConfig): ServerIdEncoding | undefined {
  const s = cfg.server_id;
  return s === undefined ? undefined : { configRotation: s.config_rotation, serverIdLength: s.length };
}

function latin1(bytes: Uint8Array, offset: number, length: number): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset + offset, length).toString('latin1');
}

function routed(
  backend: Backend,
  method: 'dcid-hash' | 'server-id',
  key: string | undefined,
  cid: string,
): QuicRoute {
  return { kind: 'backend', backend, method, cid, connection: undefined, key };
}

function joined(conn: QuicConnection, key: string, cid: string): QuicRoute {
  return { kind: 'backend', backend: conn.backend, method: 'known-cid', cid, connection: conn, key };
}
