/**
 * Entry point of one worker process, forked by the primary (primary.ts). It runs the same
 * Runtime as a single-process sluice, with three differences: listeners bind with SO_REUSEPORT,
 * the admin port is the primary's, and the config comes from the primary over IPC (read and
 * validated once there, so every worker runs the same text even if the file changes between).
 */
import { hostname } from 'node:os';
import type { Config } from '../config/schema.js';
import { parseConfigText } from '../config/load.js';
import { ConfigError } from '../config/validate.js';
import { TcpListener } from '../listener/tcp.js';
import { UdpListener } from '../listener/udp.js';
import { createStore } from '../state/create.js';
import { createLogger } from '../telemetry/logger.js';
import { systemClock, systemRandom } from '../util/clock.js';
import { EXIT_CONFIG, EXIT_FAILURE } from '../util/exit.js';
import { Runtime } from './runtime.js';
import { PassedSockets } from './socket-activation.js';
import { WorkerAgent } from './worker-agent.js';
import { parseToWorker } from './worker-protocol.js';
import type { FromWorker, ToWorker } from './worker-protocol.js';
import { workerShare } from './workers.js';

function send(m: FromWorker, then?: () => void): void {
  if (process.send === undefined || !process.connected) {
    then?.();
    return;
  }
  process.send(m, undefined, undefined, () => then?.());
}

/** Start-up failed: tell the primary (which prints the one line) and exit with the code. */
function fail(err: unknown): void {
  const code = err instanceof ConfigError ? EXIT_CONFIG : EXIT_FAILURE;
  const message = err instanceof Error ? err.message.split('\n').join('; ') : String(err);
  send({ t: 'failed', message, code }, () => process.exit(code));
  setTimeout(() => process.exit(code), 1000).unref();
}

/** This worker's config: its share of the host's limits, and a replica id of its own. */
function workerConfig(text: string, workers: number, index: number): Config {
  const cfg = workerShare(parseConfigText(text), workers);
  const base = cfg.state.replica_id;
  // Each worker publishes its own counts to a shared store, so each needs its own id.
  const replica_id = base === undefined ? `${hostname()}:${process.pid}` : `${base}/${index}`;
  return { ...cfg, state: { ...cfg.state, replica_id } };
}

async function start(m: Extract<ToWorker, { t: 'start' }>): Promise<void> {
  const cfg = workerConfig(m.text, m.workers, m.index);
  TcpListener.reusePort = true;
  UdpListener.reusePort = true;
  const logger = createLogger(cfg.log.level).child({ worker: m.index });
  const store = await createStore(cfg, logger);
  let pending = m.text;
  const runtime = new Runtime(cfg, {
    logger,
    clock: systemClock,
    random: systemRandom,
    store,
    reloadConfig: () => Promise.resolve(workerConfig(pending, m.workers, m.index)),
    passed: new PassedSockets(m.passed),
  });
  runtime.admin.disable(m.admin);
  const agent = new WorkerAgent(runtime, { siblings: store.kind === 'memory', send: (msg) => send(msg) });
  agent.onReloadText = (text) => (pending = text);
  try {
    await runtime.start();
  } catch (err) {
    await runtime.stop().catch(() => undefined);
    throw err;
  }
  agent.start();
  send({ t: 'ready' });
}

function main(): void {
  if (process.send === undefined) {
    process.stderr.write('sluice: worker-main.js is started by `sluice run` with workers > 1\n');
    process.exit(1);
  }
  // Signals from a terminal go to the primary (workers run in their own process group); one
  // sent here directly (e.g. systemd's KillMode=control-group) drains like the primary's drain.
  process.on('SIGHUP', () => undefined); // reloads go through the primary, so all workers agree
  const onFirst = (raw: unknown): void => {
    const m = parseToWorker(raw);
    if (m?.t !== 'start') return;
    process.off('message', onFirst);
    start(m).catch(fail);
  };
  process.on('message', onFirst);
  // Before `start` arrives the worker owns nothing: a lost primary just ends it.
  process.once('disconnect', () => process.exit(0));
}

main();
