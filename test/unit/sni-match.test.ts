import { describe, expect, it } from 'vitest';

import { SniRouter } from '../../src/protocol/sni-match.js';

const router = new SniRouter([
  { sni: 'api.example.com', target: 'api' },
  { sni: '*.example.com', target: 'wild' },
  { sni: '*.eu.example.com', target: 'eu-wild' },
  { sni: 'eu.example.com', target: 'eu-exact' },
  { sni: 'API.example.com', target: 'duplicate' },
  { sni: 'Trailing.Example.org.', target: 'org' },
  { sni: '*.b.example.net', target: 'specific-first' },
  { sni: '*.example.net', target: 'general-second' },
]);

describe('SniRouter', () => {
  it.each([
    ['exact', 'api.example.com', 'api'],
    ['exact, case-insensitive', 'API.Example.COM', 'api'],
    ['exact with trailing dot', 'api.example.com.', 'api'],
    ['pattern with trailing dot and capitals', 'trailing.example.org', 'org'],
    ['exact beats wildcard', 'eu.example.com', 'eu-exact'],
    ['one label under wildcard', 'www.example.com', 'wild'],
    ['several labels under wildcard', 'a.b.c.example.com', 'wild'],
    ['first wildcard in config order wins over a longer suffix', 'x.eu.example.com', 'wild'],
    ['first wildcard in config order (specific listed first)', 'x.b.example.net', 'specific-first'],
    ['other wildcard', 'x.example.net', 'general-second'],
    ['bare apex not matched by wildcard', 'example.com', undefined],
    ['unrelated', 'example.org', undefined],
    ['suffix without a dot boundary', 'badexample.com', undefined],
    ['empty label', '.example.com', undefined],
    ['double dot', 'a..example.com', undefined],
    ['empty string', '', undefined],
    ['undefined sni', undefined, undefined],
  ])('%s: %s', (_name, sni, expected) => {
    expect(router.match(sni)).toBe(expected);
  });

  it('keeps the first of duplicate patterns', () => {
    expect(router.match('api.example.com')).toBe('api');
    const dupWild = new SniRouter([
      { sni: '*.x.io', target: 1 },
      { sni: '*.X.IO', target: 2 },
    ]);
    expect(dupWild.match('a.x.io')).toBe(1);
  });

  it('ignores invalid patterns', () => {
    const r = new SniRouter([
      { sni: '*', target: 'star' },
      { sni: 'a.*.com', target: 'mid' },
      { sni: '*foo.com', target: 'partial' },
      { sni: '', target: 'empty' },
    ]);
    for (const name of ['x.com', 'a.b.com', 'xfoo.com', '']) expect(r.match(name)).toBeUndefined();
  });

  it.each([
    ['api.example.com', true],
    ['*.example.com', true],
    ['example.com.', true],
    ['_acme.example.com', true],
    ['*', false],
    ['*.', false],
    ['a.*.com', false],
    ['**.example.com', false],
    ['-bad.example.com', false],
    ['sp ace.com', false],
    ['a'.repeat(64) + '.com', false],
  ])('isValidPattern(%s) = %s', (pattern, valid) => {
    expect(SniRouter.isValidPattern(pattern)).toBe(valid);
  });

  it('matches with no routes at all', () => {
    expect(new SniRouter<string>([]).match('a.b')).toBeUndefined();
  });
});
