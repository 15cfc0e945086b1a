import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { ConfigError } from '../../src/config/validate.js';
import { formatHostPort, parseDuration, parseHostPort } from '../../src/config/values.js';

const minimal = `listeners: [{ name: web, bind: "0.0.0.0:8443", pool: p }]
pools: [{ name: p, backends: [{ address: "10.0.0.1:8443" }] }]
`;

function problems(text: string): string[] {
  try {
    parseConfigText(text);
  } catch (err) {
    if (err instanceof ConfigError) return err.problems.map((p) => `${p.path}: ${p.message}`);
    throw err;
  }
  return [];
}

describe('state.redis', () => {
  const withRedis = (redis: string): string => `${minimal}state: { store: redis, redis: ${redis} }\n`;
  it('refuses a brace in key_prefix with Cluster nodes, naming the key', () => {
    expect(problems(withRedis('{ nodes: ["10.0.0.1:6379"], key_prefix: "a{b}" }'))).toEqual([
      'state.redis.key_prefix: must not contain { or } with nodes (sluice makes the Cluster hash tags itself)',
    ]);
    expect(problems(withRedis('{ nodes: ["10.0.0.1:6379"], key_prefix: "edge-eu" }'))).toEqual([]);
    expect(problems(withRedis('{ key_prefix: "a{b}" }'))).toEqual([]);
  });
});

describe('durations', () => {
  it.each([
    ['250ms', 250],
    ['5s', 5000],
    ['2m', 120_000],
    ['1h', 3_600_000],
    ['1.5s', 1500],
    [1500, 1500],
    [0, 0],
  ])('%s is %i ms', (input, ms) => {
    expect(parseDuration(input)).toEqual({ ok: true, value: ms });
  });
  it.each(['5', '5 s', '-1s', 's', '1d', '', 1.5, -3, null, true])('rejects %s', (input) => {
    expect(parseDuration(input).ok).toBe(false);
  });
});

describe('addresses', () => {
  it.each([
    ['10.0.0.1:80', '10.0.0.1', 80],
    ['[::1]:8443', '::1', 8443],
    ['ingress.internal:443', 'ingress.internal', 443],
    ['[2001:db8::1]:1', '2001:db8::1', 1],
  ])('%s', (input, host, port) => {
    expect(parseHostPort(input)).toEqual({ ok: true, value: { host, port } });
  });
  it.each([
    '10.0.0.1',
    '::1:80',
    '[::1]80',
    '[nope]:80',
    'host:0',
    'host:65536',
    'host:-1',
    ':80',
    'a b:80',
    80,
  ])('rejects %s', (input) => {
    expect(parseHostPort(input).ok).toBe(false);
  });
  it('allows port 0 only where asked', () => {
    expect(parseHostPort('127.0.0.1:0', true).ok).toBe(true);
  });
  it('formats IPv6 in brackets', () => {
    expect(formatHostPort('::1', 80)).toBe('[::1]:80');
    expect(formatHostPort('10.0.0.1', 80)).toBe('10.0.0.1:80');
  });
});

describe('config', () => {
  it('fills every default in', () => {
    const c = parseConfigText(minimal);
    expect(c.admin.listen).toEqual({ host: '127.0.0.1', port: 9090 });
    expect(c.state).toMatchObject({ store: 'memory', heartbeat: 1000 });
    expect(c.shutdown.drain_timeout).toBe(30_000);
    expect(c.listeners[0]).toMatchObject({
      protocol: 'tcp',
      access: { allow: ['0.0.0.0/0', '::/0'], deny: [] },
      limits: { max_connections: 10_000, per_source_connections: 0, per_source_rate: 0 },
      timeouts: { connect: 5000, idle: 350_000, preface: 5000 },
    });
    expect(c.pools[0]).toMatchObject({
      algorithm: 'round-robin',
      proxy_protocol: 'off',
      connect_retries: 2,
      health: { active: { type: 'tcp', interval: 2000, timeout: 1000, rise: 2, fall: 3 } },
    });
  });

  it('accepts JSON, which is YAML', () => {
    expect(() =>
      parseConfigText(
        JSON.stringify({
          listeners: [{ name: 'a', bind: '[::]:1', pool: 'p' }],
          pools: [{ name: 'p', backends: [{ address: '[::1]:2' }] }],
        }),
      ),
    ).not.toThrow();
  });

  it('parses the SPEC example', () => {
    const spec = `admin:
  listen: 127.0.0.1:9090
log: { level: info, access_log: true }
workers: 1
state:
  store: memory
  redis: { url: redis://127.0.0.1:6379/0, key_prefix: sluice }
  replica_id: edge-1
  heartbeat: 1s
shutdown: { drain_timeout: 30s }
listeners:
  - name: https
    protocol: tcp
    bind: 0.0.0.0:443
    pool: ingress
    proxy_protocol_in: { trusted: [10.0.0.0/8] }
    tls:
      routes:
        - { sni: api.example.com, pool: api }
        - { sni: "*.example.com", pool: ingress }
      on_no_match: default
    access: { allow: [0.0.0.0/0, "::/0"], deny: [] }
    limits: { max_connections: 10000, per_source_connections: 0, per_source_rate: 0 }
    timeouts: { connect: 5s, idle: 350s, preface: 5s }
  - name: dns
    protocol: udp
    bind: 0.0.0.0:53
    pool: dns
    udp: { flow_idle: 120s, max_flows: 100000 }
pools:
  - name: ingress
    algorithm: least-connections
    hash_key: source-ip
    proxy_protocol: v2
    connect_retries: 2
    backends:
      - { address: 10.0.1.5:8443, weight: 1 }
    discovery: { dns: { name: ingress.internal, port: 8443, interval: 10s } }
    health:
      active: { type: tcp, interval: 2s, timeout: 1s, rise: 2, fall: 3 }
      passive: { consecutive_failures: 5, ejection: 30s }
    slow_start: 0s
  - { name: api, backends: [{ address: "10.0.2.1:443" }] }
  - { name: dns, backends: [{ address: "10.0.3.1:53" }], health: { active: { type: none } } }
`;
    expect(problems(spec)).toEqual([]);
  });

  it.each([
    [
      minimal.replace('0.0.0.0:8443', '0.0.0.0'),
      'listeners[0].bind: expected host:port (IPv6 as [::1]:port)',
    ],
    [minimal.replace('pool: p }', 'pool: q }'), 'listeners[0].pool: no pool named "q"'],
    [minimal + 'admin: { listen: x }\n', 'admin.listen: expected host:port (IPv6 as [::1]:port)'],
    [minimal + 'bogus: 1\n', 'bogus: unknown key'],
    [minimal + 'workers: 0\n', 'workers: must be >= 1'],
    [minimal + 'relay: kernel\n', 'relay: expected one of "auto", "splice", "stream"'],
    [
      minimal + 'shutdown: { drain_timeout: soon }\n',
      'shutdown.drain_timeout: expected a duration such as 250ms, 5s, 2m, 1h or whole milliseconds',
    ],
    [
      minimal.replace('{ name: p,', '{ name: p, algorithm: best,'),
      'pools[0].algorithm: expected one of "round-robin", "least-connections", "power-of-two", "random", "maglev", "ring-hash"',
    ],
    [
      minimal.replace('"10.0.0.1:8443" }', '"10.0.0.1:8443", weight: 999 }'),
      'pools[0].backends[0].weight: must be <= 256',
    ],
    [
      minimal.replace('backends: [{ address: "10.0.0.1:8443" }]', 'backends: []'),
      'pools[0].backends: a pool needs backends or discovery',
    ],
    [
      minimal.replace('"10.0.0.1:8443" }', '"10.0.0.1:8443" }, { address: "10.0.0.1:8443" }'),
      'pools[0].backends[1].address: duplicate backend 10.0.0.1:8443',
    ],
    [
      minimal.replace('pool: p }', 'pool: p, access: { allow: [10.0.0.0/33] } }'),
      'listeners[0].access.allow[0]: expected a CIDR such as 10.0.0.0/8 or ::/0',
    ],
    [
      minimal.replace('{ name: p,', '{ name: p, health: { active: { type: send-expect } },'),
      'pools[0].health.active.expect: required for type send-expect',
    ],
    [
      minimal.replace('{ name: p,', '{ name: p, algorithm: maglev, maglev_table_size: 1000,'),
      'pools[0].maglev_table_size: must be a prime number',
    ],
    ['listeners: nope\npools: []\n', 'listeners: expected array, got string'],
    ['- 1\n', '(root): expected a mapping'],
    ['pools: [\n', 'line 2: Flow sequence'],
  ])('rejects a bad config with the key path (%#)', (text, expected) => {
    const got = problems(text);
    expect(
      got.some((p) => p.startsWith(expected)),
      `got ${JSON.stringify(got)}`,
    ).toBe(true);
  });

  it('lists every problem, not just the first', () => {
    const got = problems(
      `listeners: [{ name: a, bind: x, pool: p, timeouts: { idle: y } }]\npools: [{ name: p, algorithm: z, backends: [] }]\n`,
    );
    expect(got.length).toBeGreaterThanOrEqual(3);
  });
});

/** `&a0 [x ×10]`, then `depth` more levels of `&aN [*aN-1 ×10]` under listeners: 10^(depth+1) values. */
function aliasBomb(depth: number): string {
  let text = 'listeners:\n  - &a0 [x, x, x, x, x, x, x, x, x, x]\n';
  for (let i = 1; i <= depth; i++)
    text += `  - &a${i} [${Array(10)
      .fill(`*a${i - 1}`)
      .join(', ')}]\n`;
  return `${text}pools: [{ name: p, backends: [{ address: "10.0.0.1:1" }] }]\n`;
}

describe('hostile YAML', () => {
  it('refuses an alias bomb as a config problem, by line', () => {
    expect(problems(aliasBomb(9))).toEqual([
      'line 7: too many values once aliases are expanded (more than 1,000,000)',
    ]);
  });

  it('refuses a nest too deep for the parser with a plain message', () => {
    const got = problems(`listeners: ${'['.repeat(100_000)}${']'.repeat(100_000)}\n`);
    expect(got).toEqual(['line 1: nesting too deep (more than 64 levels of lists and mappings)']);
  });

  it('refuses a nest deeper than 64 levels that the parser would take', () => {
    expect(problems(`listeners: ${'['.repeat(65)}${']'.repeat(65)}\n`)).toEqual([
      'line 1: nesting too deep (more than 64 levels of lists and mappings)',
    ]);
  });

  it('refuses more than 1,000 aliases (converting them costs their number squared)', () => {
    let text = 'x:\n';
    for (let i = 0; i < 1001; i++) text += `  - &a${i} v\n`;
    text += 'y:\n';
    for (let i = 0; i < 1001; i++) text += `  - *a${i}\n`;
    expect(problems(text)).toEqual(['line 2004: more than 1000 aliases']);
  });

  it('still takes anchors that a real config uses: one health block shared by 100 pools', () => {
    let text = `listeners: [{ name: l, bind: "127.0.0.1:1", pool: p0 }]\npools:\n`;
    text +=
      '  - { name: p0, health: &health { active: { type: none } }, backends: [{ address: "10.0.0.1:1" }] }\n';
    for (let i = 1; i < 100; i++)
      text += `  - { name: p${i}, health: *health, backends: [{ address: "10.0.0.1:1" }] }\n`;
    const cfg = parseConfigText(text);
    expect(cfg.pools).toHaveLength(100);
    expect(cfg.pools.every((p) => p.health.active.type === 'none')).toBe(true);
  });

  it('names every key repeated within one mapping, by line', () => {
    const text = `listeners:
  - name: a
    name: b
    bind: "127.0.0.1:1"
    pool: p
pools: [{ name: p, backends: [{ address: "10.0.0.1:1", address: "10.0.0.2:1" }] }]
pools: []
`;
    expect(problems(text)).toEqual([
      'line 3: Map keys must be unique',
      'line 6: Map keys must be unique',
      'line 7: Map keys must be unique',
    ]);
  });

  it('compares keys by value and type, as YAML does: 1 and "1" are two keys', () => {
    expect(
      problems(`${minimal}x: { 1: a, "1": b }
`),
    ).toEqual(['x: unknown key']);
    expect(
      problems(`${minimal}x: { 1: a, 1: b }
`),
    ).toEqual(['line 3: Map keys must be unique']);
  });

  it('lists at most 20 repeated keys, then how many more', () => {
    const got = problems(`x:
${'  k: v\n'.repeat(26)}`);
    expect(got).toHaveLength(21);
    expect(got.at(-1)).toBe('(syntax): 5 more errors not listed');
  });

  it(
    'checks a mapping of 50,000 keys in linear work (a pairwise check would take a minute)',
    { timeout: 30_000 },
    () => {
      let text = minimal;
      for (let i = 0; i < 50_000; i++) text += `k${i}: v\n`;
      const got = problems(text);
      expect(got).toHaveLength(50_000);
      expect(got[0]).toBe('k0: unknown key');
    },
  );

  it('takes an anchor that refers to itself as the value it is (no endless walk)', () => {
    expect(
      problems('listeners: &l [*l]\npools: [{ name: p, backends: [{ address: "10.0.0.1:1" }] }]\n'),
    ).toEqual(['listeners[0]: expected object, got a list']);
  });
});

describe('admin address and token', () => {
  const withAdmin = (admin: string): string => `${minimal}admin: ${admin}\n`;
  const REMOTE = 'is not loopback: set admin.token_file (or admin.allow_unauthenticated_remote: true';

  it.each(['0.0.0.0:9090', '"[::]:9090"', '10.1.2.3:9090', 'admin.internal:9090', '"127.1:9090"'])(
    'refuses %s without a token, naming admin.listen and admin.token_file',
    (listen) => {
      const got = problems(withAdmin(`{ listen: ${listen} }`));
      expect(got).toHaveLength(1);
      expect(got[0]).toMatch(/^admin\.listen: \S+ /);
      expect(got[0]).toContain(REMOTE);
    },
  );

  it.each(['127.0.0.1:9090', '127.9.9.9:0', '"[::1]:9090"', 'localhost:9090', '"[::ffff:127.0.0.1]:9090"'])(
    'needs no token on loopback (%s)',
    (listen) => {
      expect(problems(withAdmin(`{ listen: ${listen} }`))).toEqual([]);
    },
  );

  it('takes a remote address with a token, or when told to serve it without one', () => {
    expect(problems(withAdmin('{ listen: 0.0.0.0:9090, token_file: /etc/sluice/token }'))).toEqual([]);
    const open = parseConfigText(withAdmin('{ listen: 0.0.0.0:9090, allow_unauthenticated_remote: true }'));
    expect(open.admin.allow_unauthenticated_remote).toBe(true);
    expect(parseConfigText(minimal).admin.allow_unauthenticated_remote).toBe(false);
  });
});
