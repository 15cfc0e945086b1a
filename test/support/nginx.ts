import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { closedPort as freePort } from './net.js';

/** An nginx HTTP server the test started: `close` answers and closes (keep-alive off), `keepalive` keeps connections open. */
export interface NginxHttp {
  readonly close: number;
  readonly keepalive: number;
  stop(): void;
}

/** Fails with a clear message when a binary a test needs is missing (.ci/run installs it). */
export function requireBinary(name: string, pkg: string): string {
  const r = spawnSync('sh', ['-c', `PATH="$PATH:/usr/sbin:/sbin" command -v ${name}`], { encoding: 'utf8' });
  const path = r.stdout.trim();
  if (r.status !== 0 || path === '')
    throw new Error(
      `${name} is not installed: this test needs it (Debian package ${pkg}; .ci/run installs it)`,
    );
  return path;
}

/**
 * Starts nginx (one worker, daemonised, tracked by its pid file) on two loopback ports that both
 * answer every request with 200 "ok": one with keep-alive off, so nginx closes first, one that
 * keeps the connection for the client to close.
 */
export async function startNginxHttp(): Promise<NginxHttp> {
  const nginx = requireBinary('nginx', 'nginx');
  const dir = mkdtempSync(join(tmpdir(), 'sluice-nginx-'));
  mkdirSync(join(dir, 'logs'));
  const close = await freePort();
  const keepalive = await freePort();
  const pid = join(dir, 'nginx.pid');
  writeFileSync(
    join(dir, 'nginx.conf'),
    `worker_processes 1;
worker_rlimit_nofile 8192;
daemon on;
pid ${pid};
error_log ${join(dir, 'error.log')} warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir};
  proxy_temp_path ${dir};
  fastcgi_temp_path ${dir};
  uwsgi_temp_path ${dir};
  scgi_temp_path ${dir};
  server { listen 127.0.0.1:${close} backlog=4096; keepalive_timeout 0; location / { return 200 "ok"; } }
  server { listen 127.0.0.1:${keepalive} backlog=4096; keepalive_timeout 60s; location / { return 200 "ok"; } }
}
`,
  );
  const r = spawnSync(nginx, ['-p', dir, '-c', join(dir, 'nginx.conf'), '-e', join(dir, 'error.log')], {
    encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`nginx failed to start (exit ${r.status}): ${r.stderr.trim()}`);
  const master = Number(readFileSync(pid, 'utf8').trim());
  return {
    close,
    keepalive,
    stop: () => {
      try {
        process.kill(master, 'SIGTERM');
      } catch {
        // already gone
      }
    },
  };
}
