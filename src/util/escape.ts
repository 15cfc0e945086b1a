/**
 * Escaping for values that come from the network (SNI, PROXY TLVs, v1 lines) before they reach a
 * log line: one line, printable ASCII only, bounded length (log injection, CVE-2024-45808).
 */

const MARKER = '…';

/** Printable ASCII except `"` and `\`, which would confuse readers of quoted or escaped output. */
function isPlain(b: number): boolean {
  return b >= 0x20 && b <= 0x7e && b !== 0x22 && b !== 0x5c;
}

/**
 * Returns `value` as a single printable-ASCII line: bytes 0x20–0x7E are kept, except `"` and `\`;
 * every other byte (CR, LF, ESC, NUL, DEL, non-ASCII) becomes `\xHH` (lower-case hex). Strings are
 * escaped as their UTF-8 bytes, so non-ASCII text shows as its byte sequence.
 *
 * The result is at most `maxLen` characters (at least 1 is allowed). When the input does not fit,
 * the output is cut before the escape sequence that would overflow (never inside one) and ends
 * with `…`. Work is bounded by `maxLen`, not by the size of the input.
 */
export function escapeForLog(value: string | Buffer, maxLen = 256): string {
  const limit = Math.max(1, Math.floor(maxLen));
  // Every input unit yields at least one output character, so limit + 1 units are enough to know
  // whether the output overflows; the rest is never looked at.
  const bytes =
    typeof value === 'string' ? Buffer.from(value.slice(0, limit + 1), 'utf8') : value.subarray(0, limit + 1);
  let out = '';
  let cut = 0; // length of `out` at the last piece boundary that still leaves room for the marker
  for (const b of bytes) {
    const piece = isPlain(b) ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, '0')}`;
    if (out.length + piece.length > limit) return out.slice(0, cut) + MARKER;
    out += piece;
    if (out.length <= limit - MARKER.length) cut = out.length;
  }
  return out;
}
