// The table logic: a repetition with errors turns its cells into FAILED and its ratios into '–'.
// Run with `npm run test:bench`.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ERRORS, Samples, cellText, ratioText, table } from './report.mjs';

const CPS = { key: 'cps', label: 'conn/s', digits: 0 };
const CPU = { key: 'cpu', label: 'CPU-ms/1k conn', digits: 1 };

const clean = (cps, cpu) => ({ values: { cps, cpu }, errors: 0 });

describe('cellText', () => {
  it('prints the median and the range of clean runs', () => {
    const runs = [clean(100, 1), clean(300, 3), clean(200, 2)];
    assert.equal(cellText(runs, CPS), '200 (100–300)');
  });

  it('prints FAILED with the errors, however good the other runs look', () => {
    const runs = [clean(100, 1), { values: { cps: 90_000, cpu: 0.1 }, errors: 1234 }, clean(120, 1)];
    assert.equal(cellText(runs, CPS), 'FAILED (1,234 errors in 1 of 3 runs)');
    assert.equal(cellText(runs, CPU), 'FAILED (1,234 errors in 1 of 3 runs)');
  });

  it('counts a run that produced no figure at all as FAILED too', () => {
    const runs = [{ values: { cps: undefined }, errors: 1 }];
    assert.equal(cellText(runs, CPS), 'FAILED (1 error in 1 of 1 run)');
  });

  it('sums the errors of every run in the errors column', () => {
    const runs = [clean(100, 1), { values: { cps: 5 }, errors: 7 }, { values: { cps: 5 }, errors: 3 }];
    assert.equal(cellText(runs, ERRORS), '10');
    assert.equal(cellText([clean(1, 1)], ERRORS), '0');
  });

  it('leaves a metric the peer does not have empty, even when its run failed', () => {
    const runs = [{ values: { cps: 5 }, errors: 2 }];
    assert.equal(cellText(runs, CPU, 'wrk socket errors: …'), '–');
    assert.equal(cellText([], CPS, 'did not start'), 'n/a');
  });
});

describe('ratioText', () => {
  const good = [clean(200, 2), clean(200, 2)];
  const bad = [clean(100, 1), { values: { cps: 100, cpu: 1 }, errors: 1 }];

  it('divides the medians of clean runs', () => {
    assert.equal(ratioText([clean(100, 1)], good, CPS), '**0.50×**');
  });

  it('prints – when either side FAILED', () => {
    assert.equal(ratioText(bad, good, CPS), '–');
    assert.equal(ratioText(good, bad, CPU), '–');
  });

  it('prints – for the errors column', () => {
    assert.equal(ratioText(good, good, ERRORS), '–');
  });
});

describe('table', () => {
  it('shows a FAILED row, its note and a ratio without a number', () => {
    const s = new Samples();
    s.record('haproxy', { cps: 100, cpu: 1 });
    s.record('sluice', { cps: 150, cpu: 2 }, 12);
    s.note('sluice', 'wrk socket errors: connect 0, read 12, write 0, timeout 0 (rep 1)');
    const text = table(s, ['haproxy', 'sluice'], [CPS, CPU, ERRORS], [{ num: 'sluice', den: 'haproxy' }]);
    assert.deepEqual(text.split('\n'), [
      '| peer | conn/s | CPU-ms/1k conn | errors |',
      '|---|---:|---:|---:|',
      '| haproxy | 100 | 1.0 | 0 |',
      '| sluice | FAILED (12 errors in 1 of 1 run) | FAILED (12 errors in 1 of 1 run) | 12 |',
      '| sluice / haproxy | – | – | – |',
      '',
      '- sluice: wrk socket errors: connect 0, read 12, write 0, timeout 0 (rep 1)',
    ]);
  });
});
