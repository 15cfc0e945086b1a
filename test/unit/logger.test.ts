import { describe, expect, it } from 'vitest';
import type { LogLevel } from '../../src/telemetry/logger.js';
import { accessLogger, createLogger } from '../../src/telemetry/logger.js';
import { LogSink } from '../support/log-sink.js';

function capture(level: LogLevel): {
  lines: Record<string, unknown>[];
  logger: ReturnType<typeof createLogger>;
} {
  const sink = new LogSink();
  return { lines: sink.lines, logger: createLogger(level, sink) };
}

describe('access logger', () => {
  it.each(['warn', 'error', 'silent'] as const)(
    'writes access lines at info under a logger at %s, which keeps its own level',
    (level) => {
      const { lines, logger } = capture(level);
      const listener = logger.child({ listener: 'web' });
      accessLogger(listener).info({ bytes_in: 5 }, 'session');
      listener.info('not an access line');
      expect(lines.map((l) => l.msg)).toEqual(['session']);
      expect(lines[0]).toMatchObject({ level: 'info', listener: 'web', bytes_in: 5 });
    },
  );

  it('keeps its level when the process level changes later (a reload of log.level)', () => {
    const { lines, logger } = capture('info');
    const access = accessLogger(logger.child({ listener: 'web' }));
    logger.level = 'error';
    access.info('session');
    logger.level = 'silent';
    access.info('flow');
    expect(lines.map((l) => l.msg)).toEqual(['session', 'flow']);
    expect(access.isLevelEnabled('debug')).toBe(false);
  });
});
