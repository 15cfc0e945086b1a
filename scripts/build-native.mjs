// Builds the optional splice relay (native/*.c → build/sluice_relay.node) against the headers
// of the Node.js that runs this script (official builds ship them in ../include/node). Without a
// C compiler or headers it prints why and exits 0: sluice then relays through Node streams.
// SLUICE_REQUIRE_NATIVE=1 turns that into a failure (CI sets it). `--out FILE` builds into FILE
// instead, and `--include DIR` takes Node's headers from DIR (the release cross-builds with both,
// and CC set to the cross compiler).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const { values: opts } = parseArgs({ options: { out: { type: 'string' }, include: { type: 'string' } } });

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const native = join(root, 'native');
const sources = readdirSync(native)
  .filter((f) => f.endsWith('.c') || f.endsWith('.h'))
  .map((f) => join(native, f));
const output = resolve(opts.out ?? join(root, 'build', 'sluice_relay.node'));
const required = process.env.SLUICE_REQUIRE_NATIVE === '1';

function giveUp(why) {
  const message = `sluice: splice relay not built (${why}); sessions will be relayed through Node streams`;
  if (required) {
    console.error(`${message}\nSLUICE_REQUIRE_NATIVE=1: failing`);
    process.exit(1);
  }
  console.warn(message);
  process.exit(0);
}

if (process.platform !== 'linux') giveUp(`splice(2) is Linux only, this is ${process.platform}`);
const newest = Math.max(...sources.map((f) => statSync(f).mtimeMs));
if (existsSync(output) && statSync(output).mtimeMs >= newest) process.exit(0);

const candidates =
  opts.include !== undefined
    ? [resolve(opts.include)]
    : [resolve(dirname(process.execPath), '..', 'include', 'node'), '/usr/include/node'];
const include = candidates.find(
  (dir) => existsSync(join(dir, 'node_api.h')) && existsSync(join(dir, 'uv.h')),
);
if (include === undefined) giveUp(`no node_api.h and uv.h in ${candidates.join(' or ')}`);

const cc = process.env.CC ?? 'cc';
mkdirSync(dirname(output), { recursive: true });
const args = ['-O2', '-std=gnu11', '-Wall', '-Wextra', '-fPIC', '-shared', '-fvisibility=hidden'];
args.push(`-I${include}`, '-o', output, ...sources.filter((f) => f.endsWith('.c')));
const r = spawnSync(cc, args, { encoding: 'utf8' });
if (r.error !== undefined) giveUp(`${cc}: ${r.error.message}`);
if (r.status !== 0) giveUp(`${cc} failed:\n${r.stderr.trim()}`);
if (r.stderr.trim() !== '') console.warn(r.stderr.trim());
