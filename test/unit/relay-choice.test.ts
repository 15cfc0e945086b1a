import { describe, expect, it, vi } from 'vitest';
import { chooseRelay } from '../../src/lifecycle/runtime.js';
import type { SpliceRelay } from '../../src/relay/binding.js';

const missing = (): { relay: SpliceRelay | undefined; error: string | undefined } => ({
  relay: undefined,
  error: 'build/sluice_relay.node could not be loaded: no such file',
});

describe('relay: auto | splice | stream', () => {
  it('stream never loads the splice relay', () => {
    const load = vi.fn(missing);
    expect(chooseRelay('stream', load)).toEqual({ relay: undefined, error: undefined });
    expect(load).not.toHaveBeenCalled();
  });

  it('auto falls back to streams and says why when the relay cannot be loaded', () => {
    expect(chooseRelay('auto', missing)).toEqual({
      relay: undefined,
      error: 'build/sluice_relay.node could not be loaded: no such file',
    });
  });

  it('splice refuses to start (or reload) without the relay, with a one-line cause', () => {
    expect(() => chooseRelay('splice', missing)).toThrow(
      'relay: splice is not available: build/sluice_relay.node could not be loaded: no such file',
    );
  });

  it('auto and splice take the relay when it loads', () => {
    const relay = {} as SpliceRelay;
    const load = (): { relay: SpliceRelay | undefined; error: string | undefined } => ({
      relay,
      error: undefined,
    });
    expect(chooseRelay('auto', load).relay).toBe(relay);
    expect(chooseRelay('splice', load).relay).toBe(relay);
  });
});
