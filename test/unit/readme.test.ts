import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { posix } from 'node:path';
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

/** Markdown without its fenced code blocks and inline code, where a `[x](y)` is not a link. */
function prose(markdown: string): string {
  return markdown.replace(/^ *```[\s\S]*?^ *```/gm, '').replace(/`[^`\n]*`/g, '');
}

/** The targets of the inline links of a Markdown text, e.g. `../bench/README.md#failures`. */
function linkTargets(markdown: string): string[] {
  return [...prose(markdown).matchAll(/\]\(([^)\s]+)\)/g)].map((m) => m[1] ?? '');
}

/** GitHub's anchors for the headings of a Markdown text (lower case, punctuation dropped). */
function anchors(markdown: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  for (const m of markdown.replace(/^ *```[\s\S]*?^ *```/gm, '').matchAll(/^#{1,6} (.+)$/gm)) {
    const slug = (m[1] ?? '')
      .trim()
      .toLowerCase()
      .replace(/[^\p{L}\p{N}\s_-]/gu, '')
      .replace(/\s/g, '-');
    const n = seen.get(slug) ?? 0;
    seen.set(slug, n + 1);
    out.add(n === 0 ? slug : `${slug}-${n}`);
  }
  return out;
}

/** The architecture sketch: the fenced block that starts with "connection path:". */
function sketch(markdown: string): string | undefined {
  return /^```\n(connection path:[\s\S]*?)^```/m.exec(markdown)?.[1];
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

  it('every relative link points at a file that exists, and every anchor at a heading', () => {
    let count = 0;
    for (const path of ['README.md', ...docs]) {
      for (const target of linkTargets(read(path))) {
        if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue; // https:, mailto:: not ours to check
        count++;
        const [file = '', anchor] = target.split('#', 2);
        const resolved = file === '' ? path : posix.normalize(posix.join(posix.dirname(path), file));
        expect(existsSync(new URL(resolved, root)), `${path}: ${target}`).toBe(true);
        if (anchor !== undefined && resolved.endsWith('.md'))
          expect(anchors(read(resolved)).has(anchor), `${path}: ${target}`).toBe(true);
      }
    }
    expect(count).toBeGreaterThanOrEqual(12);
  });

  it('the architecture sketch in the README is the one in docs/architecture.md', () => {
    const readme = sketch(read('README.md'));
    expect(readme).toBeDefined();
    expect(readme).toBe(sketch(read('docs/architecture.md')));
  });

  it('the bundled demo config is valid', () => {
    expect(() => parseConfigText(read('examples/demo.yaml'))).not.toThrow();
  });
});
