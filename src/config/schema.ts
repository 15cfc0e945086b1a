import { z } from 'zod';
import { parseCidr } from '../util/cidr.js';
import type { HostPort } from './values.js';
import { parseDuration, parseHostPort, parseSize } from './values.js';

/**
 * The whole configuration file, with every default in this one place. Objects are strict: an
 * unknown key is an error. Cross-references (a listener's pool exists, names are unique) are
 * checked in validate.ts after the shapes parse.
 */

const duration = z.unknown().transform((v, ctx) => {
  const r = parseDuration(v);
  if (r.ok) return r.value;
  ctx.addIssue({ code: 'custom', message: r.error });
  return z.NEVER;
});

const size = z.unknown().transform((v, ctx) => {
  const r = parseSize(v);
  if (r.ok) return r.value;
  ctx.addIssue({ code: 'custom', message: r.error });
  return z.NEVER;
});

const hostPort = (allowZeroPort: boolean) =>
  z.unknown().transform((v, ctx): HostPort => {
    const r = parseHostPort(v, allowZeroPort);
    if (r.ok) return r.value;
    ctx.addIssue({ code: 'custom', message: r.error });
    return z.NEVER;
  });

const cidr = z
  .string()
  .refine((s) => parseCidr(s) !== undefined, { message: 'expected a CIDR such as 10.0.0.0/8 or ::/0' });

const count = (min = 0, max = Number.MAX_SAFE_INTEGER) => z.number().int().min(min).max(max);

const nonEmpty = z.string().min(1);
const name = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/, 'expected a name of letters, digits, _ . - (at most 63)');

const adminSchema = z
  .strictObject({
    listen: hostPort(true).default({ host: '127.0.0.1', port: 9090 }),
    token_file: nonEmpty.optional(),
    /**
     * Serve a non-loopback `listen` without `token_file`: anyone who reaches the port can drain
     * backends and reload. Refused unless set (validate.ts), and warned about at start.
     */
    allow_unauthenticated_remote: z.boolean().default(false),
  })
  .prefault({});

const logSchema = z
  .strictObject({
    level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
    access_log: z.boolean().default(true),
  })
  .prefault({});

const redisSchema = z
  .strictObject({
    url: nonEmpty.default('redis://127.0.0.1:6379/0'),
    sentinels: z.array(hostPort(false)).min(1).optional(),
    name: nonEmpty.optional(),
    nodes: z.array(hostPort(false)).min(1).optional(),
    key_prefix: nonEmpty.default('sluice'),
    command_timeout: duration.default(500),
  })
  .prefault({});

const stateSchema = z
  .strictObject({
    store: z.enum(['memory', 'redis']).default('memory'),
    redis: redisSchema,
    replica_id: nonEmpty.optional(),
    heartbeat: duration.default(1000),
  })
  .prefault({});

/**
 * The overload guard: above `max_memory` (sampled every `interval`) listeners close new TCP
 * connections at once; they accept again below `max_memory * resume_ratio` (hysteresis).
 */
const overloadSchema = z
  .strictObject({
    /** 0 = off. */
    max_memory: size.default(0),
    /** rss: resident set size of the process; heap: V8 heap in use. */
    measure: z.enum(['rss', 'heap']).default('rss'),
    resume_ratio: z.number().min(0.5).max(1).default(0.9),
    interval: duration.default(250),
  })
  .prefault({});

const shutdownSchema = z.strictObject({ drain_timeout: duration.default(30_000) }).prefault({});

const proxyInSchema = z.strictObject({
  trusted: z.array(cidr).min(1),
  /** Largest v2 header accepted (fixed part included). */
  max_header_bytes: count(16, 65_551).default(4096),
  /** Relay TLVs received from the trusted source into a v2 header sent upstream. */
  pass_tlvs: z.boolean().default(false),
});

const tlsSchema = z.strictObject({
  routes: z.array(z.strictObject({ sni: nonEmpty, pool: name })).default([]),
  on_no_match: z.enum(['default', 'reject']).default('default'),
  /** What a connection whose first bytes are not a TLS ClientHello gets. */
  on_non_tls: z.enum(['default', 'reject']).default('reject'),
});

const accessSchema = z
  .strictObject({
    allow: z.array(cidr).default(['0.0.0.0/0', '::/0']),
    deny: z.array(cidr).default([]),
  })
  .prefault({});

/**
 * Whose connections a limit counts: `local`, this process's own (with workers, each worker
 * enforces its share of a listener's limit); `cluster`, every replica's that shares the state
 * store, through grants taken from the store each heartbeat (see state/limit-sync.ts and
 * docs/replicas.md#cluster-wide-limits).
 */
const limitScope = z.enum(['local', 'cluster']).default('local');

const limitsSchema = z
  .strictObject({
    max_connections: count(0).default(10_000),
    /** Whose open sessions `max_connections` counts (TCP listeners only). */
    max_connections_scope: limitScope,
    per_source_connections: count(0).default(0),
    per_source_rate: count(0).default(0),
  })
  .prefault({});

const timeoutsSchema = z
  .strictObject({
    connect: duration.default(5000),
    idle: duration.default(350_000),
    preface: duration.default(5000),
    /**
     * Inactivity allowed once either side has sent FIN (HAProxy's `timeout client-fin`); 0 =
     * the idle timeout applies. A peer that never closes its half cannot hold a session longer.
     */
    half_closed: duration.default(0),
  })
  .prefault({});

const udpSchema = z
  .strictObject({
    flow_idle: duration.default(120_000),
    max_flows: count(1).default(100_000),
    /** Drop datagrams from source ports below 1024 (reflection attacks come from 53, 123, 19…). */
    drop_privileged_sources: z.boolean().default(true),
    /**
     * Reply datagrams a flow may send its client per datagram the client sent (0 = no cap):
     * bounds what a backend, or a spoofed source, can make sluice send towards a client.
     */
    max_replies_per_datagram: count(0, 65_535).default(0),
  })
  .prefault({});

/**
 * QUIC-aware routing on a UDP listener: datagrams from a client address without a flow are
 * routed by their QUIC Destination Connection ID (see src/listener/quic-router.ts).
 */
const quicSchema = z.strictObject({
  /** On once the block is present; `false` keeps the settings and routes by address. */
  enabled: z.boolean().default(true),
  /** What a datagram no connection ID routes gets: a flow by client address, or nothing. */
  unroutable: z.enum(['flow', 'drop']).default('flow'),
  /** QUIC-LB plaintext server IDs in the connection IDs the backends choose (`backends[].server_id`). */
  server_id: z
    .strictObject({
      /** Octets of server ID after the first octet of the connection ID. */
      length: count(1, 15),
      /** The first octet's top three bits in the backends' connection IDs (7 means unroutable). */
      config_rotation: count(0, 6).default(0),
    })
    .optional(),
});

const listenerSchema = z.strictObject({
  name,
  protocol: z.enum(['tcp', 'udp']).default('tcp'),
  bind: hostPort(true),
  pool: name,
  proxy_protocol_in: proxyInSchema.optional(),
  tls: tlsSchema.optional(),
  access: accessSchema,
  limits: limitsSchema,
  timeouts: timeoutsSchema,
  udp: udpSchema,
  quic: quicSchema.optional(),
});

const backendSchema = z.strictObject({
  address: hostPort(false),
  weight: count(0, 256).default(1),
  /** The QUIC-LB server ID this backend encodes in its connection IDs (hex, 1-15 octets). */
  server_id: z
    .string()
    .regex(/^(?:[0-9A-Fa-f]{2}){1,15}$/, 'expected 1 to 15 octets in hex, such as c4605e')
    .optional(),
});

const activeHealthSchema = z
  .strictObject({
    type: z.enum(['tcp', 'send-expect', 'http', 'udp', 'none']).default('tcp'),
    interval: duration.default(2000),
    timeout: duration.default(1000),
    rise: count(1, 100).default(2),
    fall: count(1, 100).default(3),
    /** Spread of each interval, in percent either way. */
    jitter: count(0, 50).default(10),
    /** Probe another port than the backend's own. */
    port: count(1, 65535).optional(),
    /** send-expect / udp: bytes to send (escapes \r \n \t \xHH allowed). */
    send: z.string().optional(),
    /** send-expect / udp: a regex (/.../) or a plain substring the reply must contain. */
    expect: z.string().optional(),
    /** http */
    path: z.string().startsWith('/').default('/'),
    host: nonEmpty.optional(),
    expect_status: z.union([count(100, 599), z.string().regex(/^[1-5]xx$/)]).default('2xx'),
  })
  .prefault({});

const passiveHealthSchema = z
  .strictObject({
    consecutive_failures: count(0).default(5),
    ejection: duration.default(30_000),
    max_ejection_percent: count(0, 100).default(50),
  })
  .prefault({});

const discoverySchema = z.strictObject({
  dns: z
    .strictObject({
      name: nonEmpty,
      type: z.enum(['A', 'AAAA', 'A+AAAA', 'SRV']).default('A+AAAA'),
      port: count(1, 65535).optional(),
      interval: duration.default(10_000),
      /** DNS servers to ask (host:port); default: the system resolver. */
      servers: z.array(hostPort(false)).optional(),
      weight: count(1, 256).default(1),
    })
    .optional(),
  registry: z.strictObject({ ttl: duration.default(10_000) }).optional(),
});

const poolSchema = z.strictObject({
  name,
  algorithm: z
    .enum(['round-robin', 'least-connections', 'power-of-two', 'random', 'maglev', 'ring-hash'])
    .default('round-robin'),
  hash_key: z.enum(['source-ip', 'source-ip-port', 'sni']).default('source-ip'),
  maglev_table_size: count(7, 5_000_011).default(65_537),
  bounded_load: z.number().min(1).max(10).optional(),
  proxy_protocol: z.enum(['off', 'v1', 'v2']).default('off'),
  connect_retries: count(0, 16).default(2),
  backends: z.array(backendSchema).default([]),
  discovery: discoverySchema.optional(),
  health: z
    .strictObject({
      active: activeHealthSchema,
      passive: passiveHealthSchema,
      /** Below this percent of eligible backends ready, balance over all of them (0 = never). */
      panic_threshold: count(0, 100).default(50),
    })
    .prefault({}),
  slow_start: duration.default(0),
  drain_timeout: duration.optional(),
  /** Open TCP sessions per backend (see the scope below); 0 = no cap. Full backends are skipped. */
  max_connections_per_backend: count(0).default(0),
  /** Whose sessions that cap counts: this process's (`local`) or every replica's (`cluster`). */
  max_connections_per_backend_scope: limitScope,
  /** Sessions that may wait when every ready backend is full (FIFO); 0 = refuse at once. */
  max_queue: count(0).default(100),
  /** Longest wait in that queue before the session is closed (reason queue_timeout). */
  queue_timeout: duration.default(5000),
});

export const configSchema = z.strictObject({
  admin: adminSchema,
  log: logSchema,
  workers: z.union([count(1, 256), z.literal('auto')]).default(1),
  /**
   * How established TCP sessions move bytes: splice (in the kernel, through the bundled native
   * relay), stream (Node streams), auto (splice when the relay is built, else stream).
   */
  relay: z.enum(['auto', 'splice', 'stream']).default('auto'),
  state: stateSchema,
  shutdown: shutdownSchema,
  overload: overloadSchema,
  listeners: z.array(listenerSchema).min(1),
  pools: z.array(poolSchema).min(1),
});

export type Config = z.infer<typeof configSchema>;
export type ListenerConfig = Config['listeners'][number];
export type QuicConfig = NonNullable<ListenerConfig['quic']>;
export type PoolConfig = Config['pools'][number];
export type BackendConfig = PoolConfig['backends'][number];
export type ActiveHealthConfig = PoolConfig['health']['active'];
export type PassiveHealthConfig = PoolConfig['health']['passive'];
