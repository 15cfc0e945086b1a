import { pino } from 'pino';
import type { Logger as PinoLogger } from 'pino';

export type Logger = PinoLogger;

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

/** JSON lines on stdout; `msg` carries the event, fields carry the facts. */
export function createLogger(level: LogLevel, destination: NodeJS.WritableStream = process.stdout): Logger {
  return pino(
    {
      level,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination,
  );
}

/**
 * The logger for access lines (one per closed session or ended flow): a child of `parent` with a
 * level of its own, info, so that `log.access_log` alone decides whether they are written,
 * whatever `log.level` is now or becomes on a reload (nginx's access_log is apart from
 * error_log's level in the same way). The lines go to the parent's destination with its fields.
 */
export function accessLogger(parent: Logger): Logger {
  const child = parent.child({});
  // Set after creation, not as the child's `level` option: pino ignores that option when it
  // equals the parent's level, and the child would then follow the parent's later changes.
  child.level = 'info';
  return child;
}

/** A logger that drops everything (tests, tools). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
