/**
 * One coarse timer for every deadline on the data path (idle, connect, preface, drain), instead
 * of a timer per socket. Each tick visits every registered item; an item compares its own
 * deadlines with `now`. Deadlines are therefore late by up to one tick.
 */
export interface Sweepable {
  /** Called once per tick with the tick's time (performance.now() milliseconds). */
  sweep(now: number): void;
}

export class Sweeper {
  readonly #items = new Set<Sweepable>();
  #tickMs: number;
  #timer: NodeJS.Timeout | undefined;
  /** Time of the last tick; cheap to read on the hot path. */
  now = performance.now();

  constructor(tickMs: number) {
    this.#tickMs = tickMs;
  }

  get tickMs(): number {
    return this.#tickMs;
  }

  get size(): number {
    return this.#items.size;
  }

  add(item: Sweepable): void {
    this.#items.add(item);
    if (this.#timer === undefined) {
      this.#timer = setInterval(() => this.#tick(), this.#tickMs);
      this.#timer.unref();
    }
  }

  delete(item: Sweepable): void {
    this.#items.delete(item);
  }

  /** Changes the tick (reload with other timeouts); takes effect at once. */
  setTick(ms: number): void {
    if (ms === this.#tickMs) return;
    this.#tickMs = ms;
    if (this.#timer !== undefined) {
      clearInterval(this.#timer);
      this.#timer = setInterval(() => this.#tick(), ms);
      this.#timer.unref();
    }
  }

  stop(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
  }

  #tick(): void {
    const now = (this.now = performance.now());
    for (const item of this.#items) item.sweep(now);
  }
}
