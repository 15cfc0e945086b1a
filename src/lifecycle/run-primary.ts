import { parseConfigText, readConfigText } from '../config/load.js';
import { ConfigError } from '../config/validate.js';
import type { Config } from '../config/schema.js';
import { EXIT_CONFIG, UserError } from '../util/exit.js';
import { Primary } from './primary.js';
import type { PassedSockets } from './socket-activation.js';
import { reusePortUnsupported } from './workers.js';

/**
 * Runs the primary of `workers` worker processes (from main.ts when `workers` resolves above 1).
 * Throws a UserError (exit 78) when this Node or platform has no SO_REUSEPORT support.
 */
export async function runPrimary(
  configPath: string,
  cfg: Config,
  workers: number,
  passed: PassedSockets,
): Promise<void> {
  const unsupported = reusePortUnsupported();
  if (unsupported !== undefined)
    throw new UserError(`workers: ${String(cfg.workers)} ${unsupported}`, EXIT_CONFIG);
  // The text the workers will run; parsed again because the file may have changed since the CLI read it.
  let text: string;
  try {
    text = await readConfigText(configPath);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    throw new UserError(err.message, EXIT_CONFIG);
  }
  const primary = new Primary(configPath, text, parseConfigText(text), workers, passed);
  await primary.start();
}
