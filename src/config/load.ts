import { open } from 'node:fs/promises';
import { LineCounter, parseDocument } from 'yaml';
import type { YAMLError } from 'yaml';
import type { Config } from './schema.js';
import type { ConfigProblem } from './validate.js';
import { ConfigError, validateConfig } from './validate.js';
import { NESTING_TOO_DEEP, YAML_BOUNDS, yamlStructureProblems } from './yaml-bounds.js';

/**
 * The largest config file read: 1 MiB, some 25,000 static backends, where a real config is a few
 * KiB (large fleets come from discovery). Checking a 1 MiB file takes about 1.4 s and 200 MiB on
 * a 2-vCPU VM (1 MiB of YAML garbage: 3 s and 350 MiB), and a reload pays that inside the running
 * process: the cap bounds it whatever file the path names (a log, /dev/zero).
 */
export const MAX_CONFIG_BYTES = 1024 * 1024;

/** Parses YAML (JSON is valid YAML) text into a checked Config. Throws ConfigError. */
export function parseConfigText(text: string): Config {
  const lines = new LineCounter();
  // Repeated keys are found by yamlStructureProblems, in linear time (see there).
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: false, lineCounter: lines });
  if (doc.errors.length > 0) throw new ConfigError(syntaxProblems(doc.errors));
  const structure = yamlStructureProblems(doc, lines);
  if (structure.length > 0) throw new ConfigError(listed(structure));
  let value: unknown;
  try {
    // The bounds above hold expansion far below this; the package's own alias check stays as a
    // second line (it throws a ReferenceError).
    value = doc.toJS({ maxAliasCount: YAML_BOUNDS.maxAliases });
  } catch (err) {
    if (err instanceof RangeError) throw new ConfigError([{ path: '(root)', message: NESTING_TOO_DEEP }]);
    if (err instanceof ReferenceError)
      throw new ConfigError([
        { path: '(root)', message: 'aliases expand too much (an anchor used too often)' },
      ]);
    throw err;
  }
  return validateConfig(value);
}

/** Syntax errors listed; the rest are most often echoes of the first ones. */
const MAX_SYNTAX_PROBLEMS = 20;

/** YAML syntax errors as problems: each once (a nest too deep is reported at every level), at most 20. */
function syntaxProblems(errors: readonly YAMLError[]): ConfigProblem[] {
  const seen = new Set<string>();
  const out: ConfigProblem[] = [];
  for (const e of errors) {
    const p = syntaxProblem(e);
    const key = `${p.path}: ${p.message}`;
    if (seen.has(key)) continue;
    seen.add(key);
    out.push(p);
  }
  return listed(out);
}

/** At most MAX_SYNTAX_PROBLEMS problems, then a count of the rest. */
function listed(problems: readonly ConfigProblem[]): ConfigProblem[] {
  if (problems.length <= MAX_SYNTAX_PROBLEMS) return [...problems];
  const more = {
    path: '(syntax)',
    message: `${problems.length - MAX_SYNTAX_PROBLEMS} more errors not listed`,
  };
  return [...problems.slice(0, MAX_SYNTAX_PROBLEMS), more];
}

/** One YAML syntax error as a problem: `line N: message`, without the package's code excerpt. */
function syntaxProblem(e: YAMLError): ConfigProblem {
  const path = `line ${e.linePos?.[0]?.line ?? '?'}`;
  // The composer recurses once per level and reports running out of stack as this code.
  if (e.code === 'RESOURCE_EXHAUSTION') return { path, message: NESTING_TOO_DEEP };
  const message = (e.message.split('\n')[0] ?? 'YAML error').replace(/ at line \d+, column \d+:?$/, '');
  return { path, message };
}

/**
 * Reads a config file's text, at most MAX_CONFIG_BYTES of it. Throws ConfigError (the problem
 * named by the file's path) when the file cannot be read or is larger.
 */
export async function readConfigText(path: string): Promise<string> {
  try {
    const file = await open(path, 'r');
    try {
      // One byte more than the cap tells a file of exactly the cap from a larger one.
      const buf = Buffer.alloc(MAX_CONFIG_BYTES + 1);
      let used = 0;
      for (;;) {
        const { bytesRead } = await file.read(buf, used, buf.length - used, null);
        if (bytesRead === 0) break;
        used += bytesRead;
        if (used > MAX_CONFIG_BYTES) throw new ConfigError([{ path, message: tooLarge() }]);
      }
      return buf.toString('utf8', 0, used);
    } finally {
      await file.close();
    }
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    const code = (err as NodeJS.ErrnoException).code ?? 'EIO';
    throw new ConfigError([{ path, message: `cannot read the file (${code})` }]);
  }
}

function tooLarge(): string {
  return `the file is larger than ${MAX_CONFIG_BYTES / 1024 / 1024} MiB, the most a config file may be`;
}

/** Reads and checks a config file. Throws ConfigError (also for an unreadable or oversized file). */
export async function loadConfigFile(path: string): Promise<Config> {
  return parseConfigText(await readConfigText(path));
}
