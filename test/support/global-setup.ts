import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/**
 * Forked-process tests run bin/sluice, which loads dist/: build it once before any test. Type
 * errors are the typecheck step's business (tsc still emits), so only a missing output fails here.
 */
export default function setup(): void {
  const root = fileURLToPath(new URL('../..', import.meta.url));
  const r = spawnSync(
    process.execPath,
    [`${root}node_modules/typescript/bin/tsc`, '-p', 'tsconfig.build.json'],
    {
      cwd: root,
      encoding: 'utf8',
    },
  );
  if (!existsSync(`${root}dist/cli/index.js`)) throw new Error(`build failed:\n${r.stdout}${r.stderr}`);
  // The splice relay (a no-op when it is up to date; without a compiler sessions use streams).
  const n = spawnSync(process.execPath, [`${root}scripts/build-native.mjs`], { cwd: root, encoding: 'utf8' });
  if (n.status !== 0) throw new Error(`native build failed:\n${n.stdout}${n.stderr}`);
}
