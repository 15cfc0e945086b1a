// Samples per peer and metric, reduced to median [min–max] and printed as Markdown tables with a
// ratio row (sluice / reference peer).

export const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length === 0 ? undefined : s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

export class Samples {
  #data = new Map(); // peer -> metric -> number[]
  #notes = new Map(); // peer -> string (why there are no numbers)

  add(peer, metric, value) {
    if (value === undefined || !Number.isFinite(value)) return;
    if (!this.#data.has(peer)) this.#data.set(peer, new Map());
    const m = this.#data.get(peer);
    if (!m.has(metric)) m.set(metric, []);
    m.get(metric).push(value);
  }

  values(peer, metric) {
    return this.#data.get(peer)?.get(metric) ?? [];
  }

  median(peer, metric) {
    return median(this.values(peer, metric));
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

/**
 * A table: one row per peer (median [min–max] of the repetitions), then one ratio row per
 * {num, den} pair. metrics: [{key, label, digits, flag?, ratio?}]; flag(peer) returns a word to
 * print beside that peer's figure (e.g. "lossy"), or undefined; ratio: false leaves the metric
 * out of the ratio rows (a count of losses has no meaningful ratio).
 */
export function table(samples, peers, metrics, ratios = [], first = 'peer') {
  const head = `| ${first} | ${metrics.map((m) => m.label).join(' | ')} |`;
  const rule = `|---|${metrics.map(() => '---:').join('|')}|`;
  const rows = peers.map((p) => {
    const note = samples.noteOf(p);
    const cells = metrics.map((m) => {
      const xs = samples.values(p, m.key);
      if (xs.length === 0) return note ? 'n/a' : '–';
      const med = fmt(median(xs), m.digits);
      const flag = m.flag?.(p);
      const cell =
        xs.length > 1 ? `${med} (${fmt(Math.min(...xs), m.digits)}–${fmt(Math.max(...xs), m.digits)})` : med;
      return flag === undefined ? cell : `${cell}, ${flag}`;
    });
    return `| ${p} | ${cells.join(' | ')} |`;
  });
  for (const { num, den } of ratios) {
    const cells = metrics.map((m) => {
      if (m.ratio === false) return '–';
      const a = samples.median(num, m.key);
      const b = samples.median(den, m.key);
      return a === undefined || b === undefined || b === 0 ? '–' : `**${(a / b).toFixed(2)}×**`;
    });
    rows.push(`| ${num} / ${den} | ${cells.join(' | ')} |`);
  }
  const notes = peers.filter((p) => samples.noteOf(p)).map((p) => `- ${p}: ${samples.noteOf(p)}`);
  return [head, rule, ...rows, ...(notes.length ? ['', ...notes] : [])].join('\n');
}
