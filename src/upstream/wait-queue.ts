/** A session waiting in a pool's queue for a backend slot (max_connections_per_backend). */
export interface QueueWaiter {
  /**
   * A slot may have freed: pick again and, when a backend has room, take it and start connecting.
   * Returns true when the waiter took a slot (the queue then drops it).
   */
  retryQueued(): boolean;
}

/**
 * The FIFO of sessions waiting for a backend slot, as HAProxy's maxconn/maxqueue: bounded, in
 * arrival order. A Set keeps insertion order and deletes in O(1).
 */
export class WaitQueue {
  readonly #waiters = new Set<QueueWaiter>();

  get size(): number {
    return this.#waiters.size;
  }

  /** Puts `w` at the back; false when `max` are waiting already. */
  add(w: QueueWaiter, max: number): boolean {
    if (this.#waiters.has(w)) return true;
    if (this.#waiters.size >= max) return false;
    this.#waiters.add(w);
    return true;
  }

  /** Takes `w` out (it timed out or its client left). */
  delete(w: QueueWaiter): void {
    this.#waiters.delete(w);
  }

  /**
   * Offers free slots to waiters in arrival order. After one release (`all` false) one slot is
   * free: the first waiter able to use it takes it (a later one only when the earlier ones
   * already tried that backend). After a rebuild (`all` true) waiters are served from the head
   * until one finds no room.
   */
  serve(all: boolean): void {
    for (const w of this.#waiters) {
      if (w.retryQueued()) {
        this.#waiters.delete(w);
        if (!all) return;
      } else if (all) {
        return;
      }
    }
  }
}
