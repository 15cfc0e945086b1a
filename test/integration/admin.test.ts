import { existsSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chromium } from 'playwright-core';
import { closedPort, echoServer, exchange } from '../support/net.js';
import type { TestServer } from '../support/net.js';
import { runCli, tempFile } from '../support/process.js';
import type { TestRuntime } from '../support/runtime.js';
import { startRuntime } from '../support/runtime.js';

const CHROMIUM = '/usr/bin/chromium';

let echo: TestServer;
let rt: TestRuntime;
const token = 's3cret-token';
let tokenFile = '';

beforeAll(async () => {
  echo = await echoServer();
  tokenFile = tempFile('token', `${token}\n`);
  rt = await startRuntime(`admin: { listen: "127.0.0.1:0", token_file: "${tokenFile}" }
listeners: [{ name: web, bind: "127.0.0.1:0", pool: p }]
pools: [{ name: p, health: { active: { type: none } }, backends: [{ address: "${echo.address}" }, { address: "127.0.0.1:9" , weight: 0 }] }]`);
  await exchange(rt.port('web'), 'warm up');
});

afterAll(async () => {
  await rt.stop();
  await echo.close();
});

describe('admin API', () => {
  it('guards mutating calls with the bearer token', async () => {
    const url = `${rt.adminUrl}/api/v1/pools/p/backends/${encodeURIComponent(echo.address)}/disable`;
    expect((await fetch(url, { method: 'POST' })).status).toBe(401);
    expect(
      (await fetch(url, { method: 'POST', headers: { authorization: 'Bearer wrong-token!' } })).status,
    ).toBe(401);
    const ok = await fetch(url, { method: 'POST', headers: { authorization: `Bearer ${token}` } });
    expect(ok.status).toBe(200);
    expect(((await ok.json()) as { state: string }).state).toBe('disabled');
    const back = await fetch(url.replace('/disable', '/enable'), {
      method: 'POST',
      headers: { authorization: `Bearer ${token}` },
    });
    expect(((await back.json()) as { state: string }).state).toBe('up');
  });

  it('answers wrong methods with 405, unknown paths with 404, and sends no CORS header', async () => {
    const get = await fetch(`${rt.adminUrl}/api/v1/reload`);
    expect(get.status).toBe(405);
    expect(get.headers.get('allow')).toBe('POST');
    expect((await fetch(`${rt.adminUrl}/metrics`, { method: 'POST' })).status).toBe(405);
    expect((await fetch(`${rt.adminUrl}/nope`)).status).toBe(404);
    const pre = await fetch(`${rt.adminUrl}/api/v1/pools`, { headers: { origin: 'http://evil.example' } });
    expect(pre.headers.get('access-control-allow-origin')).toBeNull();
  });

  it('lists listeners with their bound address and open count', async () => {
    const body = (await (await fetch(`${rt.adminUrl}/api/v1/listeners`)).json()) as {
      listeners: { name: string; bind: string }[];
    };
    expect(body.listeners[0]).toMatchObject({ name: 'web', bind: `127.0.0.1:${rt.port('web')}` });
  });
});

describe('sluice status and admin commands', () => {
  it('prints listeners and backends as a table', async () => {
    const r = await runCli(['status', '--admin', rt.adminUrl]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/LISTENER\s+PROTOCOL\s+BIND/);
    expect(r.stdout).toContain(`web       tcp       127.0.0.1:${rt.port('web')}`);
    expect(r.stdout).toMatch(new RegExp(`p\\s+round-robin\\s+${echo.address.replace(/\./g, '\\.')}\\s+up`));
    expect(r.stdout).not.toContain('\x1b['); // no colour when not a TTY
    const json = await runCli(['status', '--admin', rt.adminUrl, '--json']);
    expect(JSON.parse(json.stdout)).toHaveProperty('pools');
  });

  it('drains a backend with the token and says so without it', async () => {
    const denied = await runCli(['drain', 'p', echo.address, '--admin', rt.adminUrl]);
    expect(denied.code).toBe(1);
    expect(denied.stderr).toContain('401');
    const ok = await runCli(['drain', 'p', echo.address, '--admin', rt.adminUrl, '--token', tokenFile]);
    expect(ok.code).toBe(0);
    expect(JSON.parse(ok.stdout)).toMatchObject({ state: 'draining' });
    await runCli(['enable', 'p', echo.address, '--admin', rt.adminUrl, '--token', tokenFile]);
  });

  it('gives a clear one-line error when the admin API is unreachable', async () => {
    const port = await closedPort();
    const r = await runCli(['status', '--admin', `http://127.0.0.1:${port}`]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toMatch(
      /^sluice: admin API at http:\/\/127\.0\.0\.1:\d+ is unreachable \(ECONNREFUSED\)/,
    );
  });
});

describe('status page in a real browser', () => {
  it('renders the listeners, pools and backends and refreshes itself', async () => {
    if (!existsSync(CHROMIUM))
      throw new Error(`${CHROMIUM} not found: install the chromium package (.ci/run does)`);
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    try {
      const page = await browser.newPage();
      const external: string[] = [];
      page.on('request', (req) => {
        if (!req.url().startsWith(rt.adminUrl)) external.push(req.url());
      });
      await page.goto(`${rt.adminUrl}/`);
      await page.waitForSelector('#updated:has-text("updated")', { timeout: 10_000 });
      const text = await page.textContent('body');
      expect(text).toContain('Pool p');
      expect(text).toContain(echo.address);
      expect(text).toContain('127.0.0.1:9');
      expect(text).toContain(`127.0.0.1:${rt.port('web')}`);
      // Fewer than two samples (one every 5 s) so far: the chart says it is collecting.
      expect(await page.locator('#conn-chart').textContent()).toMatch(/collecting samples|connections\/s/);
      expect(external).toEqual([]);
      const shot = tempFile('status.png', '');
      writeFileSync(shot, await page.screenshot({ fullPage: true }));
    } finally {
      await browser.close();
    }
  });
});
