/**
 * Messages between the primary and its workers over the child_process IPC channel (JSON). Both
 * sides parse what they receive from `unknown`: a message of the wrong shape is dropped, never
 * trusted.
 */

import type { PassedSocket } from './socket-activation.js';

/** Open sessions and flows per backend key (`pool/address`). */
export type Counts = [key: string, n: number][];

/** A question the primary asks every worker; the worker answers with a `res` of the same id. */
export type Request =
  | { t: 'req'; id: number; op: 'reload'; text: string }
  | { t: 'req'; id: number; op: 'admin'; pool: string; address: string; verb: 'drain' | 'enable' | 'disable' }
  | { t: 'req'; id: number; op: 'metrics' }
  | { t: 'req'; id: number; op: 'view' };

export type ToWorker =
  /**
   * The config text to run (the primary read and validated it), and the worker's place; the
   * listening sockets systemd passed to the primary, as the worker's descriptors (shared by all).
   */
  | { t: 'start'; text: string; index: number; workers: number; admin: string; passed: PassedSocket[] }
  | Request
  /** Sessions open on the other workers of this host, per backend key (least-connections). */
  | { t: 'siblings'; counts: Counts }
  | { t: 'drain' };

export type FromWorker =
  | { t: 'ready' }
  /** Start-up failed: the one-line cause and the exit code the primary should use. */
  | { t: 'failed'; message: string; code: number }
  | { t: 'res'; id: number; body: unknown }
  | { t: 'counts'; counts: Counts };

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isCounts(v: unknown): v is Counts {
  return (
    Array.isArray(v) &&
    v.every((e) => Array.isArray(e) && e.length === 2 && typeof e[0] === 'string' && typeof e[1] === 'number')
  );
}

const VERBS: ReadonlySet<unknown> = new Set(['drain', 'enable', 'disable']);
const PROTOCOLS: ReadonlySet<unknown> = new Set(['tcp', 'udp', 'other']);

function isPassed(v: unknown): v is PassedSocket[] {
  return (
    Array.isArray(v) &&
    v.every(
      (s) =>
        isRecord(s) &&
        Number.isInteger(s.fd) &&
        PROTOCOLS.has(s.protocol) &&
        typeof s.host === 'string' &&
        typeof s.port === 'number',
    )
  );
}

/** Parses a message received by a worker; undefined when it has the wrong shape. */
export function parseToWorker(m: unknown): ToWorker | undefined {
  if (!isRecord(m)) return undefined;
  switch (m.t) {
    case 'start':
      return typeof m.text === 'string' &&
        typeof m.index === 'number' &&
        typeof m.workers === 'number' &&
        typeof m.admin === 'string' &&
        isPassed(m.passed)
        ? { t: 'start', text: m.text, index: m.index, workers: m.workers, admin: m.admin, passed: m.passed }
        : undefined;
    case 'siblings':
      return isCounts(m.counts) ? { t: 'siblings', counts: m.counts } : undefined;
    case 'drain':
      return { t: 'drain' };
    case 'req':
      return parseRequest(m);
    default:
      return undefined;
  }
}

function parseRequest(m: Record<string, unknown>): Request | undefined {
  const id = m.id;
  if (typeof id !== 'number') return undefined;
  switch (m.op) {
    case 'reload':
      return typeof m.text === 'string' ? { t: 'req', id, op: 'reload', text: m.text } : undefined;
    case 'admin':
      return typeof m.pool === 'string' && typeof m.address === 'string' && VERBS.has(m.verb)
        ? {
            t: 'req',
            id,
            op: 'admin',
            pool: m.pool,
            address: m.address,
            verb: m.verb as 'drain' | 'enable' | 'disable',
          }
        : undefined;
    case 'metrics':
    case 'view':
      return { t: 'req', id, op: m.op };
    default:
      return undefined;
  }
}

/** Parses a message received by the primary; undefined when it has the wrong shape. */
export function parseFromWorker(m: unknown): FromWorker | undefined {
  if (!isRecord(m)) return undefined;
  switch (m.t) {
    case 'ready':
      return { t: 'ready' };
    case 'failed':
      return typeof m.message === 'string' && typeof m.code === 'number'
        ? { t: 'failed', message: m.message, code: m.code }
        : undefined;
    case 'res':
      return typeof m.id === 'number' ? { t: 'res', id: m.id, body: m.body } : undefined;
    case 'counts':
      return isCounts(m.counts) ? { t: 'counts', counts: m.counts } : undefined;
    default:
      return undefined;
  }
}

export { isRecord };

/** A request without its envelope (the sender numbers it). */
export type RequestBody = {
  [K in Request['op']]: Omit<Extract<Request, { op: K }>, 'id' | 't'>;
}[Request['op']];
