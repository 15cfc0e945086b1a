import { readdirSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';

const root = new URL('../../', import.meta.url);
const read = (path: string): string => readFileSync(new URL(path, root), 'utf8');

/** README.md and every docs/*.md, by path from the repository root. */
const docs = readdirSync(new URL('docs/', root))
  .filter((f) => f.endsWith('.md'))
  .sort()
  .map((f) => `docs/${f}`);

/** The YAML blocks of a Markdown text that are whole config files (they have listeners and pools). */
function configBlocks(markdown: string): string[] {
  return [...markdown.matchAll(/```yaml\n([\s\S]*?)```/g)]
    .map((m) => m[1] ?? '')
    .filter((y) => /^listeners:/m.test(y) && /^pools:/m.test(y));
}

describe('README and docs', () => {
  it('the README has a config example, and every one of its examples is a valid config', () => {
    const blocks = configBlocks(read('README.md'));
    expect(blocks.length).toBeGreaterThanOrEqual(1);
    for (const yaml of blocks) expect(() => parseConfigText(yaml)).not.toThrow();
  });

  it('docs/ has config examples, and every one of them is a valid config', () => {
    let count = 0;
    for (const path of docs) {
      for (const yaml of configBlocks(read(path))) {
        count++;
        expect(() => parseConfigText(yaml), `${path}:\n${yaml}`).not.toThrow();
      }
    }
    expect(count).toBeGreaterThanOrEqual(2);
  });

  it('the bundled demo config is valid', () => {
    expect(() => parseConfigText(read('examples/demo.yaml'))).not.toThrow();
  });
});
