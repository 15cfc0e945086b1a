import { readFileSync } from 'node:fs';
import { Command, CommanderError } from 'commander';
import { loadConfigFile } from '../config/load.js';
import { ConfigError, configWarnings } from '../config/validate.js';
import { workerConfigProblems } from '../lifecycle/workers.js';
import { adminCall, printStatus } from './admin-client.js';
import { addRegisterCommand } from './register.js';
import { EXIT_CONFIG, EXIT_FAILURE, UserError } from '../util/exit.js';

function version(): string {
  const pkg: unknown = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8'));
  return typeof pkg === 'object' && pkg !== null && 'version' in pkg ? String(pkg.version) : '0.0.0';
}

function printConfigError(path: string, err: ConfigError): void {
  process.stderr.write(`sluice: invalid configuration in ${path}:\n`);
  for (const p of err.problems) process.stderr.write(`  ${p.path}: ${p.message}\n`);
}

const DEFAULT_ADMIN = 'http://127.0.0.1:9090';

export function buildProgram(): Command {
  const program = new Command('sluice')
    .description('A Layer 4 (TCP and UDP) load balancer')
    .version(version(), '-v, --version')
    .helpCommand(true)
    .showHelpAfterError()
    .exitOverride();

  program
    .command('run')
    .description('run the load balancer in the foreground (JSON logs on stdout)')
    .requiredOption('-c, --config <file>', 'configuration file (YAML or JSON)')
    .action(async (opts: { config: string }) => {
      const cfg = await loadOrExit(opts.config);
      const { run } = await import('../main.js');
      await run(opts.config, cfg);
    });

  program
    .command('validate')
    .description('check a configuration file; exit 0, or 78 with every problem listed')
    .requiredOption('-c, --config <file>', 'configuration file (YAML or JSON)')
    .action(async (opts: { config: string }) => {
      const cfg = await loadOrExit(opts.config);
      for (const w of configWarnings(cfg)) process.stderr.write(`sluice: warning: ${w.path}: ${w.message}\n`);
      process.stdout.write(`${opts.config}: configuration is valid\n`);
    });

  program
    .command('status')
    .description('show listeners, pools, backends, state and connections')
    .option('--admin <url>', 'admin API address', DEFAULT_ADMIN)
    .option('--token <file>', 'file holding the admin bearer token')
    .option('--json', 'print the raw JSON')
    .action(async (opts: { admin: string; token?: string; json?: boolean }) => {
      const pools = await adminCall(opts.admin, 'GET', '/api/v1/pools', opts.token);
      const listeners = await adminCall(opts.admin, 'GET', '/api/v1/listeners', opts.token);
      printStatus(listeners, pools, opts.json === true);
    });

  for (const verb of ['drain', 'enable', 'disable'] as const) {
    program
      .command(`${verb} <pool> <backend>`)
      .description(`${verb} a backend (backend is its host:port address)`)
      .option('--admin <url>', 'admin API address', DEFAULT_ADMIN)
      .option('--token <file>', 'file holding the admin bearer token')
      .action(async (pool: string, backend: string, opts: { admin: string; token?: string }) => {
        const path = `/api/v1/pools/${encodeURIComponent(pool)}/backends/${encodeURIComponent(backend)}/${verb}`;
        const body = await adminCall(opts.admin, 'POST', path, opts.token);
        process.stdout.write(`${JSON.stringify(body)}\n`);
      });
  }
  addRegisterCommand(program);
  return program;
}

async function loadOrExit(path: string): Promise<Awaited<ReturnType<typeof loadConfigFile>>> {
  try {
    const cfg = await loadConfigFile(path);
    // Checks that only apply with several workers (port 0 cannot be shared), so validate sees them too.
    const problems = workerConfigProblems(cfg);
    if (problems.length > 0) throw new ConfigError(problems);
    return cfg;
  } catch (err) {
    if (err instanceof ConfigError) {
      printConfigError(path, err);
      process.exit(EXIT_CONFIG);
    }
    throw err;
  }
}

/** Runs the CLI; never prints a stack trace for a user error. */
export async function main(argv: readonly string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync([...argv]);
  } catch (err) {
    if (err instanceof CommanderError) process.exit(err.exitCode);
    if (err instanceof UserError) {
      process.stderr.write(`sluice: ${err.message}\n`);
      process.exit(err.exitCode);
    }
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`sluice: ${message}\n`);
    process.exit(EXIT_FAILURE);
  }
}
