import type { ListenerConfig } from '../config/schema.js';
import { formatHostPort } from '../config/values.js';
import type { Listener } from '../listener/listener.js';
import type { Logger } from '../telemetry/logger.js';

/** A listener's socket identity: a change of either means a new socket. */
function socketKey(l: ListenerConfig): string {
  return `${l.protocol}/${formatHostPort(l.bind.host, l.bind.port)}`;
}

/** What changed in a reload, for the log line. */
export interface ListenerPlan {
  kept: string[];
  added: string[];
  rebound: string[];
  removed: string[];
}

/**
 * The listeners of the running config. A reload keeps the socket of every listener whose name,
 * protocol and bind address are unchanged (no refused connection), binds new sockets before
 * closing old ones, and retires removed listeners: they stop accepting while their open
 * sessions run to their end.
 */
export class ListenerSet {
  readonly #make: (cfg: ListenerConfig) => Listener;
  readonly #logger: Logger;
  readonly #active = new Map<string, Listener>();
  readonly #retired = new Set<Listener>();

  constructor(make: (cfg: ListenerConfig) => Listener, logger: Logger) {
    this.#make = make;
    this.#logger = logger;
  }

  get(name: string): Listener | undefined {
    return this.#active.get(name);
  }

  /** Active listeners. */
  values(): IterableIterator<Listener> {
    return this.#active.values();
  }

  /** Active and retired listeners (retired ones still hold sessions). */
  all(): Listener[] {
    this.#prune();
    return [...this.#active.values(), ...this.#retired];
  }

  /** Open sessions and flows over every listener, retired ones included. */
  openCount(): number {
    return this.all().reduce((n, l) => n + l.openCount, 0);
  }

  /**
   * Brings the set to `configs`. A listener whose name, protocol and bind are unchanged keeps its
   * socket. New addresses are bound before anything is closed; if one fails, the new sockets are
   * closed again and the error is thrown with the running set untouched. Renaming a listener or
   * changing its protocol on the same address has to close the old socket first: a gap of a few
   * milliseconds in which connections are refused.
   */
  async apply(configs: readonly ListenerConfig[]): Promise<ListenerPlan> {
    const plan: ListenerPlan = { kept: [], added: [], rebound: [], removed: [] };
    const kept = new Map<string, Listener>();
    const fresh = new Map<string, Listener>();
    for (const cfg of configs) {
      const cur = this.#active.get(cfg.name);
      if (cur !== undefined && socketKey(cur.config) === socketKey(cfg)) kept.set(cfg.name, cur);
      else fresh.set(cfg.name, this.#make(cfg));
    }
    const owned = new Set(
      [...this.#active.values()]
        .filter((l) => ![...kept.values()].includes(l))
        .map((l) => socketKey(l.config)),
    );
    const late: Listener[] = [];
    try {
      for (const l of fresh.values()) {
        if (owned.has(socketKey(l.config)) && l.config.bind.port !== 0) late.push(l);
        else await l.listen();
      }
    } catch (err) {
      for (const l of fresh.values()) if (l.boundAddress !== '') await l.close();
      throw err;
    }
    for (const [name, l] of kept) {
      const cfg = configs.find((c) => c.name === name);
      if (cfg !== undefined) l.update(cfg);
      plan.kept.push(name);
    }
    for (const l of this.#active.values()) {
      if ([...kept.values()].includes(l)) continue;
      await l.close();
      this.#retired.add(l);
      if (!fresh.has(l.name)) plan.removed.push(l.name);
    }
    for (const l of late) await l.listen().catch((err: unknown) => this.#bindLate(l.name, err));
    for (const name of fresh.keys()) (this.#active.has(name) ? plan.rebound : plan.added).push(name);
    this.#active.clear();
    for (const cfg of configs) {
      const l = kept.get(cfg.name) ?? fresh.get(cfg.name);
      if (l !== undefined) this.#active.set(cfg.name, l);
    }
    this.#prune();
    return plan;
  }

  /** Stops accepting on every listener. */
  async closeAll(): Promise<void> {
    for (const l of this.#active.values()) await l.close();
  }

  /** Ends every open session and flow (drain deadline). */
  endAll(): void {
    for (const l of this.all()) l.closeAll('shutdown');
  }

  #bindLate(name: string, err: unknown): void {
    this.#logger.error(
      { listener: name, err: err instanceof Error ? err.message : String(err) },
      'listener could not be bound',
    );
  }

  #prune(): void {
    for (const l of this.#retired) if (l.openCount === 0) this.#retired.delete(l);
  }
}
