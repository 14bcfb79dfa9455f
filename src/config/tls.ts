import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { ConfigProblem, TlsConfig } from './types.ts';

/**
 * Reads the HTTPS listener's PEM certificate chain and private key (PKCS#8, RSA PKCS#1 or EC
 * SEC1) and checks that the key belongs to the certificate, so that a wrong pair is a config
 * problem at startup rather than a failed handshake later. Problems are added to `problems`
 * (under `tls.cert` / `tls.key`), and then nothing is returned.
 */
export function loadTls(certPath: string, keyPath: string, problems: ConfigProblem[]): TlsConfig | undefined {
  let cert: Buffer | undefined;
  let key: Buffer | undefined;
  try {
    const data = readFileSync(certPath);
    new X509Certificate(data);
    cert = data;
  } catch (error) {
    problems.push({ path: 'tls.cert', message: `cannot load PEM certificate ${certPath}: ${(error as Error).message}` });
  }
  try {
    const data = readFileSync(keyPath);
    createPrivateKey(data);
    key = data;
  } catch (error) {
    problems.push({
      path: 'tls.key',
      message: `cannot load PEM private key ${keyPath} (PKCS#8, RSA PKCS#1 or EC SEC1): ${(error as Error).message}`,
    });
  }
  if (!cert || !key) return undefined;
  try {
    if (!new X509Certificate(cert).checkPrivateKey(createPrivateKey(key))) {
      problems.push({ path: 'tls.key', message: `the private key ${keyPath} does not belong to the certificate ${certPath}` });
      return undefined;
    }
  } catch (error) {
    problems.push({ path: 'tls.key', message: `the private key ${keyPath} does not fit the certificate ${certPath}: ${(error as Error).message}` });
    return undefined;
  }
  return { certPath, keyPath, cert, key };
}
