import type { Tlv } from '../protocol/proxy-parse.js';
import type { RejectReason } from '../telemetry/metrics.js';
import type { PickContext } from '../upstream/balancer/picker.js';
import type { Downstream } from './downstream.js';

let sequence = 0;
const idPrefix = `${process.pid.toString(36)}${Date.now().toString(36).slice(-4)}`;

/**
 * Who a session's client is, as far as sluice knows: its address (the PROXY header's once
 * trusted), the address it connected to, what its ClientHello named, the TLVs it brought. The
 * picker (hash keys), the ACL, the PROXY header sent upstream and the access log read it.
 */
export abstract class SessionIdentity implements PickContext {
  readonly #seq = ++sequence;
  /** The client's connection, in whichever form (a bare descriptor, or a net.Socket). */
  abstract readonly downstream: Downstream;
  /** The client as seen after a trusted PROXY header. */
  clientIp: string;
  clientPort: number;
  #local: { ip: string; port: number } | undefined;
  sni: string | undefined;
  alpn: readonly string[] = [];
  /** Client bytes read during the preface (PROXY header stripped), replayed upstream first. */
  pending: Buffer | undefined;
  /**
   * Length of the PROXY header read from a trusted client. The carriers count every byte read
   * from the client; the header is not payload (the backend never gets it), so the session takes
   * it off what it reports as bytes_in.
   */
  proxyHeaderBytes = 0;
  /** TLVs received in a trusted PROXY v2 header, for relaying. */
  receivedTlvs: readonly Tlv[] = [];
  /** Refuse a PROXY signature at the start of the client's bytes (untrusted source on a PROXY-in listener). */
  guardProxySignature = false;
  /** Why the listener turned this session away (the access line's `rejected`). */
  rejected: RejectReason | undefined;
  /** The listener counted this client in its per-source limits (released when the session ends). */
  sourceCounted = false;
  readonly started = performance.now();

  constructor(clientIp: string, clientPort: number) {
    this.clientIp = clientIp;
    this.clientPort = clientPort;
  }

  /** The id the access log prints and the PROXY v2 UNIQUE_ID carries. */
  get id(): string {
    return `${idPrefix}-${this.#seq.toString(36)}`;
  }

  /** The address the client connected to (the PROXY header's destination when trusted). */
  get localIp(): string {
    return (this.#local ??= this.downstream.localAddress()).ip;
  }

  get localPort(): number {
    return (this.#local ??= this.downstream.localAddress()).port;
  }

  /** Sets the destination a trusted PROXY header named. */
  setLocal(ip: string, port: number): void {
    this.#local = { ip, port };
  }

  /** The session is its own pick context (client address and SNI): no object per pick. */
  get pickContext(): PickContext {
    return this;
  }
}
