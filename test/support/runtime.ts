import { parseConfigText } from '../../src/config/load.js';
import type { Config } from '../../src/config/schema.js';
import { Runtime } from '../../src/lifecycle/runtime.js';
import { MemoryStore } from '../../src/state/memory.js';
import type { StateStore } from '../../src/state/store.js';
import { createLogger } from '../../src/telemetry/logger.js';
import { systemClock } from '../../src/util/clock.js';
import { LogSink } from './log-sink.js';

export { LogSink } from './log-sink.js';

export interface TestRuntime {
  readonly runtime: Runtime;
  readonly logs: LogSink;
  readonly config: Config;
  /** Port actually bound by listener `name`. */
  port(name: string): number;
  readonly adminUrl: string;
  metric(name: string, labels?: Record<string, string>): Promise<number>;
  stop(): Promise<void>;
}

/**
 * Runs a sluice runtime in this process from YAML text. Ports 0 in the config pick free ports;
 * `admin.listen` defaults to 127.0.0.1:0 here.
 */
export async function startRuntime(
  yaml: string,
  opts: { store?: StateStore; replicaId?: string } = {},
): Promise<TestRuntime> {
  const withAdmin = /^admin:/m.test(yaml) ? yaml : `admin: { listen: "127.0.0.1:0" }\n${yaml}`;
  const config = parseConfigText(withAdmin);
  const logs = new LogSink();
  const logger = createLogger(config.log.level === 'info' ? 'info' : config.log.level, logs);
  const runtime = new Runtime(config, {
    logger,
    clock: systemClock,
    random: Math.random,
    store: opts.store ?? new MemoryStore(),
    reloadConfig: () => Promise.resolve(config),
  });
  await runtime.start();
  const port = (name: string): number => {
    const l = runtime.listeners.get(name);
    if (l === undefined) throw new Error(`no listener ${name}`);
    return Number(l.boundAddress.slice(l.boundAddress.lastIndexOf(':') + 1));
  };
  const adminUrl = `http://${runtime.admin.boundAddress}`;
  return {
    runtime,
    logs,
    config,
    port,
    adminUrl,
    metric: (name, labels) => readMetric(adminUrl, name, labels),
    stop: async () => {
      for (const l of runtime.listeners.values()) {
        await l.close();
        l.closeAll('shutdown');
      }
      await runtime.stop();
    },
  };
}

/** Reads one sample from /metrics (0 when absent). */
export async function readMetric(
  adminUrl: string,
  name: string,
  labels: Record<string, string> = {},
): Promise<number> {
  const text = await (await fetch(`${adminUrl}/metrics`)).text();
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{([^}]*)\})? (\S+)$/.exec(line);
    if (m === null || m[1] !== name) continue;
    const got = Object.fromEntries(
      [...(m[3] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1] ?? '', x[2] ?? '']),
    );
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) return Number(m[4]);
  }
  return 0;
}
