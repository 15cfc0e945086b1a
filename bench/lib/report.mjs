// Measured runs per peer, reduced to median [min–max] and printed as Markdown tables with a
// ratio row (sluice / reference peer). A run whose load client reported any error is FAILED: its
// figures never reach a median or a ratio, so a run full of failed requests cannot pass for a rate.

export const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length === 0 ? undefined : s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

export class Samples {
  #runs = new Map(); // peer -> [{ values: { metric: number | undefined }, errors }]
  #notes = new Map(); // peer -> string (why there are no numbers, or what the first failure was)

  /**
   * One measured run of `peer`. `values` names the metrics the run measured (a metric this peer
   * does not have, such as direct's proxy CPU, is left out; a figure the run could not produce is
   * `undefined`). `errors` is what the load client reported; any error makes the run FAILED.
   */
  record(peer, values, errors = 0) {
    if (!this.#runs.has(peer)) this.#runs.set(peer, []);
    this.#runs.get(peer).push({ values, errors });
  }

  runs(peer) {
    return this.#runs.get(peer) ?? [];
  }

  note(peer, text) {
    if (!this.#notes.has(peer)) this.#notes.set(peer, text);
  }

  noteOf(peer) {
    return this.#notes.get(peer);
  }
}

export function fmt(v, digits = 2) {
  if (v === undefined) return '–';
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString('en-US');
  return v.toFixed(digits);
}

const sum = (xs) => xs.reduce((a, b) => a + b, 0);
const plural = (n, word) => `${fmt(n, 0)} ${word}${n === 1 ? '' : 's'}`;

/**
 * The state of one cell: the runs that measured `metric` (all runs for a `total` metric, the
 * errors column), the FAILED ones among them, and the figures of the clean ones.
 */
export function cellState(runs, metric) {
  const measured = metric.total ? runs : runs.filter((r) => Object.hasOwn(r.values, metric.key));
  const failed = measured.filter((r) => r.errors > 0);
  const figures = failed.length ? [] : measured.map((r) => r.values[metric.key]).filter(Number.isFinite);
  return { measured, failed, figures };
}

/** A table cell: `FAILED (…)` when any run failed, the total for the errors column, else median (range). */
export function cellText(runs, metric, note) {
  const { measured, failed, figures } = cellState(runs, metric);
  // n/a: the peer never ran (its note says why); –: it ran but has no such figure (direct's CPU).
  if (measured.length === 0) return note && runs.length === 0 ? 'n/a' : '–';
  if (metric.total) return fmt(sum(measured.map((r) => r.errors)), 0);
  if (failed.length) {
    const errors = sum(failed.map((r) => r.errors));
    return `FAILED (${plural(errors, 'error')} in ${failed.length} of ${plural(measured.length, 'run')})`;
  }
  if (figures.length === 0) return '–';
  const med = fmt(median(figures), metric.digits);
  return figures.length > 1
    ? `${med} (${fmt(Math.min(...figures), metric.digits)}–${fmt(Math.max(...figures), metric.digits)})`
    : med;
}

/** A ratio cell: '–' when either side has no figure or FAILED (a ratio of a failure means nothing). */
export function ratioText(numRuns, denRuns, metric) {
  // A total, or a metric whose ratio means nothing (a share lost, the offered rate).
  if (metric.total || metric.ratio === false) return '–';
  const a = cellState(numRuns, metric);
  const b = cellState(denRuns, metric);
  if (a.failed.length || b.failed.length) return '–';
  const num = median(a.figures);
  const den = median(b.figures);
  return num === undefined || den === undefined || den === 0 ? '–' : `**${(num / den).toFixed(2)}×**`;
}

/**
 * A table: one row per peer (median [min–max] of the repetitions), then one ratio row per
 * {num, den} pair. metrics: [{key, label, digits, total?, ratio?}]; `total: true` is the errors
 * column (the sum of the errors of every run of the row); `ratio: false` leaves the metric out of
 * the ratio rows.
 */
export function table(samples, peers, metrics, ratios = [], first = 'peer') {
  const head = `| ${first} | ${metrics.map((m) => m.label).join(' | ')} |`;
  const rule = `|---|${metrics.map(() => '---:').join('|')}|`;
  const rows = peers.map((p) => {
    const cells = metrics.map((m) => cellText(samples.runs(p), m, samples.noteOf(p)));
    return `| ${p} | ${cells.join(' | ')} |`;
  });
  for (const { num, den } of ratios) {
    const cells = metrics.map((m) => ratioText(samples.runs(num), samples.runs(den), m));
    rows.push(`| ${num} / ${den} | ${cells.join(' | ')} |`);
  }
  const notes = peers.filter((p) => samples.noteOf(p)).map((p) => `- ${p}: ${samples.noteOf(p)}`);
  return [head, rule, ...rows, ...(notes.length ? ['', ...notes] : [])].join('\n');
}

/** The errors column every table ends with. */
export const ERRORS = { key: 'errors', label: 'errors', total: true };
