import type { Sweepable } from '../util/sweeper.js';
import type { Flow } from './flow.js';

/** The longest pause between two scans of a table for idle flows. */
const MAX_SCAN_INTERVAL_MS = 1000;

/**
 * A listener's live flows by `${address}:${port}` of the client, and their expiry.
 *
 * The same scan reports each flow's relayed datagrams and bytes to the metrics, so the
 * datagram path itself touches no metric.
 *
 * Expiry is a periodic scan over last-activity times driven by the process Sweeper (one timer
 * for everything), never a timer per flow. A full scan is O(flows), so it runs at most every
 * flow_idle/10 (capped at one second) rather than on every tick: 100 000 flows cost a
 * millisecond or so a second. A flow is expired once it has been silent both ways for
 * `idleMs` plus one sweeper tick, because activity is stamped with the coarse tick time; it
 * therefore never expires early and is late by at most two ticks plus the scan interval.
 */
export class FlowTable implements Sweepable {
  readonly #flows = new Map<string, Flow>();
  #idleMs: number;
  readonly #tickMs: number;
  #nextScan = 0;

  constructor(idleMs: number, tickMs: number) {
    this.#idleMs = idleMs;
    this.#tickMs = tickMs;
  }

  get size(): number {
    return this.#flows.size;
  }

  /** Applies a new flow_idle (reload); live flows are judged by it from the next scan. */
  set idleMs(ms: number) {
    this.#idleMs = ms;
    this.#nextScan = 0;
  }

  get(key: string): Flow | undefined {
    return this.#flows.get(key);
  }

  add(flow: Flow): void {
    this.#flows.set(flow.key, flow);
  }

  /** Removes `flow` if it is still the one filed under its key. */
  delete(flow: Flow): void {
    if (this.#flows.get(flow.key) === flow) this.#flows.delete(flow.key);
  }

  /** Every flow, as a copy: closing flows while walking it is safe. */
  all(): Flow[] {
    return [...this.#flows.values()];
  }

  sweep(now: number): void {
    if (now < this.#nextScan) return;
    this.#nextScan = now + Math.min(MAX_SCAN_INTERVAL_MS, this.#idleMs / 10);
    const limit = this.#idleMs + this.#tickMs;
    // Deleting the current entry while iterating a Map is safe; close() removes it.
    for (const flow of this.#flows.values()) {
      flow.poll(now);
      if (now - flow.lastActive >= limit) flow.close('idle_timeout');
      else flow.flushCounters();
    }
  }
}
