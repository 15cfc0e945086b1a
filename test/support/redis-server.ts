import type { ChildProcess } from 'node:child_process';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';

/**
 * Test fixtures for the Redis store: a real redis-server of our own on a free loopback port
 * (never the machine's 6379), and small fake servers for faults a real server will not produce
 * on demand (a black hole, error replies, a link that goes silent mid-session).
 */

const REDIS_SERVER = '/usr/bin/redis-server';

/** A free TCP port on 127.0.0.1 (the kernel picks it; we release it for redis-server to take). */
export async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', resolve);
  });
  const addr = srv.address();
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  if (addr === null || typeof addr === 'string') throw new Error('no port');
  return addr.port;
}

/**
 * Sends one inline command over a fresh connection and returns the raw reply once `complete`
 * says it is whole, or undefined on error or after `ms`.
 */
function inlineCommand(
  port: number,
  line: string,
  ms: number,
  complete = (r: string) => r.includes('\r\n'),
): Promise<string | undefined> {
  return new Promise((resolve) => {
    const sock = net.connect(port, '127.0.0.1');
    let data = '';
    const done = (reply: string | undefined): void => {
      sock.destroy();
      resolve(reply);
    };
    sock.setTimeout(ms, () => done(undefined));
    sock.on('error', () => done(undefined));
    sock.on('connect', () => sock.write(`${line}\r\n`));
    sock.on('data', (chunk: Buffer) => {
      data += chunk.toString('latin1');
      if (complete(data)) done(data);
    });
  });
}

async function poll(what: string, check: () => Promise<boolean>, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`${what}: gave up after ${ms / 1000} s`);
}

const running = new Set<RedisServer>();

/** A redis-server process with persistence off, on 127.0.0.1. Use `startRedis()`. */
export class RedisServer {
  readonly port: number;
  readonly #dir: string;
  /**
   * Cluster mode: true for a one-node cluster holding every slot, the slot range it serves, or
   * 'replica' for a node that will replicate a primary (no slots of its own).
   */
  readonly #cluster: boolean | readonly [number, number] | 'replica';
  readonly #extra: readonly string[];
  /** A sentinel's config file: the process runs as a sentinel on it. */
  readonly #sentinelConf: string | undefined;
  #proc: ChildProcess | undefined;
  /** The cluster bus port, chosen at the first launch. */
  #bus: number | undefined;

  constructor(
    port: number,
    dir: string,
    cluster: boolean | readonly [number, number] | 'replica',
    extra: readonly string[] = [],
    sentinelConf?: string,
  ) {
    this.port = port;
    this.#dir = dir;
    this.#cluster = cluster;
    this.#extra = extra;
    this.#sentinelConf = sentinelConf;
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}/0`;
  }

  /** Starts the process and waits until it answers PING (and, for a cluster, serves every slot). */
  async launch(): Promise<void> {
    const args =
      this.#sentinelConf !== undefined
        ? [this.#sentinelConf, '--sentinel', '--loglevel', 'warning']
        : ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'];
    if (this.#sentinelConf === undefined)
      args.push('--dir', this.#dir, '--daemonize', 'no', '--protected-mode', 'no', '--loglevel', 'warning');
    args.push(...this.#extra);
    if (this.#cluster !== false)
      // The bus port defaults to port + 10,000, which may be taken or past 65,535: name a free one.
      args.push(
        '--cluster-enabled',
        'yes',
        '--cluster-config-file',
        `nodes-${this.port}.conf`,
        '--cluster-announce-ip',
        '127.0.0.1',
        '--cluster-port',
        String((this.#bus ??= await freePort())),
      );
    rmSync(join(this.#dir, `nodes-${this.port}.conf`), { force: true }); // a restart starts empty
    const proc = spawn(REDIS_SERVER, args, { stdio: 'ignore' });
    proc.on('error', () => undefined); // spawn failures surface as the PING deadline below
    this.#proc = proc;
    running.add(this);
    await poll(`redis-server on port ${this.port}: PING`, async () => {
      if (proc.exitCode !== null)
        throw new Error(`redis-server exited with ${proc.exitCode} on port ${this.port}`);
      return (await inlineCommand(this.port, 'PING', 200))?.startsWith('+PONG') ?? false;
    });
    if (this.#cluster === true) await this.#serveAllSlots();
    else if (Array.isArray(this.#cluster)) {
      const line = `CLUSTER ADDSLOTSRANGE ${this.#cluster.join(' ')}`;
      // Sent again if no answer came (a loaded machine); "busy" means an earlier one went through.
      await poll(`redis-server on port ${this.port}: ${line}`, async () => {
        const reply = await this.command(line);
        return (reply?.startsWith('+OK') ?? false) || (reply?.includes('busy') ?? false);
      });
    }
  }

  /** The cluster bus port (CLUSTER MEET needs it), once launched in cluster mode. */
  get bus(): number | undefined {
    return this.#bus;
  }

  /** One inline command on a fresh connection; the raw reply, or undefined when none came. */
  command(line: string, ms = 1000): Promise<string | undefined> {
    return inlineCommand(this.port, line, ms);
  }

  /** A one-node Redis Cluster: this node takes every slot. */
  async #serveAllSlots(): Promise<void> {
    await inlineCommand(this.port, 'CLUSTER ADDSLOTSRANGE 0 16383', 1000);
    await poll(`redis-server on port ${this.port}: cluster_state:ok`, async () => {
      const info = await inlineCommand(this.port, 'CLUSTER INFO', 200, (r) => r.includes('cluster_state:'));
      return info?.includes('cluster_state:ok') ?? false;
    });
  }

  /** SIGSTOP: the server stops answering with its sockets open (a stalled host); resume() ends it. */
  pause(): void {
    this.#proc?.kill('SIGSTOP');
  }

  resume(): void {
    this.#proc?.kill('SIGCONT');
  }

  /** SIGKILL: no goodbye to clients, no save. Resolves once the process is gone. */
  async kill(): Promise<void> {
    const proc = this.#proc;
    this.#proc = undefined;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise((resolve) => proc.once('exit', resolve));
    proc.kill('SIGKILL');
    await exited;
  }

  /** Kills the server and starts an empty one on the same port. */
  async restart(): Promise<void> {
    await this.kill();
    await this.launch();
  }

  /** Kills the server for good and removes its directory. */
  async stop(): Promise<void> {
    await this.kill();
    running.delete(this);
    rmSync(this.#dir, { recursive: true, force: true });
  }
}

/**
 * Starts a fresh redis-server on a free port; with `cluster`, a one-node Redis Cluster holding
 * every slot. Pair with `stopAllRedis()` in afterAll.
 */
export async function startRedis(opts: { cluster?: boolean } = {}): Promise<RedisServer> {
  if (!existsSync(REDIS_SERVER)) throw new Error('redis-server not found: install the redis-server package');
  const server = new RedisServer(
    await freePort(),
    mkdtempSync(join(tmpdir(), 'sluice-redis-')),
    opts.cluster ?? false,
  );
  await server.launch();
  return server;
}

/** A Redis Cluster on loopback: primaries each serving an equal range of the slots, and replicas. */
export interface RedisCluster {
  readonly nodes: readonly RedisServer[];
  /** With `replicas`, the replica of each primary, in the order of `nodes`. */
  readonly replicas: readonly RedisServer[];
  /** The number of keys matching `pattern` on each primary, in the order of `nodes`. */
  keys(pattern: string): Promise<number[]>;
}

/**
 * Starts a Redis Cluster of `primaries` nodes (with `replicas`, one replica each, so that the
 * Cluster fails a dead primary over after `nodeTimeoutMs`), and waits until every node sees it
 * whole and every replica is in sync.
 */
export async function startRedisCluster(
  primaries = 3,
  opts: { replicas?: boolean; nodeTimeoutMs?: number } = {},
): Promise<RedisCluster> {
  if (!existsSync(REDIS_SERVER)) throw new Error('redis-server not found: install the redis-server package');
  const extra = ['--cluster-node-timeout', String(opts.nodeTimeoutMs ?? 15_000)];
  const start = async (role: readonly [number, number] | 'replica'): Promise<RedisServer> => {
    const node = new RedisServer(await freePort(), mkdtempSync(join(tmpdir(), 'sluice-redis-')), role, extra);
    await node.launch();
    return node;
  };
  const nodes: RedisServer[] = [];
  for (let i = 0; i < primaries; i++)
    nodes.push(
      await start([Math.floor((16384 * i) / primaries), Math.floor((16384 * (i + 1)) / primaries) - 1]),
    );
  const replicas: RedisServer[] = [];
  if (opts.replicas === true) for (let i = 0; i < primaries; i++) replicas.push(await start('replica'));
  const all = [...nodes, ...replicas];
  const first = nodes[0]!;
  for (const node of all.slice(1)) await first.command(`CLUSTER MEET 127.0.0.1 ${node.port} ${node.bus}`);
  // A MEET lost on a loaded machine (its connection timed out) is sent again, from the node that
  // does not know the others yet.
  await poll(
    'redis cluster: every node knows every other',
    async () => {
      let whole = true;
      for (const node of all) {
        const info = await inlineCommand(node.port, 'CLUSTER INFO', 500, (r) =>
          r.includes('cluster_known_nodes:'),
        );
        if (info?.includes(`cluster_known_nodes:${all.length}`) ?? false) continue;
        whole = false;
        if (node !== first) await node.command(`CLUSTER MEET 127.0.0.1 ${first.port} ${first.bus}`);
      }
      return whole;
    },
    30_000,
  );
  for (const [i, replica] of replicas.entries()) {
    // Asked again until answered: on a loaded machine one connection may time out.
    await poll(`redis cluster: ${replica.port} replicates ${nodes[i]?.port}`, async () => {
      const myId = await inlineCommand(nodes[i]?.port ?? 0, 'CLUSTER MYID', 1000, (r) =>
        /\r\n[0-9a-f]{40}\r\n/.test(r),
      );
      const id = /\r\n([0-9a-f]{40})\r\n/.exec(myId ?? '')?.[1];
      if (id === undefined) return false;
      return (await replica.command(`CLUSTER REPLICATE ${id}`))?.startsWith('+OK') ?? false;
    });
  }
  await poll(
    'redis cluster: cluster_state:ok everywhere, replicas in sync',
    async () => {
      for (const node of all) {
        const info = await inlineCommand(node.port, 'CLUSTER INFO', 500, (r) =>
          r.includes('cluster_known_nodes:'),
        );
        if (!(info?.includes('cluster_state:ok') ?? false)) return false;
      }
      for (const replica of replicas) {
        const info = await inlineCommand(replica.port, 'INFO replication', 500, (r) =>
          r.includes('master_link_status'),
        );
        if (!(info?.includes('master_link_status:up') ?? false)) return false;
      }
      return true;
    },
    30_000,
  );
  return {
    nodes,
    replicas,
    keys: (pattern) =>
      Promise.all(
        nodes.map(async (node) => {
          const client = new Redis({ host: '127.0.0.1', port: node.port, lazyConnect: true });
          try {
            await client.connect();
            let n = 0;
            let cursor = '0';
            do {
              const [next, batch] = await client.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
              n += batch.length;
              cursor = next;
            } while (cursor !== '0');
            return n;
          } finally {
            client.disconnect();
          }
        }),
      ),
  };
}

/**
 * A Sentinel setup on loopback: a primary, one replica and three sentinels (quorum 2) watching
 * `name`, down after `downAfterMs` of silence. Every process is on its own free port and stopped by
 * stopAllRedis().
 */
export interface SentinelSetup {
  readonly name: string;
  readonly primary: RedisServer;
  readonly replica: RedisServer;
  readonly sentinels: readonly RedisServer[];
  /** The primary's port as the sentinels name it now (undefined when none answers). */
  primaryPort(): Promise<number | undefined>;
}

export async function startSentinelSetup(name = 'sluice-test', downAfterMs = 1000): Promise<SentinelSetup> {
  if (!existsSync(REDIS_SERVER)) throw new Error('redis-server not found: install the redis-server package');
  const primary = await startRedis();
  const replica = new RedisServer(await freePort(), mkdtempSync(join(tmpdir(), 'sluice-redis-')), false, [
    '--replicaof',
    '127.0.0.1',
    String(primary.port),
  ]);
  await replica.launch();
  await poll('replica in sync', async () => {
    const info = await inlineCommand(replica.port, 'INFO replication', 200, (r) =>
      r.includes('master_link_status'),
    );
    return info?.includes('master_link_status:up') ?? false;
  });
  const sentinels: RedisServer[] = [];
  for (let i = 0; i < 3; i++) {
    const dir = mkdtempSync(join(tmpdir(), 'sluice-sentinel-'));
    const port = await freePort();
    const conf = join(dir, 'sentinel.conf');
    writeFileSync(
      conf,
      [
        `port ${port}`,
        'bind 127.0.0.1',
        'protected-mode no',
        `dir ${dir}`,
        `sentinel monitor ${name} 127.0.0.1 ${primary.port} 2`,
        `sentinel down-after-milliseconds ${name} ${downAfterMs}`,
        `sentinel failover-timeout ${name} 10000`,
        `sentinel parallel-syncs ${name} 1`,
        '',
      ].join('\n'),
    );
    const sentinel = new RedisServer(port, dir, false, [], conf);
    await sentinel.launch();
    sentinels.push(sentinel);
  }
  // Failover needs the sentinels to know the replica and each other (hello messages, every 2 s).
  await poll(
    'sentinels ready',
    async () => {
      for (const s of sentinels) {
        const info = await inlineCommand(s.port, 'INFO sentinel', 200, (r) => r.includes('sentinels='));
        if (!(info?.includes('slaves=1,sentinels=3') ?? false)) return false;
      }
      return true;
    },
    20_000,
  );
  return {
    name,
    primary,
    replica,
    sentinels,
    async primaryPort() {
      for (const s of sentinels) {
        const reply = await inlineCommand(s.port, `SENTINEL get-master-addr-by-name ${name}`, 300, (r) =>
          /\r\n[0-9]+\r\n$/.test(r),
        );
        const port = reply?.match(/\r\n([0-9]+)\r\n$/)?.[1];
        if (port !== undefined) return Number(port);
      }
      return undefined;
    },
  };
}

/** Stops every server started by this process. */
export async function stopAllRedis(): Promise<void> {
  await Promise.all([...running].map((s) => s.stop()));
}

// Last resort if a test run dies before afterAll: no redis-server may outlive it.
process.once('exit', () => {
  for (const s of running) void s.kill();
});

/** A TCP server for fault tests; `connections` counts accepted sockets. */
export interface FakeServer {
  readonly port: number;
  readonly url: string;
  readonly connections: number;
  close(): Promise<void>;
}

async function fakeServer(onSocket: (sock: net.Socket) => void): Promise<FakeServer> {
  const sockets = new Set<net.Socket>();
  let connections = 0;
  const srv = net.createServer((sock) => {
    connections++;
    sockets.add(sock);
    sock.on('error', () => undefined);
    sock.on('close', () => sockets.delete(sock));
    onSocket(sock);
  });
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const addr = srv.address();
  if (addr === null || typeof addr === 'string') throw new Error('no port');
  return {
    port: addr.port,
    url: `redis://127.0.0.1:${addr.port}/0`,
    get connections() {
      return connections;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        srv.close(() => resolve());
      }),
  };
}

/** Accepts connections and never answers a byte (a server behind a DROP rule, or hung). */
export function blackHoleServer(): Promise<FakeServer> {
  return fakeServer((sock) => sock.resume());
}

/**
 * Takes complete RESP commands (arrays of bulk strings) off the front of `buf`. Returns the
 * commands and the unread rest; inline commands (`PING\r\n`) are split on spaces.
 */
export function takeCommands(buf: Buffer): { commands: string[][]; rest: Buffer } {
  const commands: string[][] = [];
  let at = 0;
  for (;;) {
    const parsed = buf[at] === 0x2a ? parseArray(buf, at) : parseInline(buf, at);
    if (!parsed) break;
    commands.push(parsed.args);
    at = parsed.end;
  }
  return { commands, rest: buf.subarray(at) };
}

function readLine(buf: Buffer, at: number): { line: string; end: number } | undefined {
  const nl = buf.indexOf('\r\n', at);
  return nl < 0 ? undefined : { line: buf.toString('latin1', at, nl), end: nl + 2 };
}

function parseInline(buf: Buffer, at: number): { args: string[]; end: number } | undefined {
  const l = readLine(buf, at);
  return l && { args: l.line.split(' ').filter((w) => w !== ''), end: l.end };
}

function parseArray(buf: Buffer, at: number): { args: string[]; end: number } | undefined {
  const head = readLine(buf, at);
  if (!head) return undefined;
  const args: string[] = [];
  let pos = head.end;
  for (let n = Number(head.line.slice(1)); n > 0; n--) {
    const len = readLine(buf, pos);
    if (!len) return undefined;
    const size = Number(len.line.slice(1));
    if (buf.length < len.end + size + 2) return undefined;
    args.push(buf.toString('utf8', len.end, len.end + size));
    pos = len.end + size + 2;
  }
  return { args, end: pos };
}

const HANDSHAKE_REPLIES: Record<string, string> = {
  PING: '+PONG\r\n',
  AUTH: '+OK\r\n',
  SELECT: '+OK\r\n',
  CLIENT: '+OK\r\n',
  QUIT: '+OK\r\n',
  HELLO: "-ERR unknown command 'HELLO'\r\n",
  INFO: '$31\r\n# Server\r\nredis_version:7.0.0\r\n\r\n',
};

/**
 * Answers every command with `-<error>` (e.g. `READONLY You can't write against a read only
 * replica.` or `LOADING Redis is loading the dataset in memory`). With `handshake`, the commands
 * a client sends while connecting (PING, AUTH, CLIENT, INFO, …) get normal answers first, so the
 * client becomes ready and then meets the error on its own commands, as after a failover.
 */
export function errorServer(error: string, opts: { handshake?: boolean } = {}): Promise<FakeServer> {
  return fakeServer((sock) => {
    let pending: Buffer = Buffer.alloc(0);
    sock.on('data', (chunk: Buffer) => {
      const { commands, rest } = takeCommands(Buffer.concat([pending, chunk]));
      pending = rest;
      for (const args of commands) {
        const name = (args[0] ?? '').toUpperCase();
        const normal = opts.handshake ? HANDSHAKE_REPLIES[name] : undefined;
        sock.write(normal ?? `-${error}\r\n`);
      }
    });
  });
}

/** A TCP relay to a real server that can be made to drop every byte, both ways, and healed. */
export interface SilentLink extends FakeServer {
  /** From now on bytes are dropped silently: no FIN, no RST (like an iptables DROP rule). */
  silence(): void;
  heal(): void;
}

export async function silentLink(targetPort: number): Promise<SilentLink> {
  let silent = false;
  const server = await fakeServer((down) => {
    const up = net.connect(targetPort, '127.0.0.1');
    up.on('error', () => down.destroy());
    down.on('close', () => up.destroy());
    up.on('close', () => down.destroy());
    up.on('data', (b: Buffer) => {
      if (!silent) down.write(b);
    });
    down.on('data', (b: Buffer) => {
      if (!silent) up.write(b);
    });
  });
  return Object.assign(server, {
    silence: () => void (silent = true),
    heal: () => void (silent = false),
  });
}
