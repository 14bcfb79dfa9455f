// Certificate renewal under a running docxy (issue 11): the files are replaced, the next TLS
// handshake sees the new certificate, a transfer in progress on an old connection completes,
// and a broken new certificate is refused with the old one kept.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect, type PeerCertificate } from 'node:tls';
import { after, before, test } from 'node:test';
import { startDocxy, type RunningDocxy } from '../helpers/docxy-app.ts';
import { startFakeRegistry, sha256, type FakeRegistry } from '../helpers/fake-registry.ts';

let dir: string;
let registry: FakeRegistry;
let docxy: RunningDocxy;
const pairs: Record<'a' | 'b', { cert: string; key: string; fingerprint: string }> = {} as never;
const certPath = () => join(dir, 'live', 'cert.pem');
const keyPath = () => join(dir, 'live', 'key.pem');

function makePair(name: 'a' | 'b'): void {
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2', '-subj', `/CN=docxy-${name}.test`, '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', key, '-out', cert], { stdio: 'ignore' });
  const fingerprint = execFileSync('openssl', ['x509', '-in', cert, '-noout', '-fingerprint', '-sha256']).toString().trim().split('=')[1]!;
  pairs[name] = { cert, key, fingerprint };
}

/** The certificate a fresh TLS handshake with docxy presents. */
function presented(): Promise<string> {
  const url = new URL(docxy.url);
  return new Promise((resolve, reject) => {
    const socket = connect({ host: url.hostname, port: Number(url.port), rejectUnauthorized: false }, () => {
      const peer: PeerCertificate = socket.getPeerCertificate();
      socket.end();
      resolve(peer.fingerprint256);
    });
    socket.on('error', reject);
  });
}

async function waitForCertificate(fingerprint: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    if ((await presented()) === fingerprint) return;
    await sleep(100);
  }
  assert.equal(await presented(), fingerprint, 'the new certificate was not picked up');
}

const BLOB = Buffer.alloc(2 * 1024 * 1024, 7);
let release: () => void = () => undefined;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'docxy-tls-reload-'));
  execFileSync('mkdir', ['-p', join(dir, 'live')]);
  makePair('a');
  makePair('b');
  copyFileSync(pairs.a.cert, certPath());
  copyFileSync(pairs.a.key, keyPath());
  registry = await startFakeRegistry({ auth: 'none' });
  registry.addImage('library/slow', 'latest', [BLOB]);
  // The blob is sent in two halves: the second once the test says so (after the certificate changed).
  const blobPath = `/v2/library/slow/blobs/${sha256(BLOB)}`;
  registry.intercept = (req, res) => {
    if (req.url !== blobPath || req.method !== 'GET') return false;
    res.writeHead(200, { 'content-length': String(BLOB.length), 'content-type': 'application/octet-stream' });
    res.write(BLOB.subarray(0, BLOB.length / 2));
    release = () => res.end(BLOB.subarray(BLOB.length / 2));
    return true;
  };
  docxy = await startDocxy({ tls: { cert: certPath(), key: keyPath() }, cache: { enabled: false }, upstreams: { 'docker.io': registry.docxyUpstream() } });
});

after(async () => {
  await docxy?.close();
  await registry?.close();
  rmSync(dir, { recursive: true, force: true });
});

test('a renewed certificate is served to new handshakes while a transfer in progress completes', async () => {
  assert.equal(await presented(), pairs.a.fingerprint);
  // A blob download on a connection made with the old certificate, half received.
  const body = new Promise<Buffer>((resolve, reject) => {
    const req = httpsRequest(`${docxy.url}/v2/library/slow/blobs/${sha256(BLOB)}`, { rejectUnauthorized: false, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve(Buffer.concat(chunks)));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
  await sleep(200);
  // What a renewal does: the certificate first, then the key.
  writeFileSync(certPath(), readFileSync(pairs.b.cert));
  writeFileSync(keyPath(), readFileSync(pairs.b.key));
  await waitForCertificate(pairs.b.fingerprint);
  release();
  const received = await body;
  assert.equal(received.length, BLOB.length);
  assert.ok(received.equals(BLOB), 'the transfer begun before the renewal completed intact');
  assert.ok(docxy.logs.some((line) => line.msg === 'TLS certificate reloaded'));
});

test('a broken new certificate is refused with a log line and the current one kept', async () => {
  const current = await presented();
  writeFileSync(certPath(), '-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n');
  const deadline = Date.now() + 10_000;
  while (!docxy.logs.some((line) => line.msg === 'new TLS certificate refused; the current one stays in use') && Date.now() < deadline) await sleep(100);
  assert.ok(docxy.logs.some((line) => line.msg === 'new TLS certificate refused; the current one stays in use'), 'the refusal is logged');
  assert.equal(await presented(), current, 'the certificate in use stays');
  // A key that does not belong to the certificate is refused the same way (SIGHUP path).
  writeFileSync(certPath(), readFileSync(pairs.a.cert));
  assert.equal(docxy.app.reloadTls(), false);
  assert.equal(await presented(), current);
  // Fixed: SIGHUP (reloadTls) installs it.
  writeFileSync(keyPath(), readFileSync(pairs.a.key));
  assert.equal(docxy.app.reloadTls(), true);
  assert.equal(await presented(), pairs.a.fingerprint);
});
