import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';

/** Why a listener turned a connection or datagram away (the SPEC's `reason` label values). */
export type RejectReason =
  | 'acl'
  | 'max_connections'
  | 'per_source_limit'
  | 'rate_limit'
  | 'proxy_protocol'
  | 'tls'
  | 'no_backend'
  | 'preface_timeout'
  | 'flow_limit'
  | 'overload'
  | 'queue_full'
  | 'queue_timeout';

/**
 * A labelled counter child counted in a plain number on the connection path: a session adds to
 * it for the price of a field increment, and the counter takes the sum when it is scraped.
 */
export class Tally {
  n = 0;
  readonly labels: Record<string, string>;
  constructor(labels: Record<string, string>) {
    this.labels = labels;
  }
}

/** One backend as the backend gauges see it. */
export interface BackendSample {
  pool: string;
  address: string;
  up: boolean;
  /** Why it takes new sessions or not (Backend.readiness): ready, unhealthy, ejected, … */
  readiness: string;
  local: number;
  remote: number;
}

/** Read at scrape time: the live numbers are never pushed on the connection path. */
export interface MetricsSource {
  backends(): Iterable<BackendSample>;
  udpFlows(): Iterable<{ listener: string; flows: number }>;
  storeUp(): boolean;
  /** Seconds since the last successful state sync (absent: no sync running). */
  syncLagSeconds?(): number;
  /** Checked backends and whether this replica runs their active checks. */
  probers?(): Iterable<{ pool: string; backend: string; probing: boolean }>;
  /**
   * Cluster-scoped limits: whether they run on local shares (the store out), and what this
   * process may hold under each now (absent: none).
   */
  limits?(): { fallback: boolean; caps: Iterable<{ kind: string; name: string; cap: number }> };
  /** The overload guard's state (absent: never overloaded). */
  overloaded?(): boolean;
  /** The splice relay's live sessions and pipes (absent: not loaded). */
  splice?(): { relays: number; pipes: number } | undefined;
}

/**
 * The Prometheus registry. Labelled children are fetched once per listener or backend and kept by
 * their owners, so the hot path only increments a number.
 */
export class Metrics {
  readonly registry = new Registry();
  readonly listenerConnections: Counter<'listener'>;
  readonly listenerRejected: Counter<'listener' | 'reason'>;
  readonly connectFailures: Counter<'pool' | 'backend'>;
  readonly bytes: Counter<'listener' | 'direction'>;
  readonly configReloads: Counter<'result'>;
  readonly acceptErrors: Counter<'listener' | 'code'>;
  readonly sessionsClosed: Counter<'listener' | 'reason'>;
  readonly healthChecks: Counter<'pool' | 'backend' | 'result'>;
  readonly healthTransitions: Counter<'pool' | 'backend' | 'to'>;
  readonly ejections: Counter<'pool' | 'backend'>;
  readonly proxyTlvsDropped: Counter<'pool'>;
  readonly udpDatagrams: Counter<'listener' | 'direction'>;
  readonly udpDrops: Counter<'listener' | 'reason'>;
  readonly quicFlows: Counter<'listener' | 'method'>;
  readonly quicMigrations: Counter<'listener'>;
  readonly quicUnroutable: Counter<'listener' | 'reason'>;
  readonly discoveryErrors: Counter<'pool' | 'code'>;
  readonly proxyProtocolErrors: Counter<'listener' | 'reason'>;
  readonly stateSyncFailures: Counter;
  readonly splicedSessions: Counter<'listener'>;
  readonly poolPanic: Gauge<'pool'>;
  readonly poolPanics: Counter<'pool'>;
  /** Tallies by the counter they add to at scrape time. */
  readonly #tallies = new Map<Counter<string>, Tally[]>();

  /** A plain-number child of `counter` with these labels (see Tally). */
  tally<L extends string>(counter: Counter<L>, labels: Record<L, string>): Tally {
    const t = new Tally(labels);
    this.#tallies.get(counter)?.push(t);
    return t;
  }

  constructor(source: MetricsSource, opts: { defaultMetrics?: boolean } = {}) {
    const r = this.registry;
    // The event-loop delay is sampled every 50 ms instead of prom-client's 10 ms, which would wake
    // an idle sluice 100 times a second; a lag worth alerting on (tens of ms) still shows.
    if (opts.defaultMetrics !== false)
      collectDefaultMetrics({ register: r, prefix: 'sluice_', eventLoopMonitoringPrecision: 50 });
    const counter = <L extends string>(name: string, help: string, labelNames: readonly L[]): Counter<L> => {
      const tallies: Tally[] = [];
      const c = new Counter<L>({
        name,
        help,
        labelNames,
        registers: [r],
        collect() {
          for (const t of tallies) {
            if (t.n === 0) continue;
            this.inc(t.labels as Partial<Record<L, string>>, t.n);
            t.n = 0;
          }
        },
      });
      this.#tallies.set(c, tallies);
      return c;
    };
    this.listenerConnections = counter('sluice_listener_connections_total', 'Connections accepted', [
      'listener',
    ]);
    this.listenerRejected = counter(
      'sluice_listener_rejected_total',
      'Connections or datagrams turned away',
      ['listener', 'reason'],
    );
    this.connectFailures = counter('sluice_upstream_connect_failures_total', 'Failed upstream connects', [
      'pool',
      'backend',
    ]);
    this.bytes = counter('sluice_bytes_total', 'Bytes relayed', ['listener', 'direction']);
    this.configReloads = counter('sluice_config_reloads_total', 'Config reloads', ['result']);
    // Both results exist from the start, so that increase() sees the first failed reload.
    for (const result of ['success', 'failure']) this.configReloads.inc({ result }, 0);
    this.acceptErrors = counter('sluice_accept_errors_total', 'accept() failures such as EMFILE', [
      'listener',
      'code',
    ]);
    this.sessionsClosed = counter('sluice_sessions_closed_total', 'TCP sessions closed, by reason', [
      'listener',
      'reason',
    ]);
    this.healthChecks = counter('sluice_health_checks_total', 'Active health checks', [
      'pool',
      'backend',
      'result',
    ]);
    this.healthTransitions = counter('sluice_health_transitions_total', 'Health state changes', [
      'pool',
      'backend',
      'to',
    ]);
    this.ejections = counter('sluice_backend_ejections_total', 'Passive-health ejections', [
      'pool',
      'backend',
    ]);
    this.proxyTlvsDropped = counter(
      'sluice_proxy_tlvs_dropped_total',
      'PROXY v2 headers sent without relayed TLVs (too large)',
      ['pool'],
    );
    this.udpDatagrams = counter('sluice_udp_datagrams_total', 'UDP datagrams relayed', [
      'listener',
      'direction',
    ]);
    this.proxyProtocolErrors = counter(
      'sluice_proxy_protocol_errors_total',
      'PROXY headers refused, by parser reason',
      ['listener', 'reason'],
    );
    this.discoveryErrors = counter(
      'sluice_discovery_errors_total',
      'Failed discovery lookups (last set kept)',
      ['pool', 'code'],
    );
    this.stateSyncFailures = counter(
      'sluice_state_sync_failures_total',
      'State sync rounds with a failed store call',
      [],
    );
    this.splicedSessions = counter(
      'sluice_spliced_sessions_total',
      'TCP sessions the splice relay carried (counted once it is known to carry them)',
      ['listener'],
    );
    this.udpDrops = counter('sluice_udp_dropped_total', 'UDP datagrams dropped', ['listener', 'reason']);
    this.quicFlows = counter(
      'sluice_udp_quic_flows_total',
      'Flows of QUIC listeners, by how they were routed (dcid-hash, server-id, known-cid, address)',
      ['listener', 'method'],
    );
    this.quicMigrations = counter(
      'sluice_udp_quic_migrations_total',
      'Short-header QUIC packets from a new client address that a connection ID routed (migration, NAT rebinding)',
      ['listener'],
    );
    this.quicUnroutable = counter(
      'sluice_udp_quic_unroutable_total',
      'Datagrams from a new client address that no QUIC connection ID routed (not_quic, unknown_cid, version_negotiation)',
      ['listener', 'reason'],
    );
    this.poolPanic = new Gauge({
      name: 'sluice_pool_panic',
      help: '1 while too few backends of the pool are ready and it balances over all of them (health.panic_threshold)',
      labelNames: ['pool'],
      registers: [r],
    });
    this.poolPanics = counter('sluice_pool_panics_total', 'Times a pool entered panic mode', ['pool']);

    new Gauge({
      name: 'sluice_backend_up',
      help: '1 when the backend takes new sessions',
      labelNames: ['pool', 'backend'],
      registers: [r],
      collect() {
        this.reset();
        for (const b of source.backends()) this.set({ pool: b.pool, backend: b.address }, b.up ? 1 : 0);
      },
    });
    new Gauge({
      name: 'sluice_backend_state',
      help: 'Why a backend takes new sessions or not: 1 on its current state (ready, unhealthy, ejected, draining, disabled, zero-weight, removed)',
      labelNames: ['pool', 'backend', 'state'],
      registers: [r],
      collect() {
        this.reset();
        for (const b of source.backends())
          this.set({ pool: b.pool, backend: b.address, state: b.readiness }, 1);
      },
    });
    new Gauge({
      name: 'sluice_backend_connections',
      help: 'Open sessions and flows per backend: this process (local) and all replicas (cluster)',
      labelNames: ['pool', 'backend', 'scope'],
      registers: [r],
      collect() {
        this.reset();
        for (const b of source.backends()) {
          this.set({ pool: b.pool, backend: b.address, scope: 'local' }, b.local);
          this.set({ pool: b.pool, backend: b.address, scope: 'cluster' }, b.local + b.remote);
        }
      },
    });
    new Gauge({
      name: 'sluice_udp_flows',
      help: 'Live UDP flows',
      labelNames: ['listener'],
      registers: [r],
      collect() {
        this.reset();
        for (const f of source.udpFlows()) this.set({ listener: f.listener }, f.flows);
      },
    });
    new Gauge({
      name: 'sluice_overloaded',
      help: '1 while the overload guard refuses new connections (memory above overload.max_memory)',
      registers: [r],
      collect() {
        this.set(source.overloaded?.() === true ? 1 : 0);
      },
    });
    new Gauge({
      name: 'sluice_state_sync_lag_seconds',
      help: 'Seconds since the last successful state sync with the other replicas',
      registers: [r],
      collect() {
        this.set(source.syncLagSeconds?.() ?? 0);
      },
    });
    new Gauge({
      name: 'sluice_health_prober',
      help: '1 where this replica runs the backend active checks (elected prober, or store out)',
      labelNames: ['pool', 'backend'],
      registers: [r],
      collect() {
        this.reset();
        for (const p of source.probers?.() ?? [])
          this.set({ pool: p.pool, backend: p.backend }, p.probing ? 1 : 0);
      },
    });
    new Gauge({
      name: 'sluice_limit_fallback',
      help: '1 while cluster-scoped limits are enforced on local shares (limit / live replicas): the state store has not answered for 3 heartbeats',
      registers: [r],
      aggregator: 'max',
      collect() {
        this.set(source.limits?.().fallback === true ? 1 : 0);
      },
    });
    new Gauge({
      name: 'sluice_limit_cap',
      help: 'Connections this process may hold now under each cluster-scoped limit (its grant, or its local share while falling back)',
      labelNames: ['limit', 'name'],
      registers: [r],
      collect() {
        this.reset();
        for (const c of source.limits?.().caps ?? []) this.set({ limit: c.kind, name: c.name }, c.cap);
      },
    });
    new Gauge({
      name: 'sluice_splice_relays',
      help: 'TCP sessions the splice relay carries now',
      registers: [r],
      collect() {
        this.set(source.splice?.()?.relays ?? 0);
      },
    });
    new Gauge({
      name: 'sluice_splice_pipes',
      help: 'Pipes the splice relay holds (in flight or pooled for reuse; two descriptors each)',
      registers: [r],
      collect() {
        this.set(source.splice?.()?.pipes ?? 0);
      },
    });
    new Gauge({
      name: 'sluice_state_store_up',
      help: '1 when the state store is reachable',
      registers: [r],
      collect() {
        this.set(source.storeUp() ? 1 : 0);
      },
    });
  }
}
