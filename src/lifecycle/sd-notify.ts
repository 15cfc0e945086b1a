import { spawn } from 'node:child_process';
import type { Logger } from '../telemetry/logger.js';

/** How long one `systemd-notify` may take before it is killed (it waits for systemd to read). */
const NOTIFY_TIMEOUT_MS = 5000;

/**
 * systemd readiness notification (sd_notify(3)) for `Type=notify` units: READY=1 once the
 * listeners are bound, RELOADING=1 + MONOTONIC_USEC then READY=1 around a reload, STOPPING=1 on
 * drain. Does nothing when NOTIFY_SOCKET is unset (not run by systemd, or another Type=).
 *
 * The protocol is one datagram on the AF_UNIX socket named by NOTIFY_SOCKET. Node's dgram
 * supports only UDP and `net` only stream sockets, so without a native addon the datagram is
 * sent by the `systemd-notify` tool (shipped with systemd). It runs as a child of ours, not as
 * the main PID, so the unit needs `NotifyAccess=all`. Recent systemd-notify waits until systemd
 * has read the message (a barrier), so the message is attributed to the unit before the tool
 * exits. Messages are sent one at a time, in order, so READY=1 never overtakes RELOADING=1.
 */
export class SdNotify {
  readonly #socket: string | undefined;
  readonly #logger: Logger;
  #chain: Promise<void> = Promise.resolve();
  #warned = false;

  constructor(logger: Logger, socket: string | undefined = process.env.NOTIFY_SOCKET) {
    this.#socket = socket === '' ? undefined : socket;
    this.#logger = logger;
  }

  /** True when systemd asked for notifications. */
  get enabled(): boolean {
    return this.#socket !== undefined;
  }

  ready(status = 'ready'): Promise<void> {
    return this.send({ READY: '1', STATUS: status });
  }

  /** Before a reload: systemd holds `systemctl reload` until the next READY=1. */
  reloading(): Promise<void> {
    const usec = process.hrtime.bigint() / 1000n; // CLOCK_MONOTONIC on Linux, as systemd wants
    return this.send({ RELOADING: '1', MONOTONIC_USEC: usec.toString(), STATUS: 'reloading' });
  }

  stopping(): Promise<void> {
    return this.send({ STOPPING: '1', STATUS: 'draining' });
  }

  /** Queues one message; resolves when it was sent or failed (failures are logged, never thrown). */
  send(fields: Readonly<Record<string, string>>): Promise<void> {
    const socket = this.#socket;
    if (socket === undefined) return Promise.resolve();
    const args = Object.entries(fields).map(([k, v]) => `${k}=${v.replace(/\n/g, ' ')}`);
    this.#chain = this.#chain.then(() => this.#run(socket, args));
    return this.#chain;
  }

  #run(socket: string, args: string[]): Promise<void> {
    return new Promise((resolve) => {
      const child = spawn('systemd-notify', args, {
        stdio: ['ignore', 'ignore', 'pipe'],
        env: { ...process.env, NOTIFY_SOCKET: socket },
      });
      let stderr = '';
      child.stderr.on('data', (c: Buffer) => {
        if (stderr.length < 500) stderr += c.toString();
      });
      const timer = setTimeout(() => child.kill('SIGKILL'), NOTIFY_TIMEOUT_MS);
      child.on('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        this.#warn(args, err.code === 'ENOENT' ? 'systemd-notify not found on PATH' : (err.code ?? 'EIO'));
        resolve();
      });
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        if (code !== 0) this.#warn(args, `systemd-notify exited ${code ?? signal ?? '?'} ${stderr.trim()}`);
        resolve();
      });
    });
  }

  #warn(args: string[], cause: string): void {
    if (this.#warned) return;
    this.#warned = true; // once: a missing tool would otherwise log at every reload
    this.#logger.warn({ notify: args.join(' '), cause }, 'cannot notify systemd');
  }
}
