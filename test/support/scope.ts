import { afterEach } from 'vitest';
import type { TestServer } from './net.js';
import type { TestRuntime } from './runtime.js';
import { startRuntime } from './runtime.js';

/**
 * Per-test cleanup: everything started through the scope is stopped after each test, newest
 * first. Call once at the top level of a test file.
 */
export function testScope(): {
  defer(fn: () => Promise<void>): void;
  server<T extends TestServer>(p: Promise<T>): Promise<T>;
  lb(yaml: string): Promise<TestRuntime>;
} {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    while (cleanups.length > 0) await cleanups.pop()?.();
  });
  return {
    defer: (fn) => void cleanups.push(fn),
    server: async (p) => {
      const s = await p;
      cleanups.push(() => s.close());
      return s;
    },
    lb: async (yaml) => {
      const rt = await startRuntime(yaml);
      cleanups.push(() => rt.stop());
      return rt;
    },
  };
}
