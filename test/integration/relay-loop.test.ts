import { spawn } from 'node:child_process';
import { closeSync } from 'node:fs';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import type { SpliceRelay } from '../../src/relay/binding.js';
import { loadSpliceRelay } from '../../src/relay/binding.js';
import { streamFd } from '../../src/relay/node-handle.js';

/**
 * While the splice relay has sockets open, the event loop sleeps in the relay's epoll set, which
 * holds the loop's own epoll descriptor (native/loop.c, on_wait). This checks, in this process,
 * that the loop's own work never waits behind that sleep.
 */

const cleanup: (() => void)[] = [];
afterEach(() => {
  for (const f of cleanup.splice(0).reverse()) f();
});

function relay(): SpliceRelay {
  const { relay: r, error } = loadSpliceRelay();
  if (r === undefined) throw new Error(`the splice relay is needed here: ${error ?? 'not loaded'}`);
  return r;
}

/** A port the relay accepts on (so it has a socket open and the loop waits in its set). */
async function relayListener(accepted: (fd: number) => void): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  const fd = streamFd(server);
  if (fd === undefined) throw new Error('no descriptor for the listening socket');
  const r = relay();
  const id = r.listen(
    {
      accepted: (client) => {
        if (client >= 0) accepted(client);
      },
    },
    fd,
  );
  server.close(); // the relay keeps its own copy
  cleanup.push(() => r.unlisten(id));
  return port;
}

/**
 * An echo server in another process: one in this process would make the loop's own descriptors
 * ready (its accept) whenever a test socket connects, and so wake the loop for it.
 */
async function echoServer(): Promise<number> {
  const child = spawn(
    process.execPath,
    [
      '-e',
      `require('net').createServer((s) => s.pipe(s)).listen(0, '127.0.0.1', function () { console.log(this.address().port); }); setTimeout(() => process.exit(0), 60000);`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  cleanup.push(() => child.kill('SIGKILL'));
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout.once('data', (d: Buffer) => resolve(Number(d.toString().trim())));
    child.once('exit', (code) => reject(new Error(`echo server exited (${code})`)));
  });
  child.stdout.destroy();
  return port;
}

/** Opens a socket from a setImmediate callback (outside the relay's turn), echoes one message. */
function echoFromImmediate(port: number, message: string): Promise<string> {
  return new Promise((resolve, reject) => {
    setImmediate(() => {
      const c = net.connect(port, '127.0.0.1', () => c.write(message));
      c.on('data', (d) => {
        resolve(d.toString());
        c.destroy();
      });
      c.on('error', reject);
    });
  });
}

describe('the event loop while the splice relay waits', () => {
  it('serves sockets JavaScript opens outside the relay’s turn (their events can wake the wait)', async () => {
    await relayListener((fd) => closeSync(fd));
    const port = await echoServer();
    // Each socket is opened after the relay's turn: if the wait slept before the loop registered
    // it, its connect would stall until some later timer (here, the test's timeout).
    for (let i = 0; i < 20; i++) expect(await echoFromImmediate(port, `ping ${i}`)).toBe(`ping ${i}`);
  }, 10_000);
});
