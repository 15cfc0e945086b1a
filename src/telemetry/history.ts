import type { Counter } from 'prom-client';

/** One point of the status page's chart: totals since start, sampled on a timer. */
export interface Sample {
  /** Epoch milliseconds. */
  readonly t: number;
  readonly connections: number;
  readonly bytes: number;
}

async function total(counter: Counter<string>): Promise<number> {
  const m = await counter.get();
  return m.values.reduce((sum, v) => sum + v.value, 0);
}

/**
 * A short history of connection and byte totals for the status page (rates are differences of
 * neighbouring samples, computed by the page). Sampling reads the counters on a timer; nothing
 * is added to the connection path.
 */
export class History {
  readonly #samples: Sample[] = [];
  readonly #max: number;
  readonly #timer: NodeJS.Timeout;

  constructor(connections: Counter<string>, bytes: Counter<string>, everyMs = 5000, keep = 120) {
    this.#max = keep;
    const sample = (): void => {
      Promise.all([total(connections), total(bytes)])
        .then(([c, b]) => {
          this.#samples.push({ t: Date.now(), connections: c, bytes: b });
          if (this.#samples.length > this.#max) this.#samples.shift();
        })
        .catch(() => undefined);
    };
    sample();
    this.#timer = setInterval(sample, everyMs);
    this.#timer.unref();
  }

  samples(): readonly Sample[] {
    return this.#samples;
  }

  stop(): void {
    clearInterval(this.#timer);
  }
}
