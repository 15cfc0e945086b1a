// What the load generators' output parsers count as errors. Run with `npm run test:bench`.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseIperf, parseWrk } from './load.mjs';

const WRK_CLEAN = `Running 4s test @ http://127.0.0.1:23100/
  1 threads and 50 connections
  56000 requests in 4.00s, 8.00MB read
Requests/sec:  14000.00
Transfer/sec:      2.00MB
`;

const WRK_FAILING = `Running 4s test @ http://127.0.0.1:23100/
  1 threads and 50 connections
  40000 requests in 4.00s, 5.00MB read
  Socket errors: connect 0, read 31000, write 2, timeout 3
  Non-2xx or 3xx responses: 5
Requests/sec:  10000.00
`;

describe('parseWrk', () => {
  it('a clean run has no errors', () => {
    const w = parseWrk(WRK_CLEAN);
    assert.equal(w.requests, 56000);
    assert.equal(w.rps, 14000);
    assert.equal(w.errors, 0);
  });

  it('counts socket errors and non-2xx responses', () => {
    const w = parseWrk(WRK_FAILING);
    assert.equal(w.errors, 31000 + 2 + 3 + 5);
    assert.match(w.why, /read 31000/);
    assert.match(w.why, /non-2xx\/3xx responses: 5/);
  });
});

describe('parseIperf', () => {
  it('reads the received rate of a TCP run', () => {
    const r = parseIperf({ end: { sum_received: { bits_per_second: 1e10, bytes: 5e9 } } });
    assert.deepEqual(r, { bps: 1e10, bytes: 5e9, errors: 0, why: '' });
  });

  it('counts a run that ended in an error as one error', () => {
    const r = parseIperf({ end: {}, error: 'unable to connect to server: Connection refused' });
    assert.equal(r.errors, 1);
    assert.match(r.why, /Connection refused/);
  });

  it('counts the lost datagrams of a UDP run (iperf 3.12 -u -J)', () => {
    const sum = { bits_per_second: 50510680, bytes: 6400000, lost_packets: 90008, lost_percent: 47.369 };
    const r = parseIperf({ end: { sum_received: sum } });
    assert.equal(r.errors, 90008);
    assert.equal(r.why, 'iperf3: 90008 datagrams lost (47.37 %)');
  });
});
