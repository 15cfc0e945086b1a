import type { Logger } from '../telemetry/logger.js';

/**
 * Exits 0 once `ms` have passed since a shutdown began, if it has not ended by then. The drain
 * itself closes everything at its deadline; this is the guarantee behind it: whatever a release
 * step still waits for (a socket's close, a store that does not answer), the process ends
 * within its budget, as a supervisor (systemd's TimeoutStopSec, Kubernetes'
 * terminationGracePeriodSeconds) expects. Unreferenced: it never keeps the process alive.
 */
export function armExitBackstop(ms: number, logger: Logger): void {
  setTimeout(() => {
    logger.warn({ budget_ms: ms }, 'shutdown did not finish within its budget; exiting now');
    logger.flush();
    process.exit(0);
  }, ms).unref();
}
