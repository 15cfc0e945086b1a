import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TestCert {
  readonly key: Buffer;
  readonly cert: Buffer;
}

/** A self-signed certificate for `names`, made with the openssl CLI (fails clearly without it). */
export function makeCert(names: readonly string[]): TestCert {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-cert-'));
  const cfg = join(dir, 'openssl.cnf');
  writeFileSync(
    cfg,
    `[req]\ndistinguished_name=dn\nx509_extensions=ext\nprompt=no\n[dn]\nCN=${names[0] ?? 'localhost'}\n[ext]\nsubjectAltName=${names.map((n) => `DNS:${n}`).join(',')}\n`,
  );
  try {
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:P-256',
        '-nodes',
        '-days',
        '2',
        '-keyout',
        join(dir, 'key.pem'),
        '-out',
        join(dir, 'cert.pem'),
        '-config',
        cfg,
      ],
      { stdio: 'pipe' },
    );
  } catch (err) {
    throw new Error(`openssl is needed to make test certificates (apt-get install openssl): ${String(err)}`, {
      cause: err,
    });
  }
  return { key: readFileSync(join(dir, 'key.pem')), cert: readFileSync(join(dir, 'cert.pem')) };
}
