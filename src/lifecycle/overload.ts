import type { Config } from '../config/schema.js';
import type { Logger } from '../telemetry/logger.js';

export type OverloadConfig = Config['overload'];

/** Reads the memory figure the guard compares with `max_memory`, in bytes. */
export type MemorySampler = (measure: OverloadConfig['measure']) => number;

const processMemory: MemorySampler = (measure) =>
  measure === 'heap' ? process.memoryUsage().heapUsed : process.memoryUsage.rss();

/**
 * The overload guard. Memory is sampled on its own unref'd timer, never per connection: reading
 * RSS is a system call and heap statistics walk V8's spaces, both far too slow for the accept
 * path, which only reads the boolean `active`.
 *
 * Hysteresis: the guard turns on at `max_memory` and off only below `max_memory * resume_ratio`,
 * so a process hovering at the threshold does not flap between accepting and refusing.
 */
export class OverloadGuard {
  #cfg: OverloadConfig;
  readonly #logger: Logger;
  readonly #sample: MemorySampler;
  #timer: NodeJS.Timeout | undefined;
  #active = false;
  /** Last figure read, in bytes (0 while the guard is off). */
  lastSample = 0;

  constructor(cfg: OverloadConfig, logger: Logger, sample: MemorySampler = processMemory) {
    this.#cfg = cfg;
    this.#logger = logger;
    this.#sample = sample;
  }

  /** True while new connections must be refused. Cheap: a field read. */
  get active(): boolean {
    return this.#active;
  }

  /** Starts sampling when a threshold is set. */
  start(): void {
    this.#schedule();
  }

  /** Applies a reloaded config; the next sample uses it at once. */
  update(cfg: OverloadConfig): void {
    const intervalChanged = cfg.interval !== this.#cfg.interval;
    this.#cfg = cfg;
    if (intervalChanged || cfg.max_memory > 0 !== (this.#timer !== undefined)) this.#schedule();
    if (cfg.max_memory > 0) this.check();
  }

  stop(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** Takes one sample and moves the state; the timer calls this, tests may too. */
  check(): void {
    const { max_memory: max, resume_ratio: ratio, measure } = this.#cfg;
    if (max <= 0) {
      this.#set(false, 0);
      return;
    }
    const used = this.#sample(measure);
    this.lastSample = used;
    if (!this.#active && used >= max) this.#set(true, used);
    else if (this.#active && used < max * ratio) this.#set(false, used);
  }

  #schedule(): void {
    this.stop();
    if (this.#cfg.max_memory <= 0) {
      this.#set(false, 0);
      return;
    }
    this.#timer = setInterval(() => this.check(), Math.max(10, this.#cfg.interval));
    this.#timer.unref();
  }

  #set(active: boolean, used: number): void {
    if (active === this.#active) return;
    this.#active = active;
    const fields = { measure: this.#cfg.measure, used_bytes: used, max_memory: this.#cfg.max_memory };
    if (active) this.#logger.warn(fields, 'overloaded: refusing new connections');
    else this.#logger.info(fields, 'overload cleared: accepting again');
  }
}
