import { spawnSync } from 'node:child_process';
import dgram from 'node:dgram';
import { once } from 'node:events';
import { readFileSync, writeFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import type { Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PrimaryMetrics } from '../../src/lifecycle/primary-metrics.js';
import { Metrics } from '../../src/telemetry/metrics.js';
import { closedPort, connect, echoServer, exchange, untilClosed, waitFor } from '../support/net.js';
import type { TestServer } from '../support/net.js';
import { spawnSluice, tempFile } from '../support/process.js';
import type { SluiceProcess } from '../support/process.js';
import type { Exposition } from '../support/promql.js';
import { expandGrafana, grafanaVariables, parseExposition, promqlRefs } from '../support/promql.js';
import { readMetric } from '../support/runtime.js';
import { longPacket, shortPacket } from '../support/quic-packets.js';

/**
 * The operator kit in deploy/: the Grafana dashboard and the Prometheus rules may only name
 * metrics and labels that a running sluice exports. Two real daemons are scraped: one process
 * driven through every path the kit watches (a down backend, connect failures, rejects, UDP
 * flows and drops, a rejected and an accepted reload), and one with two workers (the primary's
 * own metrics).
 */

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const DASHBOARD = `${ROOT}deploy/grafana/sluice.json`;
const RULES = `${ROOT}deploy/prometheus/sluice-alerts.yaml`;
const RULE_TESTS = `${ROOT}deploy/prometheus/sluice-alerts.test.yaml`;
const SCRAPE = `${ROOT}deploy/prometheus/scrape.yaml`;

/** Labels Prometheus attaches to every scraped series. */
const TARGET_LABELS = ['job', 'instance'];
/** Series Prometheus makes itself for every target. */
const PROMETHEUS_SERIES: Readonly<Record<string, readonly string[]>> = { up: TARGET_LABELS };
/** The SPEC's metric list: the dashboard shows each. */
const SPEC_METRICS = [
  'sluice_backend_up',
  'sluice_backend_connections',
  'sluice_listener_connections_total',
  'sluice_listener_rejected_total',
  'sluice_upstream_connect_failures_total',
  'sluice_bytes_total',
  'sluice_udp_flows',
  'sluice_state_store_up',
  'sluice_config_reloads_total',
];
/**
 * Labelled metrics the kit uses that the traffic here cannot produce a sample of; their label
 * names are taken from the registry the daemon builds instead of from a live sample.
 */
const NOT_PRODUCED_HERE = [
  'sluice_accept_errors_total', // EMFILE on accept()
  'sluice_discovery_errors_total', // a failing DNS discovery lookup
  'sluice_proxy_tlvs_dropped_total', // PROXY v2 TLVs over the size cap
];

// ---- the kit's files ----

interface Where {
  readonly where: string;
  readonly expr: string;
}

type Json = Record<string, unknown>;
const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);
const objects = (v: unknown): Json[] => (Array.isArray(v) ? v.filter(isObject) : []);
const str = (v: unknown): string => (typeof v === 'string' ? v : '');

const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as unknown;
const rulesDoc = parseYaml(readFileSync(RULES, 'utf8')) as unknown;

/** Every panel, with the panels nested in collapsed rows. */
function allPanels(d: unknown): Json[] {
  const top = isObject(d) ? objects(d.panels) : [];
  return top.flatMap((p) => [p, ...objects(p.panels)]);
}

function templating(d: unknown): Json[] {
  return isObject(d) && isObject(d.templating) ? objects(d.templating.list) : [];
}

/** The query of a query variable: `query.query` (Grafana 10+), or a plain string. */
function variableQuery(v: Json): string {
  return isObject(v.query) ? str(v.query.query) : str(v.query);
}

/** `label_values(selector, label)` → the selector and the label. */
function labelValues(query: string): { selector: string; label: string } | undefined {
  const m = /^label_values\((.+),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$/.exec(query.trim());
  return m === null ? undefined : { selector: m[1]!, label: m[2]! };
}

function dashboardExprs(d: unknown): Where[] {
  const out: Where[] = [];
  for (const p of allPanels(d))
    for (const t of objects(p.targets)) out.push({ where: `panel "${str(p.title)}"`, expr: str(t.expr) });
  const annotations = isObject(d) && isObject(d.annotations) ? objects(d.annotations.list) : [];
  for (const a of annotations)
    if (typeof a.expr === 'string') out.push({ where: `annotation "${str(a.name)}"`, expr: a.expr });
  return out;
}

function rules(doc: unknown): Json[] {
  const groups = isObject(doc) ? objects(doc.groups) : [];
  return groups.flatMap((g) => objects(g.rules));
}

// ---- peers ----

interface UdpPeer {
  readonly socket: dgram.Socket;
  readonly port: number;
  readonly replies: string[];
}

/** A UDP socket on loopback: an echo backend (`echo`) or a client that keeps what it receives. */
async function udpSocket(echo: boolean): Promise<UdpPeer> {
  const socket = dgram.createSocket('udp4');
  const replies: string[] = [];
  socket.on('error', () => undefined);
  socket.on('message', (msg, rinfo) => {
    if (echo) socket.send(msg, rinfo.port, rinfo.address);
    else replies.push(msg.toString());
  });
  socket.bind(0, '127.0.0.1');
  await once(socket, 'listening');
  return { socket, port: socket.address().port, replies };
}

/** A UDP port with nothing bound: datagrams to it draw ICMP port unreachable. */
async function closedUdpPort(): Promise<number> {
  const s = await udpSocket(false);
  await new Promise<void>((resolve) => s.socket.close(() => resolve()));
  return s.port;
}

// ---- the daemons ----

let echo: TestServer;
let udpEcho: UdpPeer;
const udpClients: UdpPeer[] = [];
const held: Socket[] = [];
let lb: SluiceProcess;
let workers: SluiceProcess;
let single: Exposition;
let multi: Exposition;
const token = 'kit-token-0123456789';

function config(gone: number, goneUdp: number, tokenFile: string): string {
  return `admin: { listen: "127.0.0.1:0", token_file: "${tokenFile}" }
log: { access_log: false }
shutdown: { drain_timeout: 200ms }
listeners:
  - { name: web, protocol: tcp, bind: "127.0.0.1:0", pool: web, limits: { max_connections: 1 } }
  - { name: flaky, protocol: tcp, bind: "127.0.0.1:0", pool: flaky }
  - { name: dead, protocol: tcp, bind: "127.0.0.1:0", pool: dead }
  - { name: lost, protocol: tcp, bind: "127.0.0.1:0", pool: lost }
  - { name: queued, protocol: tcp, bind: "127.0.0.1:0", pool: queued }
  - { name: proxied, protocol: tcp, bind: "127.0.0.1:0", pool: web, proxy_protocol_in: { trusted: ["127.0.0.0/8"] } }
  - { name: dns, protocol: udp, bind: "127.0.0.1:0", pool: dns, udp: { max_flows: 1 } }
  - { name: dns-dead, protocol: udp, bind: "127.0.0.1:0", pool: dns-dead }
  - { name: h3, protocol: udp, bind: "127.0.0.1:0", pool: h3, quic: { unroutable: drop } }
  - { name: capped, protocol: tcp, bind: "127.0.0.1:0", pool: capped }
pools:
  - name: web
    backends: [{ address: "${echo.address}" }, { address: "127.0.0.1:${gone}" }]
    health: { active: { type: tcp, interval: 100ms, timeout: 50ms, rise: 1, fall: 1 } }
  - name: flaky
    connect_retries: 1
    backends: [{ address: "127.0.0.1:${gone}" }, { address: "${echo.address}" }]
    health: { active: { type: none }, passive: { consecutive_failures: 1, ejection: 1m } }
  - name: dead
    connect_retries: 0
    backends: [{ address: "127.0.0.1:${gone}" }]
    health: { active: { type: none } }
  - name: lost
    backends: [{ address: "127.0.0.1:${gone}" }]
    health: { active: { type: tcp, interval: 100ms, timeout: 50ms, rise: 1, fall: 1 } }
  - name: queued
    max_connections_per_backend: 1
    max_queue: 1
    queue_timeout: 200ms
    backends: [{ address: "${echo.address}" }]
    health: { active: { type: none } }
  - name: dns
    backends: [{ address: "127.0.0.1:${udpEcho.port}" }]
    health: { active: { type: none } }
  - name: dns-dead
    backends: [{ address: "127.0.0.1:${goneUdp}" }]
    health: { active: { type: none } }
  - name: h3
    algorithm: maglev
    backends: [{ address: "127.0.0.1:${udpEcho.port}" }]
    health: { active: { type: none } }
  - name: capped
    max_connections_per_backend: 100
    max_connections_per_backend_scope: cluster
    backends: [{ address: "${echo.address}" }]
    health: { active: { type: none } }
`;
}

async function scrape(p: SluiceProcess): Promise<string> {
  const res = await fetch(`${p.adminUrl}/metrics`);
  expect(res.status).toBe(200);
  return res.text();
}

const metric = (name: string, labels: Record<string, string>): Promise<number> =>
  readMetric(lb.adminUrl, name, labels);

async function udpClient(port: number, text: string): Promise<UdpPeer> {
  const c = await udpSocket(false);
  udpClients.push(c);
  c.socket.send(text, port, '127.0.0.1');
  return c;
}

/** Connects, sends `text`, and waits until sluice closes the connection. */
async function refused(port: number, text = ''): Promise<void> {
  const s = netConnect({ port, host: '127.0.0.1' });
  s.on('error', () => undefined);
  if (text !== '') s.write(text);
  await untilClosed(s);
}

/** Drives the single process through every path the kit watches. */
async function exercise(gone: number): Promise<void> {
  const port = (name: string): number => lb.ports.get(name) ?? 0;
  // A down backend (active checks), then a session and a reject at max_connections.
  const down = { pool: 'web', backend: `127.0.0.1:${gone}` };
  await waitFor(
    async () => (await metric('sluice_health_transitions_total', { ...down, to: 'down' })) > 0,
    10_000,
    'a backend down',
  );
  expect(await metric('sluice_backend_up', down)).toBe(0);
  // Why it is down: one state at 1, the others absent.
  expect(await metric('sluice_backend_state', { ...down, state: 'unhealthy' })).toBe(1);
  expect(await metric('sluice_backend_state', { ...down, state: 'ready' })).toBe(0);
  const first = await connect(port('web'));
  first.on('error', () => undefined);
  held.push(first);
  first.write('hold');
  await once(first, 'data');
  await refused(port('web'));
  // A failed connect saved by a retry (and a passive ejection), and one that no retry saves.
  // (Where round-robin starts is not fixed: connect until the closed port has had its turn.)
  await waitFor(
    async () => {
      expect(await exchange(port('flaky'), 'saved')).toBe('saved');
      return (await metric('sluice_backend_ejections_total', { pool: 'flaky' })) > 0;
    },
    10_000,
    'a passive ejection',
  );
  await refused(port('dead'));
  // A pool whose only backend is down: panic mode, and clients refused with no_backend.
  await waitFor(async () => (await metric('sluice_pool_panic', { pool: 'lost' })) === 1, 10_000, 'panic');
  await refused(port('lost'));
  // The only backend at max_connections_per_backend: one waits in the queue until
  // queue_timeout, the next finds the queue full.
  const busy = await connect(port('queued'));
  busy.on('error', () => undefined);
  held.push(busy);
  busy.write('busy');
  await once(busy, 'data');
  const waiting = netConnect({ port: port('queued'), host: '127.0.0.1' });
  waiting.on('error', () => undefined);
  const timedOut = untilClosed(waiting);
  await once(waiting, 'connect');
  await refused(port('queued'));
  await timedOut;
  // A PROXY header refused.
  await refused(port('proxied'), 'GET / HTTP/1.0\r\n\r\n');
  // UDP: one flow fills the table of one, a second client is refused; a closed backend port.
  const a = await udpClient(port('dns'), 'q1');
  await waitFor(() => a.replies.length > 0, 5000, 'a UDP reply');
  await udpClient(port('dns'), 'q2');
  const c = await udpClient(port('dns-dead'), 'lost');
  await waitFor(
    async () => {
      c.socket.send('again', port('dns-dead'), '127.0.0.1');
      return (await metric('sluice_udp_dropped_total', { listener: 'dns-dead', reason: 'econnrefused' })) > 0;
    },
    10_000,
    'an econnrefused drop',
  );
  // QUIC: a first flight placed by its connection ID's hash, the same connection from a new
  // address (a migration), and a short header no connection ID routes (dropped as unroutable).
  const dcid = Buffer.from('0123456789abcdef', 'hex');
  const initial = longPacket(dcid, undefined, 'hi');
  const quic = await udpSocket(false);
  udpClients.push(quic);
  quic.socket.send(initial, port('h3'), '127.0.0.1');
  await waitFor(() => quic.replies.length > 0, 5000, 'a QUIC reply');
  const moved = await udpSocket(false);
  udpClients.push(moved);
  moved.socket.send(shortPacket(dcid, 'again'), port('h3'), '127.0.0.1');
  await waitFor(() => moved.replies.length > 0, 5000, 'a reply after the migration');
  await udpClient(port('h3'), 'not quic');
  // A rejected reload, then an accepted one.
  const valid = readFileSync(lb.configPath, 'utf8');
  writeFileSync(lb.configPath, 'listeners: nope\n');
  lb.kill('SIGHUP');
  await lb.waitForLog((l) => l.msg === 'reload rejected; the running config is kept');
  writeFileSync(lb.configPath, valid);
  lb.kill('SIGHUP');
  await lb.waitForLog((l) => l.msg === 'config reloaded');
  // Counters that are added up on timer ticks.
  await waitFor(
    async () =>
      (await metric('sluice_bytes_total', { listener: 'web', direction: 'upstream' })) > 0 &&
      (await metric('sluice_listener_rejected_total', { listener: 'web', reason: 'max_connections' })) > 0 &&
      (await metric('sluice_listener_rejected_total', { listener: 'lost', reason: 'no_backend' })) > 0 &&
      (await metric('sluice_listener_rejected_total', { listener: 'queued', reason: 'queue_full' })) > 0 &&
      (await metric('sluice_listener_rejected_total', { listener: 'queued', reason: 'queue_timeout' })) > 0 &&
      (await metric('sluice_sessions_closed_total', { listener: 'dead', reason: 'connect_failed' })) > 0 &&
      (await metric('sluice_listener_rejected_total', { listener: 'dns', reason: 'flow_limit' })) > 0 &&
      (await metric('sluice_udp_datagrams_total', { listener: 'dns', direction: 'downstream' })) > 0 &&
      (await metric('sluice_udp_quic_migrations_total', { listener: 'h3' })) > 0 &&
      (await metric('sluice_udp_quic_unroutable_total', { listener: 'h3', reason: 'unknown_cid' })) > 0,
    10_000,
    'counters to be reported',
  );
}

beforeAll(async () => {
  echo = await echoServer();
  udpEcho = await udpSocket(true);
  const tokenFile = tempFile('token', `${token}\n`);
  const gone = await closedPort();
  const goneUdp = await closedUdpPort();
  // With workers, listeners need a named port (each worker binds it with SO_REUSEPORT).
  const workersYaml = `admin: { listen: "127.0.0.1:0" }
workers: 2
shutdown: { drain_timeout: 200ms }
listeners: [{ name: web, protocol: tcp, bind: "127.0.0.1:${await closedPort()}", pool: web }]
pools: [{ name: web, backends: [{ address: "${echo.address}" }], health: { active: { type: none } } }]
`;
  const [one, two] = await Promise.allSettled([
    spawnSluice(config(gone, goneUdp, tokenFile)),
    spawnSluice(workersYaml),
  ]);
  if (one.status === 'fulfilled') lb = one.value;
  if (two.status === 'fulfilled') workers = two.value;
  if (one.status === 'rejected') throw one.reason;
  if (two.status === 'rejected') throw two.reason;
  await exercise(gone);
  single = parseExposition(await scrape(lb));
  multi = parseExposition(await scrape(workers));
});

afterAll(async () => {
  for (const s of held) s.destroy();
  for (const c of udpClients) c.socket.close();
  for (const p of [lb, workers]) {
    if (p === undefined || p.child.exitCode !== null) continue;
    p.kill('SIGTERM');
    await p.exited;
  }
  udpEcho?.socket.close();
  await echo?.close();
});

// ---- names and labels ----

/** Label name → values seen on the live samples of a series, over both daemons. */
function liveLabels(series: string): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>();
  for (const e of [single, multi])
    for (const [label, values] of e.labels.get(series) ?? []) {
      let set = out.get(label);
      if (set === undefined) out.set(label, (set = new Set<string>()));
      for (const v of values) set.add(v);
    }
  return out;
}

/** Label names of a series: seen on live samples, else declared by the daemon's registries. */
function labelsOf(series: string, declared: ReadonlyMap<string, readonly string[]>): Set<string> | undefined {
  if ([single, multi].some((e) => e.labels.has(series)))
    return new Set([...liveLabels(series).keys(), ...TARGET_LABELS]);
  const family = single.seriesFamily.get(series) ?? multi.seriesFamily.get(series);
  const names = family === undefined ? undefined : declared.get(family.name);
  if (names === undefined) return undefined;
  return new Set([...names, ...(series.endsWith('_bucket') ? ['le'] : []), ...TARGET_LABELS]);
}

/**
 * The label values a matcher asks for when it names them: `="x"`, or `=~"x|y"` with plain
 * words; undefined for template variables and other regular expressions.
 */
function literalValues(m: { op: string; value: string }): string[] | undefined {
  if (m.value.includes('$')) return undefined;
  if (m.op === '=') return [m.value];
  if (m.op === '=~' && /^\w+(\|\w+)*$/.test(m.value)) return m.value.split('|');
  return undefined;
}

/** Label names each sluice metric is declared with, from the same registries the daemon builds. */
function declaredLabels(): Map<string, readonly string[]> {
  const none = { backends: () => [], udpFlows: () => [], storeUp: () => true };
  const registries = [
    new Metrics(none, { defaultMetrics: false }).registry,
    new PrimaryMetrics(() => 0).registry,
  ];
  const out = new Map<string, readonly string[]>();
  for (const r of registries)
    for (const m of r.getMetricsAsArray()) {
      const names: unknown = Reflect.get(m, 'labelNames');
      if (Array.isArray(names)) out.set(m.name, names.map(String));
    }
  return out;
}

/** Every problem with the metric names and labels `items` use; empty when all are exported. */
function problems(items: readonly Where[], unsampled: Set<string>): string[] {
  const declared = declaredLabels();
  const out: string[] = [];
  for (const { where, expr } of items) {
    let refs;
    try {
      refs = promqlRefs(expandGrafana(expr));
    } catch (err) {
      out.push(`${where}: ${(err as Error).message}`);
      continue;
    }
    if (refs.selectors.length === 0) out.push(`${where}: selects no metric: ${expr}`);
    const inExpr = new Set(TARGET_LABELS);
    for (const s of refs.selectors) {
      const own = PROMETHEUS_SERIES[s.metric];
      const exported = single.seriesFamily.has(s.metric) || multi.seriesFamily.has(s.metric);
      if (own === undefined && !exported) {
        out.push(`${where}: ${s.metric} is not exported by sluice`);
        continue;
      }
      if (exported && ![single, multi].some((e) => e.labels.has(s.metric))) unsampled.add(s.metric);
      const labels = own === undefined ? labelsOf(s.metric, declared) : new Set(own);
      if (labels === undefined) {
        out.push(`${where}: ${s.metric} has no sample and no declared labels`);
        continue;
      }
      for (const l of labels) inExpr.add(l);
      const live = liveLabels(s.metric);
      for (const m of s.matchers) {
        if (!labels.has(m.label)) {
          out.push(`${where}: ${s.metric} has no label ${m.label}`);
          continue;
        }
        // A value the daemon has exported: a renamed reason or scope is caught too.
        const seen = live.get(m.label);
        if (own !== undefined || TARGET_LABELS.includes(m.label) || seen === undefined) continue;
        for (const v of literalValues(m) ?? [])
          if (!seen.has(v)) out.push(`${where}: ${s.metric}{${m.label}="${v}"} was never exported`);
      }
    }
    for (const g of refs.grouping)
      if (!inExpr.has(g)) out.push(`${where}: groups by ${g}, which no metric of the expression has`);
  }
  return out;
}

describe('the operator kit against a live sluice', () => {
  it('names only metrics and labels that sluice exports, in the dashboard and in the alert rules', () => {
    const items: Where[] = [
      ...dashboardExprs(dashboard),
      ...rules(rulesDoc).map((r) => ({ where: `alert ${str(r.alert)}`, expr: str(r.expr) })),
    ];
    // The dashboard's variables: label_values(selector, label) needs the label on that metric.
    for (const v of templating(dashboard).filter((t) => t.type === 'query')) {
      const q = labelValues(variableQuery(v));
      expect(q, `variable ${str(v.name)}: expected label_values(selector, label)`).toBeDefined();
      const { metric } = promqlRefs(q!.selector).selectors[0]!;
      items.push({ where: `variable ${str(v.name)}`, expr: q!.selector });
      items.push({ where: `variable ${str(v.name)}`, expr: `count by (${q!.label}) (${metric})` });
    }
    expect(items.length).toBeGreaterThan(60);
    const unsampled = new Set<string>();
    expect(problems(items, unsampled)).toEqual([]);
    // Labels come from live samples for all but the metrics no test traffic can produce.
    expect([...unsampled].filter((m) => !NOT_PRODUCED_HERE.includes(m))).toEqual([]);
  });

  it('would notice a renamed metric or label', () => {
    const unsampled = new Set<string>();
    expect(
      problems([{ where: 'probe', expr: 'rate(sluice_listener_connections_total[5m])' }], unsampled),
    ).toEqual([]);
    expect(
      problems([{ where: 'probe', expr: 'rate(sluice_listener_connection_total[5m])' }], unsampled),
    ).toEqual(['probe: sluice_listener_connection_total is not exported by sluice']);
    expect(problems([{ where: 'probe', expr: 'rat(sluice_bytes_total[5m])' }], unsampled)).toEqual([
      'probe: unknown function rat() in: rat(sluice_bytes_total[5m])',
    ]);
    expect(
      problems([{ where: 'probe', expr: 'sluice_backend_up{pool=~"$pool", server="b"}' }], unsampled),
    ).toEqual(['probe: sluice_backend_up has no label server']);
    expect(
      problems(
        [
          {
            where: 'probe',
            expr: 'rate(sluice_listener_rejected_total{reason=~"no_backend|max_connection"}[5m])',
          },
        ],
        unsampled,
      ),
    ).toEqual(['probe: sluice_listener_rejected_total{reason="max_connection"} was never exported']);
    expect(problems([{ where: 'probe', expr: 'sum by (listener) (sluice_backend_up)' }], unsampled)).toEqual([
      'probe: groups by listener, which no metric of the expression has',
    ]);
    expect(problems([{ where: 'probe', expr: 'sluice_nodejs_gc_duration_seconds' }], unsampled)).toEqual([
      'probe: sluice_nodejs_gc_duration_seconds is not exported by sluice',
    ]);
  });

  it('shows every metric of the SPEC on the dashboard', () => {
    const used = new Set(
      dashboardExprs(dashboard).flatMap(({ expr }) =>
        promqlRefs(expandGrafana(expr)).selectors.map(
          (s) => single.seriesFamily.get(s.metric)?.name ?? s.metric,
        ),
      ),
    );
    for (const m of SPEC_METRICS) expect(used, `the dashboard shows ${m}`).toContain(m);
  });

  it('serves /metrics without the admin token, as the scrape config assumes', async () => {
    const reload = await fetch(`${lb.adminUrl}/api/v1/reload`, { method: 'POST' });
    expect(reload.status).toBe(401);
    expect((await fetch(`${lb.adminUrl}/metrics`)).status).toBe(200);
  });
});

// ---- the dashboard ----

describe('the Grafana dashboard', () => {
  const panels = allPanels(dashboard);
  const vars = templating(dashboard);
  const DATASOURCE = '${datasource}';

  it('is a dashboard Grafana 10 and 11 import', () => {
    expect(isObject(dashboard)).toBe(true);
    const d = dashboard as Json;
    expect(d.schemaVersion).toBeGreaterThanOrEqual(36);
    expect(str(d.uid)).toMatch(/^[a-zA-Z0-9_-]{1,40}$/);
    expect(str(d.title)).not.toBe('');
    expect(d.id ?? null).toBeNull(); // an import gets its own id
  });

  it('has panels with unique ids and a place on the grid, none overlapping', () => {
    const ids = panels.map((p) => p.id);
    expect(ids.every((id) => Number.isInteger(id))).toBe(true);
    expect(new Set(ids).size).toBe(ids.length);
    const taken = new Set<string>();
    for (const p of panels) {
      const g = p.gridPos;
      expect(isObject(g), `panel ${String(p.id)} has gridPos`).toBe(true);
      const { x, y, w, h } = g as Record<string, number>;
      for (const v of [x, y, w, h]) expect(Number.isInteger(v), `panel ${String(p.id)} gridPos`).toBe(true);
      expect(w! >= 1 && x! >= 0 && x! + w! <= 24 && h! >= 1, `panel ${String(p.id)} fits 24 columns`).toBe(
        true,
      );
      for (let i = x!; i < x! + w!; i++)
        for (let j = y!; j < y! + h!; j++) {
          expect(taken.has(`${i},${j}`), `panel ${String(p.id)} overlaps another at ${i},${j}`).toBe(false);
          taken.add(`${i},${j}`);
        }
    }
  });

  it('queries ${datasource} from every panel and target, with an expression in each', () => {
    const data = panels.filter((p) => p.type !== 'row' && p.type !== 'text');
    expect(data.length).toBeGreaterThan(30);
    for (const p of data) {
      const name = `panel "${str(p.title)}"`;
      expect(isObject(p.datasource) && p.datasource.uid, `${name} datasource`).toBe(DATASOURCE);
      const targets = objects(p.targets);
      expect(targets.length, `${name} has targets`).toBeGreaterThan(0);
      expect(new Set(targets.map((t) => t.refId)).size, `${name} refIds`).toBe(targets.length);
      for (const t of targets) {
        expect(str(t.expr).trim(), `${name} expr`).not.toBe('');
        if (t.datasource !== undefined)
          expect(isObject(t.datasource) && t.datasource.uid, `${name} target datasource`).toBe(DATASOURCE);
      }
    }
  });

  it('defines every template variable its queries use, with a Prometheus datasource variable', () => {
    const ds = vars.find((v) => v.name === 'datasource');
    expect(ds).toMatchObject({ type: 'datasource', query: 'prometheus' });
    for (const name of ['instance', 'listener', 'pool']) {
      const v = vars.find((x) => x.name === name);
      expect(v, `variable ${name}`).toMatchObject({ type: 'query', multi: true, includeAll: true });
      expect(isObject(v!.datasource) && v!.datasource.uid).toBe(DATASOURCE);
    }
    const defined = new Set(vars.map((v) => str(v.name)));
    const texts = [
      ...dashboardExprs(dashboard).map((w) => w.expr),
      ...vars.map(variableQuery),
      ...panels.map((p) => JSON.stringify(p.datasource ?? '')),
    ];
    const used = new Set(texts.flatMap(grafanaVariables));
    expect([...used].filter((u) => !defined.has(u))).toEqual([]);
    for (const name of ['instance', 'listener', 'pool']) expect(used, `${name} is used`).toContain(name);
  });
});

// ---- the rules ----

describe('the Prometheus rules', () => {
  const all = rules(rulesDoc);

  it('give every alert an expression, a for, a severity and a summary and description', () => {
    expect(all.length).toBeGreaterThanOrEqual(10);
    const names = all.map((r) => str(r.alert));
    expect(new Set(names).size).toBe(names.length);
    for (const r of all) {
      const name = str(r.alert);
      expect(name, 'alert name').toMatch(/^Sluice[A-Z][A-Za-z]+$/);
      expect(str(r.expr).trim(), `${name} expr`).not.toBe('');
      expect(str(r.for), `${name} for`).toMatch(/^\d+[smh]$/);
      expect(isObject(r.labels) && r.labels.severity, `${name} severity`).toMatch(/^(critical|warning)$/);
      const a = isObject(r.annotations) ? r.annotations : {};
      expect(str(a.summary).length, `${name} summary`).toBeGreaterThan(10);
      expect(str(a.description).length, `${name} description`).toBeGreaterThan(60);
    }
  });

  it('cover what an operator is paged or warned for', () => {
    const names = all.map((r) => str(r.alert));
    for (const n of [
      'SluiceInstanceDown',
      'SluiceBackendDown',
      'SluicePoolNoReadyBackend',
      'SluicePoolPanic',
      'SluiceConfigReloadFailed',
      'SluiceStateStoreDown',
      'SluiceConnectionLimitRejects',
      'SluiceOverloaded',
      'SluiceUdpFlowTableFull',
      'SluiceUdpDrops',
      'SluiceConnectFailureRatioHigh',
    ])
      expect(names).toContain(n);
  });

  it('match the job of the example scrape config, which scrapes /metrics without a token', () => {
    const cfg = parseYaml(readFileSync(SCRAPE, 'utf8')) as unknown;
    const jobs = isObject(cfg) ? objects(cfg.scrape_configs) : [];
    expect(jobs).toHaveLength(1);
    const job = jobs[0]!;
    expect(job).toMatchObject({ job_name: 'sluice', metrics_path: '/metrics' });
    expect(job.authorization ?? job.bearer_token ?? job.bearer_token_file).toBeUndefined();
    expect(isObject(cfg) && cfg.rule_files).toEqual(['sluice-alerts.yaml']);
    const up = all.flatMap((r) => promqlRefs(str(r.expr)).selectors).filter((s) => s.metric === 'up');
    expect(up.length).toBeGreaterThan(0);
    for (const s of up) expect(s.matchers).toContainEqual({ label: 'job', op: '=', value: 'sluice' });
  });

  it('pass promtool: check rules, check config, and the unit tests', () => {
    const version = spawnSync('promtool', ['--version'], { encoding: 'utf8' });
    if (version.error !== undefined)
      throw new Error(
        "promtool is not on the PATH: install Debian's prometheus package (.ci/run installs it when missing)",
      );
    const run = (args: string[]): void => {
      const r = spawnSync('promtool', args, { encoding: 'utf8', cwd: `${ROOT}deploy/prometheus` });
      expect(r.status, `promtool ${args.join(' ')}:\n${r.stdout}${r.stderr}`).toBe(0);
    };
    run(['check', 'rules', RULES]);
    run(['check', 'config', SCRAPE]);
    run(['test', 'rules', RULE_TESTS]);
  });
});
