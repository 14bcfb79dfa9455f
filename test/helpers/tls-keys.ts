import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** The three PEM private-key encodings an operator is likely to hand docxy. */
export type KeyFormat = 'sec1-ec' | 'pkcs1-rsa' | 'pkcs8';

export const PEM_HEADERS: Record<KeyFormat, string> = {
  'sec1-ec': '-----BEGIN EC PRIVATE KEY-----',
  'pkcs1-rsa': '-----BEGIN RSA PRIVATE KEY-----',
  pkcs8: '-----BEGIN PRIVATE KEY-----',
};

export interface KeyPair {
  format: KeyFormat;
  keyPath: string;
  certPath: string;
  /** The certificate's PEM, for a client's `ca`. */
  cert: Buffer;
}

export interface TlsFixtures {
  dir: string;
  pairs: Record<KeyFormat, KeyPair>;
  remove(): void;
}

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

/**
 * Generates, with the openssl CLI, one self-signed certificate for 127.0.0.1/localhost per key
 * format, in a fresh temporary directory.
 */
export function generateTlsFixtures(): TlsFixtures {
  const dir = mkdtempSync(join(tmpdir(), 'docxy-tls-'));
  openssl(['ecparam', '-genkey', '-name', 'prime256v1', '-noout', '-out', 'ec-sec1.key'], dir);
  openssl(['genrsa', '-traditional', '-out', 'rsa-pkcs1.key', '2048'], dir);
  openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', 'pkcs8.key'], dir);
  const files: Record<KeyFormat, string> = { 'sec1-ec': 'ec-sec1', 'pkcs1-rsa': 'rsa-pkcs1', pkcs8: 'pkcs8' };
  const pairs = {} as Record<KeyFormat, KeyPair>;
  for (const [format, base] of Object.entries(files) as Array<[KeyFormat, string]>) {
    openssl(
      [
        'req', '-x509', '-new', '-key', `${base}.key`, '-out', `${base}.crt`, '-days', '2',
        '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost',
      ],
      dir,
    );
    const certPath = join(dir, `${base}.crt`);
    pairs[format] = { format, keyPath: join(dir, `${base}.key`), certPath, cert: readFileSync(certPath) };
  }
  return { dir, pairs, remove: () => rmSync(dir, { recursive: true, force: true }) };
}
