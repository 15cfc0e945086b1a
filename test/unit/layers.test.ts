import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

/**
 * The import layers drawn in docs/architecture.md, held against the code: every import in src/
 * points to a lower line of the picture (or stays in its own folder), and no files import each
 * other in a circle. A change that breaks either fails here, so the picture stays true.
 */

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const src = join(root, 'src');

function files(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? files(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
  );
}

/** The rooms of a file: its top folder under src/ (`listener/`), or the file itself (`main.ts`). */
function room(file: string): string {
  const rel = relative(src, file);
  const slash = rel.indexOf('/');
  return slash < 0 ? rel : `${rel.slice(0, slash)}/`;
}

/** The layers block of docs/architecture.md: rooms per line, top line first. */
function layers(): string[][] {
  const doc = readFileSync(join(root, 'docs/architecture.md'), 'utf8');
  const block = /```text\nlayers,[^\n]*\n([\s\S]*?)```/.exec(doc)?.[1];
  if (block === undefined) throw new Error('docs/architecture.md has no layers block');
  return block
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => l.split(/\s+/).filter((w) => /^[a-z-]+(\/|\.ts)$/.test(w)));
}

/** Relative imports of a file (static, type-only and dynamic), as absolute paths of .ts files. */
function imports(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const found = [...text.matchAll(/(?:from\s+|import\s*\()\s*'(\.[^']+)'/g)].map((m) => m[1] ?? '');
  return found.map((p) => resolve(dirname(file), p.replace(/\.js$/, '.ts')));
}

describe('import layers (docs/architecture.md)', () => {
  const all = files(src);
  const floors = layers();
  const floorOf = new Map<string, number>();
  floors.forEach((rooms, i) => rooms.forEach((r) => floorOf.set(r, i)));

  it('names every folder of src/ once', () => {
    const rooms = [...new Set(all.map(room))].sort();
    expect([...floorOf.keys()].sort()).toEqual(rooms);
  });

  it('has every import point to a lower line, or stay in its own folder', () => {
    const wrong: string[] = [];
    for (const f of all)
      for (const target of imports(f)) {
        const from = room(f);
        const to = room(target);
        if (from === to) continue;
        if ((floorOf.get(to) ?? -1) <= (floorOf.get(from) ?? -1))
          wrong.push(`${relative(src, f)} imports ${relative(src, target)}`);
      }
    expect(wrong).toEqual([]);
  });

  it('has no circle of files', () => {
    const graph = new Map(all.map((f) => [f, imports(f).filter((t) => all.includes(t))]));
    const state = new Map<string, 'open' | 'done'>();
    const circles: string[] = [];
    const visit = (f: string, path: string[]): void => {
      if (state.get(f) === 'done') return;
      if (state.get(f) === 'open') {
        circles.push([...path.slice(path.indexOf(f)), f].map((p) => relative(src, p)).join(' → '));
        return;
      }
      state.set(f, 'open');
      for (const t of graph.get(f) ?? []) visit(t, [...path, f]);
      state.set(f, 'done');
    };
    for (const f of all) visit(f, []);
    expect(circles).toEqual([]);
  });
});
