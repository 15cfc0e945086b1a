import type { LoadWatcher, Target } from './balancer/picker.js';

/** Why a backend is not taking new sessions; `ready` when it is. */
export type Readiness =
  'ready' | 'unhealthy' | 'ejected' | 'draining' | 'disabled' | 'removed' | 'zero-weight';

/** An operator's word on a backend (admin API, shared between replicas). */
export type AdminState = 'enabled' | 'draining' | 'disabled';

/** Active-health verdict. `unknown` until the first check completes. */
export type HealthVerdict = 'unknown' | 'up' | 'down';

/**
 * One upstream of a pool, identified by its `host:port` address. Its health has sources kept
 * apart (active checks, passive ejection, admin state, discovery), and `readiness` combines them.
 * Sessions keep a reference to their Backend for life, so a backend removed from the config or
 * from discovery lives on (as `removed`) until its last session ends.
 */
export class Backend implements Target {
  readonly pool: string;
  readonly address: string;
  readonly host: string;
  readonly port: number;
  /** `pool/address`, the key of this backend in the state store. */
  readonly key: string;

  /** Weight from config or discovery. */
  configWeight: number;
  /** Weight after slow start; what pickers see. */
  weight: number;
  /** Active-health verdict (own prober or the elected one's). */
  health: HealthVerdict;
  /** True while an active check is configured; with none, `health` is ignored. */
  checked = false;
  admin: AdminState = 'enabled';
  /** Passive ejection end on the Clock's timeline; 0 when not ejected. */
  ejectedUntil = 0;
  /** Gone from config and discovery; kept only while sessions remain. */
  removed = false;
  /** Clock time at which this backend last became ready (slow start ramps from it). */
  readySince = 0;
  /** Has been ready at least once: only such a backend takes sessions in a pool's panic mode. */
  wasReady = false;

  /**
   * Under a cluster-scoped `max_connections_per_backend`: the most sessions this process may hold
   * on the backend now, set by the state sync (its grant, or its local share while the store is
   * out); 0 until the first grant.
   */
  clusterCap = 0;
  /** Sessions and flows placed on this backend since start (the state sync sizes its holds on it). */
  placed = 0;

  /** Told of every change of `load` (the pool's least-connections picker; see Target). */
  loadWatcher: LoadWatcher | undefined;
  #local = 0;
  #remote = 0;
  #siblings = 0;

  constructor(
    pool: string,
    address: string,
    host: string,
    port: number,
    weight: number,
    health: HealthVerdict,
  ) {
    this.pool = pool;
    this.address = address;
    this.host = host;
    this.port = port;
    this.key = `${pool}/${address}`;
    this.configWeight = weight;
    this.weight = weight;
    this.health = health;
  }

  /** Sessions and flows open on this process. */
  get local(): number {
    return this.#local;
  }

  set local(n: number) {
    if (n === this.#local) return;
    this.#local = n;
    this.loadWatcher?.loadChanged(this);
  }

  /** Sessions and flows open on other replicas, as last read from the state store. */
  get remote(): number {
    return this.#remote;
  }

  set remote(n: number) {
    if (n === this.#remote) return;
    this.#remote = n;
    this.loadWatcher?.loadChanged(this);
  }

  /**
   * Sessions and flows open on the other worker processes of this host, pushed by the primary
   * about every 250 ms (0 with one worker). Kept apart from `remote`, which the store sync owns.
   */
  get siblings(): number {
    return this.#siblings;
  }

  set siblings(n: number) {
    if (n === this.#siblings) return;
    this.#siblings = n;
    this.loadWatcher?.loadChanged(this);
  }

  get load(): number {
    return this.#local + this.#siblings + this.#remote;
  }

  readiness(now: number): Readiness {
    if (this.removed) return 'removed';
    if (this.admin === 'disabled') return 'disabled';
    if (this.admin === 'draining') return 'draining';
    if (this.checked && this.health !== 'up') return 'unhealthy';
    if (this.ejectedUntil > now) return 'ejected';
    if (this.configWeight <= 0) return 'zero-weight';
    return 'ready';
  }

  /** The SPEC's state word: up, down, draining or disabled. */
  state(now: number): 'up' | 'down' | 'draining' | 'disabled' {
    const r = this.readiness(now);
    if (r === 'ready' || r === 'zero-weight') return 'up';
    if (r === 'draining' || r === 'removed') return 'draining';
    if (r === 'disabled') return 'disabled';
    return 'down';
  }
}
