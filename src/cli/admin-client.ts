import { readFileSync } from 'node:fs';
import { UserError } from '../util/exit.js';

/** Calls the admin API; a user error (one line) when it is unreachable or answers an error. */
export async function adminCall(
  base: string,
  method: 'GET' | 'POST',
  path: string,
  tokenFile?: string,
): Promise<unknown> {
  const headers: Record<string, string> = {};
  if (tokenFile !== undefined) {
    try {
      headers.authorization = `Bearer ${readFileSync(tokenFile, 'utf8').trim()}`;
    } catch (err) {
      throw new UserError(
        `cannot read token file ${tokenFile} (${(err as NodeJS.ErrnoException).code ?? 'EIO'})`,
      );
    }
  }
  let res: Response;
  try {
    res = await fetch(new URL(path, base), { method, headers, signal: AbortSignal.timeout(5000) });
  } catch (err) {
    const cause =
      (err as { cause?: { code?: string } }).cause?.code ?? (err instanceof Error ? err.name : 'error');
    throw new UserError(
      `admin API at ${base} is unreachable (${cause}); is sluice running, and is --admin right?`,
    );
  }
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: keep the text
  }
  if (!res.ok) {
    const msg =
      typeof body === 'object' && body !== null && 'error' in body ? String(body.error) : text.trim();
    throw new UserError(`${method} ${path}: ${res.status} ${msg}`);
  }
  return body;
}

interface BackendRow {
  address: string;
  state: string;
  weight: number;
  health: { readiness: string };
  connections: { local: number; cluster: number };
}

interface ListenerRow {
  name: string;
  protocol: string;
  bind: string;
  pool: string;
  open: number;
}

function isListeners(v: unknown): v is { listeners: ListenerRow[] } {
  return typeof v === 'object' && v !== null && Array.isArray((v as { listeners?: unknown }).listeners);
}

function isPools(v: unknown): v is { pools: { name: string; algorithm: string; backends: BackendRow[] }[] } {
  return typeof v === 'object' && v !== null && Array.isArray((v as { pools?: unknown }).pools);
}

const COLORS: Record<string, string> = {
  up: '\x1b[32m',
  down: '\x1b[31m',
  draining: '\x1b[33m',
  disabled: '\x1b[90m',
};

/** Prints the listeners and GET /api/v1/pools as tables (colour only on a TTY), or as JSON. */
export function printStatus(listeners: unknown, pools: unknown, json: boolean): void {
  if (json || !isPools(pools) || !isListeners(listeners)) {
    const l = isListeners(listeners) ? listeners.listeners : listeners;
    const p = isPools(pools) ? pools.pools : pools;
    process.stdout.write(`${JSON.stringify({ listeners: l, pools: p }, null, 2)}\n`);
    return;
  }
  printTable(
    [
      ['LISTENER', 'PROTOCOL', 'BIND', 'POOL', 'OPEN'],
      ...listeners.listeners.map((l) => [l.name, l.protocol, l.bind, l.pool, String(l.open)]),
    ],
    -1,
  );
  process.stdout.write('\n');
  const rows: string[][] = [
    ['POOL', 'ALGORITHM', 'BACKEND', 'STATE', 'WEIGHT', 'HEALTH', 'LOCAL', 'CLUSTER'],
  ];
  for (const p of pools.pools)
    for (const b of p.backends)
      rows.push([
        p.name,
        p.algorithm,
        b.address,
        b.state,
        String(b.weight),
        b.health.readiness,
        String(b.connections.local),
        String(b.connections.cluster),
      ]);
  printTable(rows, 3);
}

/** Prints aligned columns; the `stateColumn` cells are coloured by state on a TTY. */
function printTable(rows: readonly string[][], stateColumn: number): void {
  const tty = process.stdout.isTTY;
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  for (const r of rows) {
    const line = r
      .map((cell, i) => {
        const padded = cell.padEnd(widths[i] ?? 0);
        const color = i === stateColumn && tty ? COLORS[cell] : undefined;
        return color !== undefined ? `${color}${padded}\x1b[0m` : padded;
      })
      .join('  ');
    process.stdout.write(`${line.trimEnd()}\n`);
  }
}
