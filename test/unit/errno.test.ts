import { describe, expect, it } from 'vitest';
import { errnoName } from '../../src/util/errno.js';

describe('errnoName', () => {
  it('names the positive errno values the relay reports', () => {
    expect(errnoName(104)).toBe('ECONNRESET');
    expect(errnoName(111)).toBe('ECONNREFUSED');
    expect(errnoName(24)).toBe('EMFILE');
  });

  it('falls back to EIO for a missing or non-positive value', () => {
    expect(errnoName(undefined)).toBe('EIO');
    expect(errnoName(0)).toBe('EIO');
    expect(errnoName(-5)).toBe('EIO');
  });
});
