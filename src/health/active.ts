import type { Clock, Random, Timer } from '../util/clock.js';
import type { ProbeResult } from './probe.js';

/** The active-health verdict a checker holds for its backend. */
export type ActiveState = 'up' | 'down';

export interface ActiveCheckerOptions {
  /**
   * One probe of this backend (`() => probe(backend)` with a probe from `createProbe`). It must
   * settle; the probes of probe.ts always do within their timeout. A rejection counts as a
   * failure with reason `error`.
   */
  readonly probe: () => Promise<ProbeResult>;
  readonly clock: Clock;
  readonly random: Random;
  /** Milliseconds between the end of one probe and the start of the next, before jitter. */
  readonly interval: number;
  /** Spread of each interval, in percent either way (0–50), drawn uniformly. */
  readonly jitter: number;
  /** Consecutive passes that turn `down` into `up`. */
  readonly rise: number;
  /** Consecutive failures that turn `up` into `down`. */
  readonly fall: number;
  /**
   * Starting verdict, held provisionally: the first result the other way flips it. Use `up` for
   * backends present at start-up (traffic flows at once; the first failed check removes it, as
   * HAProxy does) and `down` for backends added later by discovery (usable after one passing
   * check, never before any check). Once the verdict has been confirmed or flipped, `rise` and
   * `fall` apply in full.
   */
  readonly initial: ActiveState;
  /** Called exactly once per change of verdict, after `onResult` for the probe that caused it. */
  readonly onTransition?: (from: ActiveState, to: ActiveState, last: ProbeResult) => void;
  /** Called after every probe (for attempt and failure counters). */
  readonly onResult?: (result: ProbeResult) => void;
}

const PROBE_REJECTED: ProbeResult = { ok: false, reason: 'error' };

/** A callback that throws must not stop the schedule nor become an unhandled rejection. */
function guarded(fn: () => void): void {
  try {
    fn();
  } catch (err) {
    process.emitWarning(err instanceof Error ? err : new Error(String(err)), 'SluiceHealthCallback');
  }
}

/**
 * Runs active checks of one backend. The first probe starts a random offset in [0, interval)
 * after `start()`, so a pool's checks spread out; each next probe starts `interval ± jitter%`
 * after the previous one settled, so at most one probe is ever in flight, and a slow backend
 * is checked at interval + its answer time (as HAProxy and Envoy do). A pool with
 * `type: none` gets no checker.
 */
export class ActiveChecker {
  readonly #o: ActiveCheckerOptions;
  #state: ActiveState;
  /** Passes in a row while down. */
  #passes = 0;
  /** Failures in a row while up. */
  #failures = 0;
  #timer: Timer | undefined;
  #inFlight = false;
  #started = false;
  #stopped = false;
  #last: ProbeResult | undefined;

  constructor(options: ActiveCheckerOptions) {
    this.#o = options;
    this.#state = options.initial;
    // Provisional start: one step short of the threshold, so one result the other way flips it.
    if (options.initial === 'up') this.#failures = options.fall - 1;
    else this.#passes = options.rise - 1;
  }

  /** The current verdict. */
  get state(): ActiveState {
    return this.#state;
  }

  /** The result of the latest probe, undefined before the first one settles. */
  get lastResult(): ProbeResult | undefined {
    return this.#last;
  }

  /** True while a probe runs. */
  get inFlight(): boolean {
    return this.#inFlight;
  }

  /** Schedules the first probe. Calling it again, or after `stop()`, does nothing. */
  start(): void {
    if (this.#started || this.#stopped) return;
    this.#started = true;
    this.#schedule(this.#o.random() * this.#o.interval);
  }

  /**
   * Cancels the next probe; the result of a probe still in flight is ignored (no callbacks).
   * Final: a stopped checker never runs again; build a new one.
   */
  stop(): void {
    this.#stopped = true;
    this.#timer?.cancel();
    this.#timer = undefined;
  }

  #schedule(ms: number): void {
    this.#timer = this.#o.clock.setTimer(ms, () => this.#run());
  }

  /** interval ± jitter%, uniform over [interval − spread, interval + spread). */
  #nextDelay(): number {
    const spread = (this.#o.interval * this.#o.jitter) / 100;
    return this.#o.interval - spread + 2 * spread * this.#o.random();
  }

  #run(): void {
    this.#timer = undefined;
    if (this.#stopped) return;
    this.#inFlight = true;
    let pending: Promise<ProbeResult>;
    try {
      pending = this.#o.probe();
    } catch {
      pending = Promise.resolve(PROBE_REJECTED);
    }
    void pending.then(
      (result) => this.#settle(result),
      () => this.#settle(PROBE_REJECTED),
    );
  }

  #settle(result: ProbeResult): void {
    this.#inFlight = false;
    if (this.#stopped) return;
    this.#last = result;
    this.#schedule(this.#nextDelay());
    const from = this.#state;
    this.#record(result.ok);
    const to = this.#state;
    guarded(() => this.#o.onResult?.(result));
    if (to !== from) guarded(() => this.#o.onTransition?.(from, to, result));
  }

  #record(ok: boolean): void {
    if (ok) {
      this.#failures = 0;
      if (this.#state === 'down' && ++this.#passes >= this.#o.rise) {
        this.#state = 'up';
        this.#passes = 0;
      }
    } else {
      this.#passes = 0;
      if (this.#state === 'up' && ++this.#failures >= this.#o.fall) {
        this.#state = 'down';
        this.#failures = 0;
      }
    }
  }
}
