import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const UNIT = fileURLToPath(new URL('../../systemd/sluice.service', import.meta.url));
const BIN = fileURLToPath(new URL('../../bin/sluice', import.meta.url));
const text = readFileSync(UNIT, 'utf8');

/** `section → key → values` (a key may repeat, e.g. ExecReload). Comments and blanks skipped. */
function parseUnit(src: string): Map<string, Map<string, string[]>> {
  const out = new Map<string, Map<string, string[]>>();
  let section: Map<string, string[]> | undefined;
  for (const raw of src.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const head = /^\[(.+)\]$/.exec(line);
    if (head !== null) {
      section = new Map();
      out.set(head[1] ?? '', section);
      continue;
    }
    const eq = line.indexOf('=');
    if (section === undefined || eq < 0) throw new Error(`not a unit line: ${line}`);
    const key = line.slice(0, eq);
    section.set(key, [...(section.get(key) ?? []), line.slice(eq + 1)]);
  }
  return out;
}

function seconds(v: string): number {
  const m = /^(\d+)(s|min)?$/.exec(v);
  if (m === null) throw new Error(`unexpected duration ${v}`);
  return Number(m[1]) * (m[2] === 'min' ? 60 : 1);
}

describe('systemd/sluice.service', () => {
  const unit = parseUnit(text);
  const service = unit.get('Service') ?? new Map<string, string[]>();
  const one = (key: string): string => {
    const v = service.get(key);
    expect(v, key).toHaveLength(1);
    return v?.[0] ?? '';
  };

  it('runs sluice with the config, readiness by notify, reload by SIGHUP', () => {
    expect(one('ExecStart')).toMatch(/\/sluice run -c \/etc\/sluice\/sluice\.yaml$/);
    expect(one('Type')).toBe('notify');
    expect(one('NotifyAccess')).toBe('all'); // systemd-notify is a child, not the main PID
    expect(service.get('ExecReload')?.at(-1)).toBe('/bin/kill -HUP $MAINPID');
  });

  it('drains within a stop timeout longer than the default drain_timeout plus the kill margin', () => {
    expect(seconds(one('TimeoutStopSec'))).toBeGreaterThan(30 + 10);
    expect(one('KillMode')).toBe('mixed');
  });

  it('restarts on failure but not after exit 78, with many descriptors', () => {
    expect(one('Restart')).toBe('on-failure');
    expect(one('RestartPreventExitStatus').split(/\s+/)).toContain('78');
    expect(Number(one('LimitNOFILE'))).toBeGreaterThanOrEqual(65536);
  });

  it('is hardened: own user, one capability, sandbox, address families, syscall filter', () => {
    expect(one('DynamicUser') === 'yes' || service.has('User')).toBe(true);
    expect(one('AmbientCapabilities')).toBe('CAP_NET_BIND_SERVICE');
    expect(one('CapabilityBoundingSet')).toBe('CAP_NET_BIND_SERVICE');
    for (const k of [
      'NoNewPrivileges',
      'ProtectHome',
      'PrivateTmp',
      'PrivateDevices',
      'ProtectKernelTunables',
    ])
      expect(one(k), k).toBe('yes');
    expect(one('ProtectSystem')).toBe('strict');
    expect(one('RestrictAddressFamilies').split(/\s+/)).toEqual(
      expect.arrayContaining(['AF_INET', 'AF_INET6', 'AF_UNIX']),
    );
    expect(one('SystemCallFilter')).toBe('@system-service');
    expect(service.has('MemoryDenyWriteExecute')).toBe(false); // V8's JIT needs W+X pages
  });

  it('is installable', () => {
    expect(unit.get('Install')?.get('WantedBy')).toEqual(['multi-user.target']);
  });

  // systemd-analyze checks key names and values and that ExecStart exists; it exits 0 on
  // warnings, so any output fails. ExecStart/ExecReload point at this checkout's bin/sluice.
  const analyze = spawnSync('systemd-analyze', ['--version']);
  it.skipIf(analyze.error !== undefined)('passes systemd-analyze verify', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sluice-unit-'));
    const path = join(dir, 'sluice.service');
    writeFileSync(path, text.replaceAll('/usr/local/bin/sluice', BIN));
    const r = spawnSync('systemd-analyze', ['verify', path], { encoding: 'utf8' });
    expect(`${r.stdout}${r.stderr}`.trim()).toBe('');
    expect(r.status).toBe(0);
  });
});

describe('systemd/sluice.socket', () => {
  const SOCKET = fileURLToPath(new URL('../../systemd/sluice.socket', import.meta.url));
  const socket = parseUnit(readFileSync(SOCKET, 'utf8'));

  it('passes TCP listening sockets to sluice.service (same name), with its backlog', () => {
    expect(socket.get('Socket')?.get('ListenStream')).toEqual(['0.0.0.0:443']);
    expect(socket.get('Socket')?.get('Backlog')).toEqual(['4096']);
    expect(socket.get('Socket')?.has('Accept')).toBe(false); // one service for all connections
    expect(socket.get('Install')?.get('WantedBy')).toEqual(['sockets.target']);
  });

  const analyze = spawnSync('systemd-analyze', ['--version']);
  it.skipIf(analyze.error !== undefined)('passes systemd-analyze verify beside the service', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sluice-unit-'));
    writeFileSync(join(dir, 'sluice.service'), text.replaceAll('/usr/local/bin/sluice', BIN));
    writeFileSync(join(dir, 'sluice.socket'), readFileSync(SOCKET, 'utf8'));
    const r = spawnSync('systemd-analyze', ['verify', join(dir, 'sluice.socket')], { encoding: 'utf8' });
    expect(`${r.stdout}${r.stderr}`.trim()).toBe('');
    expect(r.status).toBe(0);
  });
});
