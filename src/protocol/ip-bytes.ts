/** IP addresses between text and bytes (the PROXY parser and encoder share them). */
const V4_OCTET = /^(?:0|[1-9][0-9]{0,2})$/;
const V6_GROUP = /^[0-9a-fA-F]{1,4}$/;

/** Strict dotted quad (no leading zeros, no shorthand) to 4 bytes, or undefined. */
export function ipv4Bytes(text: string): Buffer | undefined {
  const parts = text.split('.');
  if (parts.length !== 4) return undefined;
  const out = Buffer.alloc(4);
  for (let i = 0; i < 4; i++) {
    const part = parts[i] ?? '';
    const value = Number(part);
    if (!V4_OCTET.test(part) || value > 255) return undefined;
    out[i] = value;
  }
  return out;
}

function v6Groups(text: string): number[] | undefined {
  if (text === '') return [];
  const groups: number[] = [];
  for (const g of text.split(':')) {
    if (!V6_GROUP.test(g)) return undefined;
    groups.push(parseInt(g, 16));
  }
  return groups;
}

/**
 * IPv6 text to 16 bytes, or undefined: hex groups of 1–4 digits, at most one "::", an optional
 * trailing dotted quad (inet_pton accepts "::ffff:1.2.3.4"), no zone id, exactly 128 bits.
 */
export function ipv6Bytes(text: string): Buffer | undefined {
  if (text.length < 2 || text.length > 45) return undefined;
  let body = text;
  const lastColon = text.lastIndexOf(':');
  if (lastColon < 0) return undefined;
  if (text.includes('.', lastColon)) {
    const v4 = ipv4Bytes(text.slice(lastColon + 1));
    if (!v4) return undefined;
    body = `${text.slice(0, lastColon + 1)}${v4.readUInt16BE(0).toString(16)}:${v4.readUInt16BE(2).toString(16)}`;
  }
  const halves = body.split('::');
  if (halves.length > 2) return undefined;
  const head = v6Groups(halves[0] ?? '');
  const tail = halves.length === 2 ? v6Groups(halves[1] ?? '') : [];
  if (!head || !tail) return undefined;
  const count = head.length + tail.length;
  if (halves.length === 1 ? count !== 8 : count > 7) return undefined;
  const out = Buffer.alloc(16);
  head.forEach((g, i) => out.writeUInt16BE(g, i * 2));
  tail.forEach((g, i) => out.writeUInt16BE(g, 16 - (tail.length - i) * 2));
  return out;
}

/** Dotted quad of the 4 bytes at `offset`. */
export function formatIpv4(bytes: Buffer, offset: number): string {
  return `${bytes[offset] ?? 0}.${bytes[offset + 1] ?? 0}.${bytes[offset + 2] ?? 0}.${bytes[offset + 3] ?? 0}`;
}

/**
 * RFC 5952 text of the 16 bytes at `offset`: lower case, no leading zeros, the longest run of two
 * or more zero groups (the first on a tie) shortened to "::". With `mixed`, IPv4-mapped addresses
 * are written "::ffff:a.b.c.d" like Node's socket addresses; without it, as hex groups (for v1
 * lines, whose grammar has no dotted form).
 */
export function formatIpv6(bytes: Buffer, offset: number, mixed: boolean): string {
  const groups: number[] = [];
  for (let i = 0; i < 8; i++) groups.push(bytes.readUInt16BE(offset + i * 2));
  if (mixed && groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
    return `::ffff:${formatIpv4(bytes, offset + 12)}`;
  }
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) [bestStart, bestLen] = [i, j - i];
    i = j === i ? i + 1 : j;
  }
  const hex = (gs: number[]): string => gs.map((g) => g.toString(16)).join(':');
  if (bestStart < 0) return hex(groups);
  return `${hex(groups.slice(0, bestStart))}::${hex(groups.slice(bestStart + bestLen))}`;
}
