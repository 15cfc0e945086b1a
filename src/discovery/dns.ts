import { Resolver } from 'node:dns/promises';
import { isIP } from 'node:net';
import type { HostPort } from '../config/values.js';
import { formatHostPort } from '../config/values.js';
import type { Logger } from '../telemetry/logger.js';
import { silentLogger } from '../telemetry/logger.js';
import type { Clock, Timer } from '../util/clock.js';
import { systemClock } from '../util/clock.js';

/**
 * DNS service discovery for a pool: the name is re-resolved on a fixed period and the pool is told
 * whenever the resulting set of backends changes.
 *
 * Failure policy (why the pool keeps serving): a failed lookup (timeout, SERVFAIL, refused, ...)
 * and an empty answer (NXDOMAIN or NODATA, even from a reachable server) both keep the last known
 * set and report the code through `onError`. Emptying a pool turns every new session into a
 * refusal, which is never better than trying the last known backends: the ones that are really
 * gone fail their health checks and are skipped. An empty answer is far more often a zone being
 * republished or a typo in a deploy than a real wish for zero backends; to drain a pool on
 * purpose, use the admin API or change the config.
 */

export type DnsRecordType = 'A' | 'AAAA' | 'A+AAAA' | 'SRV';

/** One backend found in DNS. */
export interface DiscoveredBackend {
  /** Canonical `host:port` (IPv6 in brackets), the backend's identity. */
  readonly address: string;
  /** IP literal, without brackets. */
  readonly host: string;
  readonly port: number;
  /** 1..256. */
  readonly weight: number;
}

/** One SRV answer, as `node:dns` returns it. */
export interface SrvAnswer {
  readonly name: string;
  readonly port: number;
  readonly priority: number;
  readonly weight: number;
}

/** The lookups discovery needs. A `node:dns/promises` Resolver fits; tests inject a fake. */
export interface DnsLookup {
  resolve4(name: string): Promise<string[]>;
  resolve6(name: string): Promise<string[]>;
  resolveSrv(name: string): Promise<SrvAnswer[]>;
  /** Rejects every outstanding lookup (with code ECANCELLED). */
  cancel(): void;
}

/** `pools[].discovery.dns` from the config. */
export interface DnsDiscoveryConfig {
  readonly name: string;
  readonly type: DnsRecordType;
  /** Port of every backend; required unless `type` is SRV (SRV records carry their own). */
  readonly port?: number | undefined;
  /** Milliseconds between the starts of two resolutions. */
  readonly interval: number;
  /** Weight of every A/AAAA backend (SRV records carry their own). */
  readonly weight: number;
  /** Servers to ask, as IP literals; default: the system resolver's. */
  readonly servers?: readonly HostPort[] | undefined;
}

export interface DnsDiscoveryOptions {
  /** Called with the new set, sorted by address, only when addresses or weights change. */
  readonly onUpdate: (members: readonly DiscoveredBackend[]) => void;
  /** Called after every failed or empty resolution with its code (ETIMEOUT, ENOTFOUND, ...). */
  readonly onError?: (code: string) => void;
  /** Bound on one whole resolution (SRV: the SRV lookup and its targets), ms. Default: interval, within 1s..5s. */
  readonly timeout?: number;
  readonly clock?: Clock;
  readonly logger?: Logger;
  /** Default: a Resolver asking `servers`. */
  readonly lookup?: DnsLookup;
}

/** Never hammer a resolver, whatever the config says. */
const MIN_INTERVAL_MS = 100;
/** Codes meaning "the server answered: no such records". Anything else is a failed lookup. */
const NO_RECORDS = new Set(['ENODATA', 'ENOTFOUND']);

type Outcome = { ok: true; members: DiscoveredBackend[] } | { ok: false; code: string };

/** Re-resolves one DNS name on a timer and reports the backends it names. */
export class DnsDiscovery {
  readonly #cfg: DnsDiscoveryConfig;
  readonly #opts: DnsDiscoveryOptions;
  readonly #lookup: DnsLookup;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #interval: number;
  readonly #timeout: number;
  #running = false;
  /** Bumped by stop() so that a resolution finishing late publishes nothing. */
  #generation = 0;
  #timer: Timer | undefined;
  #abort: (() => void) | undefined;
  #firstRun: Promise<void> = Promise.resolve();
  #key: string | undefined;
  #members: readonly DiscoveredBackend[] = [];
  #failing: string | undefined;

  /** Throws if `servers` holds a host name (the resolver needs IP literals). */
  constructor(config: DnsDiscoveryConfig, options: DnsDiscoveryOptions) {
    if (config.type !== 'SRV' && config.port === undefined)
      throw new Error('dns discovery: port is required unless type is SRV');
    this.#cfg = config;
    this.#opts = options;
    this.#clock = options.clock ?? systemClock;
    this.#log = options.logger ?? silentLogger();
    this.#interval = Math.max(MIN_INTERVAL_MS, config.interval);
    this.#timeout = options.timeout ?? Math.min(5000, Math.max(1000, config.interval));
    this.#lookup = options.lookup ?? createResolver(config.servers, this.#timeout);
  }

  /** The set last published; empty until a resolution first succeeds. */
  get members(): readonly DiscoveredBackend[] {
    return this.#members;
  }

  /**
   * Resolves at once, then every `interval` (measured start to start; a slow resolution delays the
   * next one, they never overlap). The promise settles when the first resolution is done and
   * never rejects. Calling start() while running does nothing.
   */
  start(): Promise<void> {
    if (this.#running) return this.#firstRun;
    this.#running = true;
    this.#firstRun = this.#tick(this.#generation);
    return this.#firstRun;
  }

  /** Cancels the timer and any resolution in flight; nothing is published afterwards. */
  stop(): void {
    if (!this.#running) return;
    this.#running = false;
    this.#generation++;
    this.#timer?.cancel();
    this.#timer = undefined;
    this.#abort?.();
  }

  async #tick(generation: number): Promise<void> {
    this.#timer = undefined;
    const started = this.#clock.now();
    const outcome = await this.#resolveBounded();
    if (generation !== this.#generation) return;
    this.#apply(outcome);
    const delay = Math.max(0, this.#interval - (this.#clock.now() - started));
    this.#timer = this.#clock.setTimer(delay, () => void this.#tick(generation));
  }

  /** One resolution, cut short by the deadline or by stop(); never rejects. */
  async #resolveBounded(): Promise<Outcome> {
    const controller = new AbortController();
    let timer: Timer | undefined;
    let abort: (() => void) | undefined;
    const cut = new Promise<Outcome>((resolve) => {
      const end = (code: string): void => {
        timer?.cancel();
        controller.abort();
        resolve({ ok: false, code });
        // After resolve(): the rejections cancel() causes lose the race to the code set here.
        this.#lookup.cancel();
      };
      timer = this.#clock.setTimer(this.#timeout, () => end('ETIMEOUT'));
      abort = () => end('ECANCELLED');
    });
    this.#abort = abort;
    const work = this.#resolve(controller.signal).then(
      (members): Outcome => ({ ok: true, members }),
      (err: unknown): Outcome => ({ ok: false, code: errorCode(err) }),
    );
    try {
      return await Promise.race([work, cut]);
    } finally {
      timer?.cancel();
      // A stop() and start() may have begun another resolution meanwhile: leave its handle alone.
      if (this.#abort === abort) this.#abort = undefined;
    }
  }

  #resolve(signal: AbortSignal): Promise<DiscoveredBackend[]> {
    const { name, type, port, weight } = this.#cfg;
    if (type === 'SRV') return resolveSrvMembers(this.#lookup, name, signal);
    return resolveAddresses(this.#lookup, name, type).then((hosts) =>
      hosts.map((host) => member(host, port ?? 0, weight)),
    );
  }

  #apply(outcome: Outcome): void {
    if (!outcome.ok) return this.#fail(outcome.code);
    if (outcome.members.length === 0) return this.#fail('ENODATA');
    if (this.#failing !== undefined) this.#log.info({ name: this.#cfg.name }, 'dns discovery recovered');
    this.#failing = undefined;
    const members = normalize(outcome.members);
    const key = members.map((m) => `${m.address}*${m.weight}`).join(' ');
    if (key === this.#key) return;
    this.#key = key;
    this.#members = members;
    this.#log.info(
      { name: this.#cfg.name, backends: members.map((m) => m.address) },
      'dns discovery backends changed',
    );
    this.#call(() => this.#opts.onUpdate(members));
  }

  #fail(code: string): void {
    if (code !== this.#failing) {
      const msg = NO_RECORDS.has(code)
        ? 'dns discovery found no records; keeping the last known backends'
        : 'dns discovery failed; keeping the last known backends';
      this.#log.warn({ name: this.#cfg.name, code, kept: this.#members.length }, msg);
    }
    this.#failing = code;
    this.#call(() => this.#opts.onError?.(code));
  }

  /** A throwing callback must not stop the schedule. */
  #call(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.#log.error({ name: this.#cfg.name, err }, 'dns discovery callback threw');
    }
  }
}

/** A Resolver asking `servers` (IP literals), each lookup bounded to about half of `timeout`. */
export function createResolver(servers: readonly HostPort[] | undefined, timeout: number): DnsLookup {
  // Two tries of a quarter each, no backoff beyond it: one lookup stays within timeout/2, so an
  // SRV lookup followed by its target lookups fits in the whole bound.
  const perTry = Math.max(1, Math.floor(timeout / 4));
  const resolver = new Resolver({ timeout: perTry, tries: 2, maxTimeout: perTry });
  if (servers !== undefined && servers.length > 0) {
    for (const s of servers) {
      if (isIP(s.host) === 0) throw new Error(`dns discovery: server "${s.host}" must be an IP address`);
    }
    resolver.setServers(servers.map((s) => formatHostPort(s.host, s.port)));
  }
  return resolver;
}

/**
 * Maps the SRV weights of one priority group (0..65535) to our 1..256. Weights already in 1..256
 * are kept as published. Otherwise (a 0, or one above 256) they are scaled so the largest is 256,
 * rounded, at least 1: proportions hold, and a 0 ("very rarely, when others can serve", RFC 2782)
 * becomes the smallest share there is. A group of only zeros shares equally.
 */
export function mapSrvWeights(weights: readonly number[]): number[] {
  const max = Math.max(0, ...weights);
  if (max === 0) return weights.map(() => 1);
  if (weights.every((w) => w >= 1 && w <= 256)) return [...weights];
  return weights.map((w) => Math.max(1, Math.round((w * 256) / max)));
}

/** Code of a failed lookup; `err.code` from node:dns, never the message text. */
function errorCode(err: unknown): string {
  if (typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string')
    return err.code;
  return 'EUNKNOWN';
}

/**
 * Addresses of `name`. For A+AAAA, a family with no records is just empty, but a failed lookup of
 * either fails the whole: publishing the other family alone would drop healthy backends.
 * Rejects with the "no records" error when both are empty.
 */
async function resolveAddresses(
  lookup: DnsLookup,
  name: string,
  type: Exclude<DnsRecordType, 'SRV'>,
): Promise<string[]> {
  const queries: Promise<string[]>[] = [];
  if (type !== 'AAAA') queries.push(lookup.resolve4(name));
  if (type !== 'A') queries.push(lookup.resolve6(name));
  const found: string[] = [];
  let none: string | undefined;
  for (const r of await Promise.allSettled(queries)) {
    if (r.status === 'fulfilled') found.push(...r.value);
    else if (NO_RECORDS.has(errorCode(r.reason))) none ??= errorCode(r.reason);
    else throw r.reason;
  }
  if (found.length === 0 && none !== undefined)
    throw Object.assign(new Error(`no records for ${name}`), { code: none });
  return found;
}

/**
 * SRV: the group of lowest priority with at least one target that resolves (A and AAAA). A target
 * without records is skipped; any failed target lookup fails the whole resolution.
 */
async function resolveSrvMembers(
  lookup: DnsLookup,
  name: string,
  signal: AbortSignal,
): Promise<DiscoveredBackend[]> {
  const answers = await lookup.resolveSrv(name);
  const priorities = [...new Set(answers.map((a) => a.priority))].sort((a, b) => a - b);
  for (const priority of priorities) {
    signal.throwIfAborted(); // the deadline passed: start no more lookups
    // A target of "." means "no service here" (RFC 2782).
    const group = answers.filter((a) => a.priority === priority && a.name !== '' && a.name !== '.');
    const members = await resolveSrvGroup(lookup, group);
    if (members.length > 0) return members;
  }
  return [];
}

async function resolveSrvGroup(lookup: DnsLookup, group: readonly SrvAnswer[]): Promise<DiscoveredBackend[]> {
  const weights = mapSrvWeights(group.map((a) => a.weight));
  const targets = [...new Set(group.map((a) => a.name))];
  const resolved = await Promise.all(targets.map((t) => resolveTarget(lookup, t)));
  const hostsOf = new Map(targets.map((t, i) => [t, resolved[i] ?? []]));
  return group.flatMap((a, i) =>
    (hostsOf.get(a.name) ?? []).map((host) => member(host, a.port, weights[i] ?? 1)),
  );
}

/** A target's addresses; none when it has no records. */
async function resolveTarget(lookup: DnsLookup, target: string): Promise<string[]> {
  try {
    return await resolveAddresses(lookup, target, 'A+AAAA');
  } catch (err) {
    if (NO_RECORDS.has(errorCode(err))) return [];
    throw err;
  }
}

function member(host: string, port: number, weight: number): DiscoveredBackend {
  return { address: formatHostPort(host, port), host, port, weight };
}

/** One entry per address (the highest weight wins), sorted by address. */
function normalize(members: readonly DiscoveredBackend[]): DiscoveredBackend[] {
  const byAddress = new Map<string, DiscoveredBackend>();
  for (const m of members) {
    const seen = byAddress.get(m.address);
    if (seen === undefined || m.weight > seen.weight) byAddress.set(m.address, m);
  }
  return [...byAddress.values()].sort((a, b) => (a.address < b.address ? -1 : a.address > b.address ? 1 : 0));
}
