import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { parseSize } from '../../src/config/values.js';
import { OverloadGuard } from '../../src/lifecycle/overload.js';
import type { OverloadConfig } from '../../src/lifecycle/overload.js';
import { silentLogger } from '../../src/telemetry/logger.js';

const MiB = 1024 * 1024;

function guard(cfg: Partial<OverloadConfig>, used: { value: number }): OverloadGuard {
  const full: OverloadConfig = {
    max_memory: 100 * MiB,
    measure: 'rss',
    resume_ratio: 0.9,
    interval: 250,
    ...cfg,
  };
  return new OverloadGuard(full, silentLogger(), () => used.value);
}

describe('overload guard', () => {
  it('turns on at max_memory and off only below max_memory * resume_ratio', () => {
    const used = { value: 50 * MiB };
    const g = guard({}, used);
    const seen: boolean[] = [];
    for (const mib of [50, 99, 100, 95, 91, 90, 89, 99, 101]) {
      used.value = mib * MiB;
      g.check();
      seen.push(g.active);
    }
    expect(seen).toEqual([false, false, true, true, true, true, false, false, true]);
  });

  it('is off when max_memory is 0, and a reload to 0 clears it', () => {
    const used = { value: 500 * MiB };
    const g = guard({ max_memory: 0 }, used);
    g.check();
    expect(g.active).toBe(false);
    g.update({ max_memory: MiB, measure: 'heap', resume_ratio: 0.9, interval: 250 });
    expect(g.active).toBe(true);
    g.update({ max_memory: 0, measure: 'heap', resume_ratio: 0.9, interval: 250 });
    expect(g.active).toBe(false);
    g.stop();
  });

  it('parses sizes in the config', () => {
    expect(parseSize('512MiB')).toEqual({ ok: true, value: 512 * MiB });
    expect(parseSize('1.5GB')).toEqual({ ok: true, value: 1.5e9 });
    expect(parseSize(4096)).toEqual({ ok: true, value: 4096 });
    expect(parseSize('12 parsecs').ok).toBe(false);
    const cfg = parseConfigText(`overload: { max_memory: 1GiB }
listeners: [{ name: t, bind: "127.0.0.1:0", pool: p }]
pools: [{ name: p, backends: [{ address: "127.0.0.1:1" }] }]`);
    expect(cfg.overload).toEqual({
      max_memory: 1024 * MiB,
      measure: 'rss',
      resume_ratio: 0.9,
      interval: 250,
    });
    expect(cfg.pools[0]).toMatchObject({
      max_connections_per_backend: 0,
      max_queue: 100,
      queue_timeout: 5000,
    });
  });
});
