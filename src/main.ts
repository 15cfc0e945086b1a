import type { Config } from './config/schema.js';
import { loadConfigFile } from './config/load.js';
import { armExitBackstop } from './lifecycle/exit-backstop.js';
import { Runtime } from './lifecycle/runtime.js';
import { SdNotify } from './lifecycle/sd-notify.js';
import { PassedSockets } from './lifecycle/socket-activation.js';
import { workerCount } from './lifecycle/workers.js';
import { createStore } from './state/create.js';
import { createLogger } from './telemetry/logger.js';
import { systemClock, systemRandom } from './util/clock.js';

/**
 * `sluice run`: the composition root. Loads the config, builds the runtime, binds, and wires
 * signals: SIGHUP reloads; SIGTERM/SIGINT drain and exit 0; a second one exits at once.
 */
export async function run(configPath: string, cfg: Config): Promise<void> {
  const workers = workerCount(cfg.workers);
  const passed = PassedSockets.fromEnv();
  if (workers > 1) {
    // Multi-core: this process becomes the primary; workers run the code below, minus admin.
    const { runPrimary } = await import('./lifecycle/run-primary.js');
    return runPrimary(configPath, cfg, workers, passed);
  }
  const logger = createLogger(cfg.log.level);
  const notify = new SdNotify(logger);
  const store = await createStore(cfg, logger);
  const runtime = new Runtime(cfg, {
    logger,
    clock: systemClock,
    random: systemRandom,
    store,
    reloadConfig: () => loadConfigFile(configPath),
    passed,
  });

  let stopping = false;
  const onStop = (signal: NodeJS.Signals): void => {
    if (stopping) {
      logger.warn({ signal }, 'second signal: exiting now');
      logger.flush();
      process.exit(0);
    }
    stopping = true;
    logger.info({ signal }, 'shutting down');
    armExitBackstop(runtime.shutdownBudgetMs(), logger);
    void notify.stopping();
    runtime
      .drain()
      .then(() => {
        logger.info('stopped');
        logger.flush();
        process.exit(0);
      })
      .catch((err: unknown) => {
        logger.error({ err }, 'shutdown failed');
        process.exit(1);
      });
  };
  process.on('SIGTERM', onStop);
  process.on('SIGINT', onStop);
  process.on('SIGHUP', () => {
    void notify.reloading();
    runtime
      .reload()
      .catch((err: unknown) => logger.error({ err }, 'reload failed'))
      .finally(() => void notify.ready());
  });

  try {
    await runtime.start();
  } catch (err) {
    await runtime.stop().catch(() => undefined);
    throw err;
  }
  void notify.ready();
}
