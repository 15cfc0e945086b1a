import { afterEach, describe, expect, it, vi } from 'vitest';
import { armExitBackstop } from '../../src/lifecycle/exit-backstop.js';
import { createLogger } from '../../src/telemetry/logger.js';
import { LogSink } from '../support/log-sink.js';

function capture(): { logger: ReturnType<typeof createLogger>; lines: Record<string, unknown>[] } {
  const sink = new LogSink();
  return { logger: createLogger('info', sink), lines: sink.lines };
}

describe('armExitBackstop', () => {
  afterEach(() => {
    vi.useRealTimers();
    vi.restoreAllMocks();
  });

  it('exits 0 with a warning once the budget has passed, not before', () => {
    vi.useFakeTimers();
    const exit = vi.spyOn(process, 'exit').mockImplementation(() => undefined as never);
    const { logger, lines } = capture();
    armExitBackstop(5_000, logger);
    vi.advanceTimersByTime(4_999);
    expect(exit).not.toHaveBeenCalled();
    vi.advanceTimersByTime(1);
    expect(exit).toHaveBeenCalledWith(0);
    expect(lines).toEqual([
      expect.objectContaining({
        level: 'warn',
        budget_ms: 5_000,
        msg: 'shutdown did not finish within its budget; exiting now',
      }),
    ]);
  });

  it('does not keep the process alive', () => {
    const spy = vi.spyOn(globalThis, 'setTimeout');
    armExitBackstop(60_000, capture().logger);
    const timer = spy.mock.results[0]?.value as NodeJS.Timeout;
    expect(timer.hasRef()).toBe(false);
    clearTimeout(timer);
  });
});
