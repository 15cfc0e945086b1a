import { readFile } from 'node:fs/promises';
import { parseDocument } from 'yaml';
import type { Config } from './schema.js';
import { ConfigError, validateConfig } from './validate.js';

/** Parses YAML (JSON is valid YAML) text into a checked Config. Throws ConfigError. */
export function parseConfigText(text: string): Config {
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(
      doc.errors.map((e) => ({
        path: `line ${e.linePos?.[0]?.line ?? '?'}`,
        message: (e.message.split('\n')[0] ?? 'YAML error').replace(/ at line \d+, column \d+:?$/, ''),
      })),
    );
  }
  return validateConfig(doc.toJS({ maxAliasCount: 100 }));
}

/** Reads and checks a config file. Throws ConfigError (also for an unreadable file). */
export async function loadConfigFile(path: string): Promise<Config> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'EIO';
    throw new ConfigError([{ path, message: `cannot read the file (${code})` }]);
  }
  return parseConfigText(text);
}
