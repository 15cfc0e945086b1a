/**
 * Exit codes of the command line (SPEC: 0 clean, 78 invalid configuration, 1 any other fatal
 * start-up error) and the error that carries one. Both the CLI and the runtime (the primary of
 * several workers) end a process with them, so they live below both.
 */

/** EX_CONFIG from sysexits.h: the configuration is invalid. */
export const EXIT_CONFIG = 78;
/** EX_USAGE from sysexits.h: the command line itself is wrong (bad address, ttl or URL). */
export const EXIT_USAGE = 64;
export const EXIT_FAILURE = 1;

/** A user error: printed as one line (`sluice: …`), no stack trace, and the process exits with `exitCode`. */
export class UserError extends Error {
  readonly exitCode: number;
  constructor(message: string, exitCode = EXIT_FAILURE) {
    super(message);
    this.exitCode = exitCode;
  }
}
