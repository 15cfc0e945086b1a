import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { ConfigError } from '../../src/config/validate.js';

function problems(text: string): string[] {
  try {
    parseConfigText(text);
  } catch (err) {
    if (err instanceof ConfigError) return err.problems.map((p) => `${p.path}: ${p.message}`);
    throw err;
  }
  return [];
}

function cfg(quic: string, pool = 'algorithm: maglev', backends = '{ address: "10.0.0.1:443" }'): string {
  return `listeners:
  - { name: h3, protocol: udp, bind: "0.0.0.0:443", pool: p, quic: ${quic} }
pools:
  - { name: p, ${pool}, backends: [${backends}] }
`;
}

describe('config: listeners[].quic and backends[].server_id', () => {
  it('defaults: on once present, unroutable datagrams get a flow by address, no server IDs', () => {
    const c = parseConfigText(cfg('{}'));
    expect(c.listeners[0]?.quic).toEqual({ enabled: true, unroutable: 'flow' });
    expect(parseConfigText(cfg('{ enabled: false }')).listeners[0]?.quic?.enabled).toBe(false);
    const withIds = parseConfigText(
      cfg(
        '{ unroutable: drop, server_id: { length: 3 } }',
        'algorithm: ring-hash',
        '{ address: "10.0.0.1:443", server_id: C4605E }',
      ),
    );
    expect(withIds.listeners[0]?.quic).toEqual({
      enabled: true,
      unroutable: 'drop',
      server_id: { length: 3, config_rotation: 0 },
    });
    expect(withIds.pools[0]?.backends[0]?.server_id).toBe('C4605E');
  });

  it('a listener without the block routes by address', () => {
    expect(parseConfigText(cfg('{}').replace(', quic: {}', '')).listeners[0]?.quic).toBeUndefined();
  });

  it.each([
    [cfg('{ unroutable: maybe }'), 'listeners[0].quic.unroutable: expected one of "flow", "drop"'],
    [cfg('{ cid_length: 8 }'), 'listeners[0].quic.cid_length: unknown key'],
    [cfg('{ server_id: { length: 16 } }'), 'listeners[0].quic.server_id.length: must be <= 15'],
    [cfg('{ server_id: { length: 0 } }'), 'listeners[0].quic.server_id.length: must be >= 1'],
    [cfg('{ server_id: {} }'), 'listeners[0].quic.server_id.length: required (number)'],
    [
      cfg(
        '{ server_id: { length: 1, config_rotation: 7 } }',
        undefined,
        '{ address: "10.0.0.1:443", server_id: "01" }',
      ),
      'listeners[0].quic.server_id.config_rotation: must be <= 6',
    ],
    [
      cfg('{}', 'algorithm: round-robin'),
      'listeners[0].quic: pool "p" uses round-robin: routing by connection ID needs algorithm maglev or ring-hash',
    ],
    [
      cfg('{ server_id: { length: 2 } }', undefined, '{ address: "10.0.0.1:443", server_id: "abc" }'),
      'pools[0].backends[0].server_id: expected 1 to 15 octets in hex, such as c4605e',
    ],
    [
      cfg('{ server_id: { length: 2 } }', undefined, '{ address: "10.0.0.1:443", server_id: "a1b2c3" }'),
      'pools[0].backends[0].server_id: expected 2 octet(s), as listeners[0].quic.server_id.length says',
    ],
    [
      cfg(
        '{ server_id: { length: 1 } }',
        undefined,
        '{ address: "10.0.0.1:443", server_id: "0A" }, { address: "10.0.0.2:443", server_id: "0a" }',
      ),
      'pools[0].backends[1].server_id: same server ID as backends[0]',
    ],
    [
      cfg('{ server_id: { length: 1 } }'),
      'listeners[0].quic.server_id: no backend of pool "p" has a server_id',
    ],
  ])('%#: %s', (text, problem) => {
    expect(problems(text)).toContain(problem);
  });

  it('only on udp listeners', () => {
    const text = cfg('{}').replace('protocol: udp', 'protocol: tcp');
    expect(problems(text)).toContain('listeners[0].quic: only for udp listeners');
  });

  it('a disabled block is not checked against the pool', () => {
    expect(problems(cfg('{ enabled: false }', 'algorithm: round-robin'))).toEqual([]);
  });
});
