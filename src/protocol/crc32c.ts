/**
 * CRC32c (Castagnoli, reflected polynomial 0x82F63B78) as used by PP2_TYPE_CRC32C (RFC 4960
 * Appendix B). `node:zlib` only offers the IEEE polynomial, so this is a small table-driven
 * implementation; PROXY headers are at most 64 KiB, one table lookup per byte is plenty.
 */

const POLY = 0x82f63b78;

const TABLE: Uint32Array = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** Initial running value for {@link crc32cUpdate}. */
export const CRC32C_INIT = 0xffffffff;

/**
 * Feeds `bytes[start, end)` into a running CRC (start from {@link CRC32C_INIT}, finish with
 * {@link crc32cFinish}). Lets callers checksum a header piecewise, e.g. with a field replaced by
 * zeros, without copying it.
 */
export function crc32cUpdate(crc: number, bytes: Uint8Array, start = 0, end = bytes.length): number {
  let c = crc;
  for (let i = start; i < end; i++) {
    // Indices are in range by construction; `?? 0` only satisfies noUncheckedIndexedAccess.
    c = (TABLE[(c ^ (bytes[i] ?? 0)) & 0xff] ?? 0) ^ (c >>> 8);
  }
  return c >>> 0;
}

/** Feeds `count` zero bytes into a running CRC. */
export function crc32cZeros(crc: number, count: number): number {
  let c = crc;
  for (let i = 0; i < count; i++) c = (TABLE[c & 0xff] ?? 0) ^ (c >>> 8);
  return c >>> 0;
}

/** Final value of a running CRC (an unsigned 32-bit integer). */
export function crc32cFinish(crc: number): number {
  return (crc ^ 0xffffffff) >>> 0;
}

/** CRC32c of a whole byte range, as an unsigned 32-bit integer. */
export function crc32c(bytes: Uint8Array, start = 0, end = bytes.length): number {
  return crc32cFinish(crc32cUpdate(CRC32C_INIT, bytes, start, end));
}
