import { describe, expect, it } from 'vitest';
import fc from 'fast-check';

import { escapeForLog } from '../../src/util/escape.js';

describe('escapeForLog', () => {
  it.each([
    ['plain text', 'api.example.com', 'api.example.com'],
    ['CR LF', 'a\r\nb', 'a\\x0d\\x0ab'],
    ['ANSI escape', '\x1b[31mred', '\\x1b[31mred'],
    ['NUL and DEL', '\x00\x7f', '\\x00\\x7f'],
    ['quote and backslash', 'a"b\\c', 'a\\x22b\\x5cc'],
    ['non-ASCII as UTF-8 bytes', 'é', '\\xc3\\xa9'],
    ['empty', '', ''],
  ])('%s', (_name, input, expected) => {
    expect(escapeForLog(input)).toBe(expected);
  });

  it('escapes raw bytes of a Buffer', () => {
    expect(escapeForLog(Buffer.from([0x41, 0x0a, 0xff]))).toBe('A\\x0a\\xff');
  });

  it('keeps input that fits exactly', () => {
    expect(escapeForLog('abcd', 4)).toBe('abcd');
  });

  it('caps with a marker and never splits an escape sequence', () => {
    expect(escapeForLog('abcdef', 4)).toBe('abc…');
    expect(escapeForLog('ab\ncd', 5)).toBe('ab…');
    expect(escapeForLog('x'.repeat(100_000))).toHaveLength(256);
  });

  it('output is one printable line within the cap, for any input', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 600 }), fc.integer({ min: 1, max: 300 }), (bytes, max) => {
        const out = escapeForLog(Buffer.from(bytes), max);
        expect(out.length).toBeLessThanOrEqual(max);
        expect(/^[\x20-\x7e]*…?$/.test(out)).toBe(true);
      }),
      { numRuns: 2000 },
    );
  });

  it('round-trips when not capped', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 50 }), (bytes) => {
        const out = escapeForLog(Buffer.from(bytes), 1000);
        const back = Buffer.from(
          out.replace(/\\x([0-9a-f]{2})/g, (_m, h: string) => String.fromCharCode(parseInt(h, 16))),
          'latin1',
        );
        expect(back.equals(Buffer.from(bytes))).toBe(true);
      }),
      { numRuns: 1000 },
    );
  });
});
