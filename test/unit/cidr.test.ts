import { describe, expect, it } from 'vitest';
import { CidrSet, normalizeIp, parseCidr } from '../../src/util/cidr.js';

describe('CIDR sets', () => {
  it.each([
    ['10.0.0.0/8', '10.200.3.4', true],
    ['10.0.0.0/8', '11.0.0.1', false],
    ['10.0.0.0/8', '::ffff:10.1.2.3', true],
    ['0.0.0.0/0', '192.0.2.1', true],
    ['0.0.0.0/0', '2001:db8::1', false],
    ['::/0', '2001:db8::1', true],
    ['2001:db8::/32', '2001:db8:ffff::1', true],
    ['2001:db8::/32', '2001:db9::1', false],
    ['127.0.0.9', '127.0.0.9', true],
    ['127.0.0.9', '127.0.0.8', false],
    ['::1/128', '::1', true],
    ['192.168.1.0/25', '192.168.1.127', true],
    ['192.168.1.0/25', '192.168.1.128', false],
    ['fe80::/10', 'fe80::1%eth0', true],
  ])('%s contains %s: %s', (cidr, ip, expected) => {
    expect(CidrSet.parse([cidr]).has(ip)).toBe(expected);
  });

  it.each(['10.0.0.0/33', '1.2.3', '::/129', '1.2.3.256/8', 'nope', '10.0.0.0/x', '01.2.3.4'])(
    'rejects %s',
    (text) => {
      expect(parseCidr(text)).toBeUndefined();
    },
  );

  it('matches nothing when empty and never matches garbage', () => {
    expect(CidrSet.parse([]).has('1.2.3.4')).toBe(false);
    expect(CidrSet.parse(['0.0.0.0/0']).has('not-an-ip')).toBe(false);
  });

  it('normalises v4-mapped addresses', () => {
    expect(normalizeIp('::ffff:127.0.0.1')).toBe('127.0.0.1');
    expect(normalizeIp('::1')).toBe('::1');
  });
});
