import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';

const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');

/** The YAML blocks of the README that are whole config files (they have listeners and pools). */
function configBlocks(): string[] {
  return [...readme.matchAll(/```yaml\n([\s\S]*?)```/g)]
    .map((m) => m[1] ?? '')
    .filter((y) => /^listeners:/m.test(y) && /^pools:/m.test(y));
}

describe('README', () => {
  it('has config examples, and every one of them is a valid config', () => {
    const blocks = configBlocks();
    expect(blocks.length).toBeGreaterThanOrEqual(2);
    for (const yaml of blocks) expect(() => parseConfigText(yaml)).not.toThrow();
  });

  it('the bundled demo config is valid', () => {
    expect(() =>
      parseConfigText(readFileSync(new URL('../../examples/demo.yaml', import.meta.url), 'utf8')),
    ).not.toThrow();
  });
});
