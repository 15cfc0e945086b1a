// Where --pin puts a proxy and its load. Run with `npm run test:bench`.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { pinCores, placementText } from './pin.mjs';

describe('pinCores', () => {
  it('gives a one-core proxy CPU 0 and the load every other CPU', () => {
    assert.deepEqual(pinCores(2, 1), { proxy: '0', load: '1' });
    assert.deepEqual(pinCores(8), { proxy: '0', load: '1-7' });
  });

  it('gives a two-core proxy CPUs 0-1 and the load the rest', () => {
    assert.deepEqual(pinCores(3, 2), { proxy: '0-1', load: '2' });
    assert.deepEqual(pinCores(4, 2), { proxy: '0-1', load: '2-3' });
  });

  it('refuses a machine without a CPU left for the load', () => {
    assert.throws(
      () => pinCores(2, 2),
      /--pin: needs at least 3 CPUs \(2 for the proxy, one or more for the load\), have 2/,
    );
    assert.throws(() => pinCores(1, 1), /needs at least 2 CPUs/);
  });

  it('reads as CPU or CPUs in the report', () => {
    assert.equal(
      placementText({ proxy: '0-1', load: '2-3' }),
      '`--pin`: each proxy alone on CPUs 0-1; wrk, iperf3 and the backends on CPUs 2-3',
    );
    assert.equal(
      placementText({ proxy: '0', load: '1' }),
      '`--pin`: each proxy alone on CPU 0; wrk, iperf3 and the backends on CPU 1',
    );
  });
});
