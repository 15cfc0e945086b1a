import { readFileSync } from 'node:fs';
import { UserError } from './index.js';

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

function isPools(v: unknown): v is { pools: { name: string; algorithm: string; backends: BackendRow[] }[] } {
  return typeof v === 'object' && v !== null && Array.isArray((v as { pools?: unknown }).pools);
}

const COLORS: Record<string, string> = {
  up: '\x1b[32m',
  down: '\x1b[31m',
  draining: '\x1b[33m',
  disabled: '\x1b[90m',
};

/** Prints GET /api/v1/pools as a table (colour only on a TTY), or as JSON. */
export function printStatus(body: unknown, json: boolean): void {
  if (json || !isPools(body)) {
    process.stdout.write(`${JSON.stringify(body, null, 2)}\n`);
    return;
  }
  const tty = process.stdout.isTTY;
  const rows: string[][] = [
    ['POOL', 'ALGORITHM', 'BACKEND', 'STATE', 'WEIGHT', 'HEALTH', 'LOCAL', 'CLUSTER'],
  ];
  for (const p of body.pools)
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
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  for (const r of rows) {
    const line = r
      .map((cell, i) => {
        const padded = cell.padEnd(widths[i] ?? 0);
        const color = i === 3 && tty ? COLORS[cell] : undefined;
        return color !== undefined ? `${color}${padded}\x1b[0m` : padded;
      })
      .join('  ');
    process.stdout.write(`${line.trimEnd()}\n`);
  }
}
