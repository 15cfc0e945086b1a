import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { queuedResetWarning } from '../../src/lifecycle/workers.js';

const config = (protocol: string) =>
  parseConfigText(`workers: 2
listeners: [{ name: l, protocol: ${protocol}, bind: "127.0.0.1:7000", pool: p }]
pools: [{ name: p, health: { active: { type: none } }, backends: [{ address: "127.0.0.1:7001" }] }]
`);

describe('queuedResetWarning (what a worker that exits does to its accept queue)', () => {
  const tcp = config('tcp');

  it('warns while net.ipv4.tcp_migrate_req is 0, naming the setting and what it fixes', () => {
    const w = queuedResetWarning(tcp, () => '0\n', 'linux');
    expect(w).toMatch(/net\.ipv4\.tcp_migrate_req is 0/);
    expect(w).toMatch(/resets the connections waiting in its accept queue/);
    expect(w).toMatch(/set it to 1/);
  });

  it('is quiet once the kernel hands queued connections to the other workers', () => {
    expect(queuedResetWarning(tcp, () => '1\n', 'linux')).toBeUndefined();
  });

  it('says so when the kernel has no such setting (before Linux 5.14)', () => {
    const missing = (): string => {
      throw Object.assign(new Error('ENOENT'), { code: 'ENOENT' });
    };
    expect(queuedResetWarning(tcp, missing, 'linux')).toMatch(/Linux < 5\.14/);
  });

  it('is quiet with only UDP listeners, and off Linux', () => {
    expect(queuedResetWarning(config('udp'), () => '0', 'linux')).toBeUndefined();
    expect(queuedResetWarning(tcp, () => '0', 'freebsd')).toBeUndefined();
  });
});
