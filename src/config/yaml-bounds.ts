import type { Document, LineCounter } from 'yaml';
import { isAlias, isCollection, isMap, isPair, isScalar } from 'yaml';
import type { ConfigProblem } from './validate.js';

/**
 * Bounds on what a parsed YAML document may cost once it becomes a value, checked before
 * `toJS()`, so that a small hostile file cannot make `sluice validate` (or a reload) spin or run
 * out of memory. Each is far above any real config: the schema nests 6 levels deep, and a
 * config with 10,000 backends is about 100,000 values.
 */
export const YAML_BOUNDS = {
  /** Lists and mappings inside one another. */
  maxDepth: 64,
  /**
   * Alias nodes (`*name`). The yaml package resolves each alias by scanning the anchors and
   * aliases before it, so converting costs the square of their number: 30,000 aliases take
   * about 45 s, 1,000 well under 0.1 s.
   */
  maxAliases: 1000,
  /**
   * Values once every alias is expanded (each use of `*name` counts the whole anchored value).
   * An alias bomb (`&a [x ×10]`, `&b [*a ×10]`, … nine levels) is 10⁹ values from a few hundred
   * bytes, and the checker walks every expanded value: this is what bounds its work.
   */
  maxValues: 1_000_000,
} as const;

/** The problem's message for a document nested deeper than YAML_BOUNDS.maxDepth. */
export const NESTING_TOO_DEEP = `nesting too deep (more than ${YAML_BOUNDS.maxDepth} levels of lists and mappings)`;

/** What the walk sees: nodes of the document, pairs of a mapping, and empty values. */
type Item = unknown;

interface Frame {
  readonly node: Item;
  readonly depth: number;
  readonly children: readonly Item[];
  next: number;
  /** Expanded values counted so far for this node (itself included). */
  size: number;
}

function childrenOf(node: Item): readonly Item[] {
  if (isCollection(node)) return node.items;
  if (isPair(node)) return [node.key, node.value];
  return []; // a scalar, or an empty value
}

function anchorOf(node: Item): string | undefined {
  const anchor = (node as { anchor?: unknown } | null | undefined)?.anchor;
  return typeof anchor === 'string' && anchor !== '' ? anchor : undefined;
}

/**
 * Checks a document against YAML_BOUNDS, without recursion (a deep document must not overflow
 * the stack here either). One pass in document order: an alias counts the expanded size of the
 * last anchor of its name before it, as YAML resolves it.
 */
class BoundsWalk {
  readonly #lines: LineCounter;
  readonly #anchors = new Map<string, Item>();
  /** Expanded size of each finished anchored node; an alias to an unfinished one (a cycle) counts 1. */
  readonly #sizes = new Map<Item, number>();
  readonly #stack: Frame[] = [];
  #aliases = 0;
  /** Keys repeated within one mapping, with where they start (the walk goes on past them). */
  readonly #duplicates: { at: number; problem: ConfigProblem }[] = [];

  constructor(lines: LineCounter) {
    this.#lines = lines;
  }

  run(root: Item): ConfigProblem | undefined {
    if (root === null || root === undefined) return undefined;
    this.#push(root, 1);
    for (let top = this.#stack.at(-1); top !== undefined; top = this.#stack.at(-1)) {
      const problem =
        top.next < top.children.length ? this.#enter(top, top.children[top.next++]) : this.#leave();
      if (problem !== undefined) return problem;
    }
    return undefined;
  }

  #enter(parent: Frame, child: Item): ConfigProblem | undefined {
    if (child === null || child === undefined) return undefined;
    if (isAlias(child)) {
      if (++this.#aliases > YAML_BOUNDS.maxAliases)
        return { path: this.#at(child), message: `more than ${YAML_BOUNDS.maxAliases} aliases` };
      parent.size += this.#sizes.get(this.#anchors.get(child.source)) ?? 1;
      return parent.size > YAML_BOUNDS.maxValues ? this.#tooMany(child) : undefined;
    }
    const depth = isCollection(child) ? parent.depth + 1 : parent.depth;
    if (depth > YAML_BOUNDS.maxDepth) return { path: this.#at(child), message: NESTING_TOO_DEEP };
    const anchor = anchorOf(child);
    if (anchor !== undefined) this.#anchors.set(anchor, child);
    this.#push(child, depth);
    return undefined;
  }

  #leave(): ConfigProblem | undefined {
    const done = this.#stack.pop();
    if (done === undefined) return undefined;
    if (anchorOf(done.node) !== undefined) this.#sizes.set(done.node, done.size);
    const parent = this.#stack.at(-1);
    if (parent === undefined) return undefined;
    parent.size += done.size;
    return parent.size > YAML_BOUNDS.maxValues ? this.#tooMany(parent.node) : undefined;
  }

  #push(node: Item, depth: number): void {
    if (isMap(node)) this.#checkKeys(node.items);
    // A pair is not a value of its own: its key and value are.
    this.#stack.push({ node, depth, children: childrenOf(node), next: 0, size: isPair(node) ? 0 : 1 });
  }

  /**
   * Repeated keys in one mapping, found with a set: the yaml package's own check (`uniqueKeys`)
   * compares each key with every key before it: 1 MiB holding one mapping of 60,000 keys took 35 s.
   * Scalar keys compare by value, as that check does (`1` and `"1"` differ); other keys by node.
   */
  #checkKeys(pairs: readonly Item[]): void {
    const seen = new Set<unknown>();
    for (const pair of pairs) {
      if (!isPair(pair)) continue;
      const key = isScalar(pair.key) ? pair.key.value : pair.key;
      if (!seen.has(key)) {
        seen.add(key);
        continue;
      }
      const node = pair.key ?? pair;
      const at = (node as { range?: readonly number[] }).range?.[0] ?? 0;
      this.#duplicates.push({ at, problem: { path: this.#at(node), message: 'Map keys must be unique' } });
    }
  }

  /** The repeated keys found, in the order of the file. */
  duplicates(): ConfigProblem[] {
    return this.#duplicates.sort((a, b) => a.at - b.at).map((d) => d.problem);
  }

  #tooMany(node: Item): ConfigProblem {
    const most = YAML_BOUNDS.maxValues.toLocaleString('en-US');
    return { path: this.#at(node), message: `too many values once aliases are expanded (more than ${most})` };
  }

  /** `line N` of where `node` starts, as the YAML syntax errors are named. */
  #at(node: Item): string {
    const start = (node as { range?: readonly number[] } | null | undefined)?.range?.[0];
    if (start === undefined) {
      const key = isPair(node) ? (node.key as { range?: readonly number[] } | null)?.range?.[0] : undefined;
      return key === undefined ? '(root)' : `line ${this.#lines.linePos(key).line}`;
    }
    return `line ${this.#lines.linePos(start).line}`;
  }
}

/**
 * The first of YAML_BOUNDS that `doc` crosses, named by line, or else every key repeated within a
 * mapping; empty when the document keeps them all.
 */
export function yamlStructureProblems(doc: Document, lines: LineCounter): ConfigProblem[] {
  const walk = new BoundsWalk(lines);
  const bound = walk.run(doc.contents);
  return bound === undefined ? walk.duplicates() : [bound];
}
