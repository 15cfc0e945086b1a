/*
 * A carrier moves one session's bytes between the client and its backend: Node streams
 * (stream-carrier.ts) or the splice relay (splice-carrier.ts). The session (session.ts) keeps the
 * decisions: which backend, retries, verdicts, deadlines, the close reason. A carrier is made
 * for one connect attempt; when it fails, the next attempt gets a new one.
 */

/** How a carried session ended: normally (who sent FIN first), or at a socket's error. */
export type CarrierEnd =
  | { readonly finFirst: 'down' | 'up'; readonly error?: undefined }
  | {
      readonly error: { readonly side: 'down' | 'up'; readonly code: string };
      readonly finFirst?: undefined;
    };

/** What a carrier tells the session it carries. Each at most once, except `answered`. */
export interface CarrierOwner {
  /** The upstream connected; bytes flow from now on (`spliced`: carried by the splice relay). */
  carrierOpen(spliced: boolean): void;
  /** The connect failed before any client byte went upstream: the client is untouched. */
  carrierConnectFailed(code: string): void;
  /** The backend sent a byte or a FIN (passive health: it answers). */
  answered(): void;
  /** The session is over: both directions finished, or a socket failed. */
  carrierEnded(end: CarrierEnd): void;
  /** The splice relay could not take the client: Node streams carry the connected upstream on. */
  carrierReplaced(next: Carrier): void;
  /** An untrusted client's first bytes were a PROXY header (a stream carrier made with `guard`). */
  untrustedHeader(sample: Buffer): void;
}

/** Bytes moved so far each way, and whether either side has sent FIN. */
export interface CarrierSample {
  up: number;
  down: number;
  halfClosed: boolean;
}

export interface Carrier {
  /**
   * Starts connecting to host:port; `prefix` (a PROXY header, bytes read during the preface) goes
   * upstream before any other client byte. Returns false when this carrier cannot reach the
   * backend (the splice relay and a host name), a failure code when the connect failed at once,
   * or true: the owner then hears carrierOpen or carrierConnectFailed.
   */
  connect(host: string, port: number, prefix: Buffer | undefined): boolean | string;
  /** Called on every sweeper tick while connecting (a carrier may learn it is open this way). */
  poll(): void;
  /**
   * The connect deadline passed, judged after the loop's I/O of that turn: true when the connect
   * completed or its outcome is on its way (no failure to count), false when it still waits.
   */
  settled(): boolean;
  /** Gives up a connect that is still waiting (its deadline passed); the client's connection stays. */
  abandon(): void;
  /** Bytes of the session this process holds in memory now (0 when the kernel holds them all). */
  buffered(): number;
  /** Fills `out` with the current byte counts and half-close state. */
  sample(out: CarrierSample): void;
  /** Ends everything now, the client's connection included; no owner callback follows. */
  destroy(): void;
}
