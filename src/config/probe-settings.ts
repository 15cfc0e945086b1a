import type { ActiveHealthConfig } from './schema.js';
import type { Parsed } from './values.js';

/*
 * The value syntax of an active health check's settings (`send`, `expect`, `path`, `host`),
 * compiled once: the probes use the results, and validation reports what does not compile with
 * the key's path, before anything starts.
 */

const SIMPLE_ESCAPES: Readonly<Partial<Record<string, number>>> = { r: 0x0d, n: 0x0a, t: 0x09, '\\': 0x5c };

/**
 * Decodes the config's byte-string syntax: `\r \n \t \\ \xHH`; other characters are UTF-8.
 * An unknown escape or a `\x` without two hex digits is an error, not a guess.
 */
export function decodeEscapes(text: string): Parsed<Buffer> {
  const parts: Buffer[] = [];
  let from = 0;
  for (let i = text.indexOf('\\'); i >= 0; i = text.indexOf('\\', from)) {
    parts.push(Buffer.from(text.slice(from, i), 'utf8'));
    const next = text[i + 1];
    if (next === 'x') {
      const hex = text.slice(i + 2, i + 4);
      if (!/^[0-9a-fA-F]{2}$/.test(hex))
        return { ok: false, error: `\\x at offset ${i} needs two hex digits` };
      parts.push(Buffer.of(Number.parseInt(hex, 16)));
      from = i + 4;
    } else {
      const byte = next === undefined ? undefined : SIMPLE_ESCAPES[next];
      if (byte === undefined)
        return { ok: false, error: `unknown escape at offset ${i} (use \\r \\n \\t \\\\ \\xHH)` };
      parts.push(Buffer.of(byte));
      from = i + 2;
    }
  }
  parts.push(Buffer.from(text.slice(from), 'utf8'));
  return { ok: true, value: Buffer.concat(parts) };
}

/** Decides whether the reply received so far is the expected one. */
export type Matcher = (reply: Buffer) => boolean;

const REGEX_RE = /^\/(.+)\/([dgimsuvy]*)$/s;

/**
 * Compiles an `expect` string: `/.../flags` is a regular expression tested against the reply as
 * latin1 (one character per byte, so `\xHH` in the regex matches byte HH); anything else is a
 * substring in the escape syntax of {@link decodeEscapes} (so `/usr/bin`, whose tail is not
 * regex flags, is a substring). Absent: every non-empty reply matches. The `g` and `y` flags are
 * refused because they make `test` stateful.
 */
export function compileExpect(expect: string | undefined): Parsed<Matcher> {
  if (expect === undefined) return { ok: true, value: (reply) => reply.length > 0 };
  const m = REGEX_RE.exec(expect);
  if (m) {
    if (/[gy]/.test(m[2] ?? ''))
      return { ok: false, error: `the g and y flags are not allowed in ${expect}` };
    try {
      const re = new RegExp(m[1] ?? '', m[2]);
      return { ok: true, value: (reply) => re.test(reply.toString('latin1')) };
    } catch {
      return { ok: false, error: `invalid regular expression ${expect}` };
    }
  }
  const needle = decodeEscapes(expect);
  if (!needle.ok) return needle;
  const bytes = needle.value;
  return { ok: true, value: (reply) => reply.includes(bytes) };
}

const VISIBLE_ASCII_RE = /^[\x21-\x7e]+$/;

/** `path` and `host` go into an HTTP request head: no spaces or control bytes, or they could forge headers. */
export function checkHttpHead(path: string, host: string | undefined): Parsed<undefined> {
  if (!VISIBLE_ASCII_RE.test(path)) return { ok: false, error: 'path must be visible ASCII without spaces' };
  if (host !== undefined && !VISIBLE_ASCII_RE.test(host))
    return { ok: false, error: 'host must be visible ASCII' };
  return { ok: true, value: undefined };
}

/** The first problem of an active check's settings, or undefined when they all compile. */
export function probeSettingsProblem(cfg: ActiveHealthConfig): string | undefined {
  if (cfg.type === 'http') {
    const head = checkHttpHead(cfg.path, cfg.host);
    return head.ok ? undefined : head.error;
  }
  if (cfg.type !== 'send-expect' && cfg.type !== 'udp') return undefined;
  const send = decodeEscapes(cfg.send ?? '');
  if (!send.ok) return `send: ${send.error}`;
  const match = compileExpect(cfg.expect);
  return match.ok ? undefined : `expect: ${match.error}`;
}
