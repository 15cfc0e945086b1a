/**
 * What a PromQL expression refers to (metric names, label matchers, grouping labels), and what a
 * Prometheus text exposition offers (series names and their labels): enough to check that a
 * dashboard or a rule file only names metrics and labels a live /metrics exports. Not a full
 * PromQL parser: it reads selectors, function calls and modifiers, and throws on anything else,
 * so an expression it cannot follow fails loudly instead of passing unchecked.
 */

/** One vector selector: `name{label op "value", ...}`. */
export interface Selector {
  readonly metric: string;
  readonly matchers: readonly { label: string; op: string; value: string }[];
}

/** Everything an expression names. */
export interface ExprRefs {
  readonly selectors: readonly Selector[];
  /** Labels in by/without/on/ignoring/group_left/group_right lists. */
  readonly grouping: readonly string[];
  /** Functions and aggregation operators called. */
  readonly functions: readonly string[];
}

/** PromQL functions and aggregation operators (Prometheus 2.x and 3.x). */
const FUNCTIONS = new Set([
  ...[
    'abs',
    'absent',
    'absent_over_time',
    'acos',
    'acosh',
    'asin',
    'asinh',
    'atan',
    'atanh',
    'avg_over_time',
  ],
  ...['ceil', 'changes', 'clamp', 'clamp_max', 'clamp_min', 'cos', 'cosh', 'count_over_time', 'day_of_month'],
  ...['day_of_week', 'day_of_year', 'days_in_month', 'deg', 'delta', 'deriv', 'double_exponential_smoothing'],
  ...['end', 'exp', 'floor', 'histogram_avg', 'histogram_count', 'histogram_fraction', 'histogram_quantile'],
  ...['histogram_stddev', 'histogram_stdvar', 'histogram_sum', 'holt_winters', 'hour', 'idelta', 'increase'],
  ...['irate', 'label_join', 'label_replace', 'last_over_time', 'ln', 'log10', 'log2', 'mad_over_time'],
  ...['max_over_time', 'min_over_time', 'minute', 'month', 'pi', 'predict_linear', 'present_over_time'],
  ...['quantile_over_time', 'rad', 'rate', 'resets', 'round', 'scalar', 'sgn', 'sin', 'sinh', 'sort'],
  ...[
    'sort_by_label',
    'sort_by_label_desc',
    'sort_desc',
    'sqrt',
    'start',
    'stddev_over_time',
    'stdvar_over_time',
  ],
  ...['sum_over_time', 'tan', 'tanh', 'time', 'timestamp', 'vector', 'year'],
  // aggregation operators
  ...['sum', 'min', 'max', 'avg', 'group', 'stddev', 'stdvar', 'count', 'count_values', 'bottomk', 'topk'],
  ...['quantile', 'limitk', 'limit_ratio'],
]);
/** Keywords followed by a parenthesised list of label names. */
const LABEL_LIST_KEYWORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right']);
/** Binary operators and modifiers spelt as words. */
const WORD_OPERATORS = new Set(['and', 'or', 'unless', 'bool', 'offset', 'atan2']);
const MATCH_OPS = new Set(['=', '!=', '=~', '!~']);

type Token =
  | { kind: 'ident'; text: string }
  | { kind: 'string'; text: string }
  | { kind: 'number'; text: string }
  | { kind: 'punct'; text: string };

function unquote(raw: string): string {
  if (raw.startsWith('`')) return raw.slice(1, -1);
  return raw.slice(1, -1).replace(/\\(.)/g, '$1');
}

/** Splits `expr` into tokens; throws on a character PromQL does not use (such as a stray `$`). */
export function tokenize(expr: string): Token[] {
  const out: Token[] = [];
  const patterns: [Token['kind'] | 'space' | 'comment', RegExp][] = [
    ['space', /^\s+/],
    ['comment', /^#[^\n]*/],
    ['string', /^"(?:[^"\\]|\\.)*"|^'(?:[^'\\]|\\.)*'|^`[^`]*`/],
    [
      'number',
      /^(?:0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?(?:\d+(?:ms|[smhdwy]))*)/,
    ],
    ['ident', /^[a-zA-Z_:][a-zA-Z0-9_:]*/],
    ['punct', /^(?:==|!=|>=|<=|=~|!~|[(){}[\],=<>+\-*/%^@])/],
  ];
  let rest = expr;
  outer: while (rest.length > 0) {
    for (const [kind, re] of patterns) {
      const m = re.exec(rest);
      if (m === null) continue;
      rest = rest.slice(m[0].length);
      if (kind === 'space' || kind === 'comment') continue outer;
      out.push(kind === 'string' ? { kind, text: unquote(m[0]) } : { kind, text: m[0] });
      continue outer;
    }
    throw new Error(`cannot read PromQL at ${JSON.stringify(rest.slice(0, 30))} in: ${expr}`);
  }
  return out;
}

/** The metric names, label matchers, grouping labels and functions of a PromQL expression. */
export function promqlRefs(expr: string): ExprRefs {
  const t = tokenize(expr);
  const selectors: Selector[] = [];
  const grouping: string[] = [];
  const functions: string[] = [];
  const fail = (why: string): never => {
    throw new Error(`${why} in: ${expr}`);
  };
  const at = (i: number): Token | undefined => t[i];
  const isPunct = (i: number, text: string): boolean => at(i)?.kind === 'punct' && at(i)?.text === text;

  /** Reads `{label op "value", ...}` from the `{` at i; returns the matchers and the index after `}`. */
  const matchers = (i: number): [Selector['matchers'], number] => {
    const found: { label: string; op: string; value: string }[] = [];
    let j = i + 1;
    while (!isPunct(j, '}')) {
      const label = at(j);
      const op = at(j + 1);
      const value = at(j + 2);
      if (
        label?.kind !== 'ident' ||
        op?.kind !== 'punct' ||
        !MATCH_OPS.has(op.text) ||
        value?.kind !== 'string'
      )
        fail(`malformed label matcher at token ${j}`);
      found.push({ label: label!.text, op: op!.text, value: value!.text });
      j += 3;
      if (isPunct(j, ',')) j++;
      else if (!isPunct(j, '}')) fail(`expected , or } after a label matcher`);
    }
    return [found, j + 1];
  };

  let i = 0;
  while (i < t.length) {
    const tok = t[i]!;
    if (tok.kind === 'punct' && tok.text === '[') {
      // A range or subquery: durations only.
      const end = t.findIndex((x, k) => k > i && x.kind === 'punct' && x.text === ']');
      if (end < 0) fail('unclosed [');
      i = end + 1;
      continue;
    }
    if (tok.kind === 'punct' && tok.text === '{') {
      const [m, next] = matchers(i);
      const name = m.find((x) => x.label === '__name__' && x.op === '=');
      if (name === undefined) fail('a selector without a metric name');
      selectors.push({ metric: name!.value, matchers: m.filter((x) => x !== name) });
      i = next;
      continue;
    }
    if (tok.kind !== 'ident') {
      i++;
      continue;
    }
    const word = tok.text;
    if (LABEL_LIST_KEYWORDS.has(word)) {
      if (!isPunct(i + 1, '(')) {
        // group_left / group_right without a list.
        if (word === 'group_left' || word === 'group_right') {
          i++;
          continue;
        }
        fail(`${word} without a label list`);
      }
      let j = i + 2;
      while (!isPunct(j, ')')) {
        const label = at(j);
        if (label?.kind !== 'ident') fail(`expected a label name in ${word}(...)`);
        grouping.push(label!.text);
        j++;
        if (isPunct(j, ',')) j++;
      }
      i = j + 1;
      continue;
    }
    if (WORD_OPERATORS.has(word)) {
      i++;
      continue;
    }
    const next = at(i + 1);
    const aggregation = next?.kind === 'ident' && (next.text === 'by' || next.text === 'without');
    if (isPunct(i + 1, '(') || aggregation) {
      if (!FUNCTIONS.has(word)) fail(`unknown function ${word}()`);
      functions.push(word);
      i++;
      continue;
    }
    if (isPunct(i + 1, '{')) {
      const [m, next] = matchers(i + 1);
      selectors.push({ metric: word, matchers: m });
      i = next;
      continue;
    }
    selectors.push({ metric: word, matchers: [] });
    i++;
  }
  return { selectors, grouping, functions };
}

/** Grafana's built-in interval variables, replaced by a duration PromQL accepts. */
const GRAFANA_INTERVALS =
  /\$__(rate_interval|interval|range)(_ms|_s)?\b|\$\{__(rate_interval|interval|range)\}/g;

/** Template variables an expression uses (`$name`, `${name}`, `${name:format}`, `[[name]]`), built-ins aside. */
export function grafanaVariables(text: string): string[] {
  const names = new Set<string>();
  for (const m of text.matchAll(/\$(\w+)|\$\{(\w+)(?::\w+)?\}|\[\[(\w+)(?::\w+)?\]\]/g)) {
    const name = m[1] ?? m[2] ?? m[3] ?? '';
    if (!name.startsWith('__')) names.add(name);
  }
  return [...names];
}

/**
 * A Grafana expression as PromQL: built-in intervals become `5m`; template variables, which
 * Grafana only puts inside label values here, are left in their strings.
 */
export function expandGrafana(expr: string): string {
  return expr.replace(GRAFANA_INTERVALS, '5m');
}

/** A metric family of a text exposition. */
export interface Family {
  readonly name: string;
  readonly type: string;
  /** Series names it exposes: name, or name_bucket/_sum/_count for histograms, name/_sum/_count for summaries. */
  readonly series: readonly string[];
}

/** A parsed /metrics answer. */
export interface Exposition {
  /** Families by name (from `# TYPE`). */
  readonly families: ReadonlyMap<string, Family>;
  /** Series name → its family. */
  readonly seriesFamily: ReadonlyMap<string, Family>;
  /** Series name → label name → the values seen on its samples (absent: no sample yet). */
  readonly labels: ReadonlyMap<string, ReadonlyMap<string, ReadonlySet<string>>>;
}

function seriesOf(name: string, type: string): string[] {
  if (type === 'histogram') return [`${name}_bucket`, `${name}_sum`, `${name}_count`];
  if (type === 'summary') return [name, `${name}_sum`, `${name}_count`];
  return [name];
}

/** The labels of one sample line's `{...}` part, which starts at `open`, as [name, value] pairs. */
function sampleLabels(line: string, open: number): [string, string][] {
  const pairs: [string, string][] = [];
  let i = open + 1;
  for (;;) {
    while (line[i] === ' ' || line[i] === ',') i++;
    if (line[i] === '}') return pairs;
    const m = /^([a-zA-Z_][a-zA-Z0-9_]*)="/.exec(line.slice(i));
    if (m === null) throw new Error(`malformed sample: ${line}`);
    i += m[0].length;
    let value = '';
    while (i < line.length && line[i] !== '"') {
      if (line[i] === '\\') {
        const next = line[i + 1];
        value += next === 'n' ? '\n' : (next ?? '');
        i += 2;
      } else value += line[i++];
    }
    if (i >= line.length) throw new Error(`unterminated label value: ${line}`);
    pairs.push([m[1]!, value]);
    i++;
  }
}

/** Parses the Prometheus text format (version 0.0.4), as prom-client writes it. */
export function parseExposition(text: string): Exposition {
  const families = new Map<string, Family>();
  const seriesFamily = new Map<string, Family>();
  const labels = new Map<string, Map<string, Set<string>>>();
  for (const line of text.split('\n')) {
    if (line.startsWith('# TYPE ')) {
      const [, , name, type] = line.split(' ');
      if (name === undefined || type === undefined) throw new Error(`malformed TYPE line: ${line}`);
      const f: Family = { name, type, series: seriesOf(name, type) };
      families.set(name, f);
      for (const s of f.series) seriesFamily.set(s, f);
      continue;
    }
    if (line === '' || line.startsWith('#')) continue;
    const m = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line);
    if (m === null) throw new Error(`malformed sample: ${line}`);
    const name = m[0];
    if (!seriesFamily.has(name)) throw new Error(`sample ${name} has no # TYPE line`);
    let byLabel = labels.get(name);
    if (byLabel === undefined) labels.set(name, (byLabel = new Map<string, Set<string>>()));
    for (const [label, value] of line[name.length] === '{' ? sampleLabels(line, name.length) : []) {
      let values = byLabel.get(label);
      if (values === undefined) byLabel.set(label, (values = new Set<string>()));
      values.add(value);
    }
  }
  return { families, seriesFamily, labels };
}
