import type { Clock, Timer } from '../util/clock.js';

/** What passive health needs of a backend (the Backend class fits). */
export interface Ejectable {
  readonly key: string;
  /** Ejection end on the Clock's timeline; 0 when not ejected. Written by PassiveHealth. */
  ejectedUntil: number;
}

export interface PassiveHealthOptions<T extends Ejectable> {
  /** Failures in a row that eject a backend; 0 disables passive health. */
  readonly consecutiveFailures: number;
  /** Base ejection time in milliseconds. */
  readonly ejection: number;
  /** Most backends of the pool, in percent, ejected at once (0 = never eject). */
  readonly maxEjectionPercent: number;
  readonly clock: Clock;
  /** The pool's current backends; read at each ejection to apply the percent cap. */
  readonly members: () => readonly T[];
  /** A backend was ejected until `until`; `count` is its ejections in a row (1 for the first). */
  readonly onEject?: (backend: T, until: number, count: number) => void;
  /** An ejection ended (from a timer at its end): the pool rebuilds its picker. */
  readonly onReturn?: (backend: T) => void;
  /**
   * Whether ejecting `backend` leaves the pool something to send sessions to (another ready
   * backend); when false the backend stays in. Default: always.
   */
  readonly mayEject?: (backend: T) => boolean;
  /** An ejection was held back by `mayEject`: told once per run of failures. */
  readonly onHeld?: (backend: T) => void;
}

/** An ejection never lasts longer than this many base ejection times. */
export const MAX_EJECTION_FACTOR = 10;

interface Track {
  /** Failures in a row since the last success or ejection. */
  failures: number;
  /** Ejections in a row (k). */
  ejections: number;
  /** When the latest ejection ended. */
  returnedAt: number;
  timer: Timer | undefined;
  /** An ejection was held back (last ready backend) since the last success. */
  held: boolean;
}

/** A callback that throws from a timer must not take the process down. */
function guarded(fn: () => void): void {
  try {
    fn();
  } catch (err) {
    process.emitWarning(err instanceof Error ? err : new Error(String(err)), 'SluiceHealthCallback');
  }
}

/**
 * Passive health (outlier ejection) for one pool, fed by sessions. Rules:
 * - `consecutiveFailures` failures in a row (no success between) eject the backend for
 *   `ejection × 2^(k−1)`, capped at {@link MAX_EJECTION_FACTOR} × `ejection`, where k counts its
 *   ejections in a row.
 * - k returns to 0 on a success reported at least one base `ejection` after the latest ejection
 *   ended: the backend has stayed in and served for a full period.
 * - At most `maxEjectionPercent` of the pool's current members are ejected at once, rounded down
 *   but never below one, unless the percent is 0. Never the last ready backend (`mayEject`): a
 *   pool of one keeps its backend, and the pool's panic mode covers the rest. A failure refused
 *   by either keeps its count, so the next one tries again.
 * - Failures and successes reported while a backend is ejected (sessions begun before) are
 *   ignored: they neither extend the ejection nor reset k.
 * Readiness reads `ejectedUntil` lazily; a timer at the ejection end also clears it and calls
 * `onReturn`, so the pool learns when to rebuild its picker.
 */
export class PassiveHealth<T extends Ejectable> {
  readonly #o: PassiveHealthOptions<T>;
  readonly #tracks = new Map<T, Track>();

  constructor(options: PassiveHealthOptions<T>) {
    this.#o = options;
  }

  /** True when `consecutiveFailures` is 0: reports are ignored. */
  get disabled(): boolean {
    return this.#o.consecutiveFailures <= 0;
  }

  /** A session could not connect, or was reset before any byte came back. */
  failure(backend: T): void {
    if (this.disabled) return;
    const now = this.#o.clock.now();
    if (backend.ejectedUntil > now) return;
    const track = this.#track(backend);
    track.failures++;
    if (track.failures < this.#o.consecutiveFailures || !this.#mayEject(now)) return;
    if (this.#o.mayEject?.(backend) === false) {
      if (!track.held) this.#o.onHeld?.(backend);
      track.held = true;
      return;
    }
    this.#eject(backend, track, now);
  }

  /** A session connected. */
  success(backend: T): void {
    const track = this.#tracks.get(backend);
    if (!track) return;
    const now = this.#o.clock.now();
    if (backend.ejectedUntil > now) return;
    track.failures = 0;
    track.held = false;
    if (track.ejections > 0 && now >= track.returnedAt + this.#o.ejection) track.ejections = 0;
    // A clean backend needs no state; this keeps the map as small as the trouble.
    if (track.ejections === 0 && track.timer === undefined) this.#tracks.delete(backend);
  }

  /** Ejections in a row for `backend` (0 when none or reset). */
  ejections(backend: T): number {
    return this.#tracks.get(backend)?.ejections ?? 0;
  }

  /** Drops a backend that left the pool: cancels its return timer (no `onReturn`). */
  forget(backend: T): void {
    this.#tracks.get(backend)?.timer?.cancel();
    this.#tracks.delete(backend);
  }

  /** Cancels every return timer (pool removed or replaced on reload). */
  stop(): void {
    for (const track of this.#tracks.values()) track.timer?.cancel();
    this.#tracks.clear();
  }

  #track(backend: T): Track {
    let track = this.#tracks.get(backend);
    if (!track) {
      track = { failures: 0, ejections: 0, returnedAt: 0, timer: undefined, held: false };
      this.#tracks.set(backend, track);
    }
    return track;
  }

  #mayEject(now: number): boolean {
    const percent = this.#o.maxEjectionPercent;
    if (percent <= 0) return false;
    const members = this.#o.members();
    const limit = Math.max(1, Math.floor((members.length * percent) / 100));
    let ejected = 0;
    for (const m of members) if (m.ejectedUntil > now) ejected++;
    return ejected < limit;
  }

  #eject(backend: T, track: Track, now: number): void {
    const base = this.#o.ejection;
    track.ejections++;
    track.failures = 0;
    const span = Math.min(base * 2 ** (track.ejections - 1), base * MAX_EJECTION_FACTOR);
    const until = now + span;
    backend.ejectedUntil = until;
    track.timer = this.#o.clock.setTimer(span, () => this.#return(backend, track));
    guarded(() => this.#o.onEject?.(backend, until, track.ejections));
  }

  #return(backend: T, track: Track): void {
    track.timer = undefined;
    track.returnedAt = this.#o.clock.now();
    backend.ejectedUntil = 0;
    guarded(() => this.#o.onReturn?.(backend));
  }
}
