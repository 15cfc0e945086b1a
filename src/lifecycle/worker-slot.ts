import { fork } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Logger } from '../telemetry/logger.js';
import { parseFromWorker } from './worker-protocol.js';
import type { FromWorker, RequestBody, ToWorker } from './worker-protocol.js';

const WORKER_ENTRY = fileURLToPath(new URL('./worker-main.js', import.meta.url));

/** What the primary hears from one worker process. */
export interface SlotEvents {
  ready(slot: WorkerSlot): void;
  failed(slot: WorkerSlot, message: string, code: number): void;
  exit(slot: WorkerSlot, code: number | null, signal: NodeJS.Signals | null): void;
}

/**
 * One worker's place (1..N) under the primary: the current process in it, its readiness, its
 * last reported per-backend counts, and its crash history (which outlives the process, so a
 * worker that keeps crashing is noticed). Requests are numbered and answered by id; a request
 * to a worker that dies or does not answer in time resolves to undefined.
 */
export class WorkerSlot {
  readonly index: number;
  readonly #logger: Logger;
  readonly #events: SlotEvents;
  child: ChildProcess | undefined;
  ready = false;
  /** Open sessions per backend key on this worker, as last reported. */
  counts = new Map<string, number>();
  /** performance.now() of recent crashes. */
  crashes: number[] = [];
  restartTimer: NodeJS.Timeout | undefined;
  #nextId = 1;
  readonly #pending = new Map<number, (body: unknown) => void>();

  constructor(index: number, logger: Logger, events: SlotEvents) {
    this.index = index;
    this.#logger = logger;
    this.#events = events;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  get alive(): boolean {
    return this.child !== undefined;
  }

  /** Forks a worker process and sends it `start`. */
  spawn(start: Extract<ToWorker, { t: 'start' }>, passedFds: readonly number[] = []): void {
    const env = { ...process.env };
    delete env.NOTIFY_SOCKET; // only the primary speaks to systemd
    const child = fork(WORKER_ENTRY, [], {
      env,
      // Own process group: a terminal's Ctrl-C reaches the primary only, which then drains the
      // workers in order. A worker whose primary dies sees the IPC channel close and drains.
      detached: true,
      // Sockets systemd passed to the primary follow the IPC channel (see PassedSockets.forWorkers).
      stdio: ['ignore', 'inherit', 'inherit', 'ipc', ...passedFds],
    });
    this.child = child;
    this.ready = false;
    this.counts = new Map();
    child.on('error', (err) => this.#logger.error({ err, worker: this.index }, 'worker process error'));
    child.on('message', (raw: unknown) => this.#onMessage(parseFromWorker(raw)));
    child.on('exit', (code, signal) => {
      if (this.child !== child) return;
      this.child = undefined;
      this.ready = false;
      for (const resolve of this.#pending.values()) resolve(undefined);
      this.#pending.clear();
      this.#events.exit(this, code, signal);
    });
    this.send(start);
  }

  send(m: ToWorker): void {
    const child = this.child;
    if (child?.connected !== true) return;
    child.send(m, (err) => {
      // The channel closed between the check and the write: the exit handler deals with it.
      if (err !== null) this.#logger.debug({ err: err.message, worker: this.index }, 'IPC send failed');
    });
  }

  /** Asks this worker; undefined when it is gone or silent for `timeoutMs`. */
  request(body: RequestBody, timeoutMs: number): Promise<unknown> {
    if (this.child?.connected !== true) return Promise.resolve(undefined);
    const id = this.#nextId++;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        resolve(undefined);
      }, timeoutMs);
      this.#pending.set(id, (answer) => {
        clearTimeout(timer);
        this.#pending.delete(id);
        resolve(answer);
      });
      this.send({ ...body, t: 'req', id });
    });
  }

  kill(signal: NodeJS.Signals): void {
    try {
      this.child?.kill(signal);
    } catch {
      // already gone
    }
  }

  #onMessage(m: FromWorker | undefined): void {
    if (m === undefined) return;
    switch (m.t) {
      case 'ready':
        this.ready = true;
        this.#events.ready(this);
        return;
      case 'failed':
        this.#events.failed(this, m.message, m.code);
        return;
      case 'res':
        this.#pending.get(m.id)?.(m.body);
        return;
      case 'counts':
        this.counts = new Map(m.counts);
        return;
    }
  }
}
