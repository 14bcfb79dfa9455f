import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { startDocxy, type RunningDocxy } from '../helpers/docxy-app.ts';
import { sendBytes, sha256, startFakeRegistry, type FakeImage, type FakeRegistry } from '../helpers/fake-registry.ts';
import { http, jsonBody, tokenFor, type HttpResult } from '../helpers/http-client.ts';
import { startQuotaRegistry, type QuotaRegistry } from '../helpers/quota-registry.ts';

// README "Pull limits": a Docker-Hub-like upstream with a per-identity pull quota, docxy's pool of
// identities in front of it, and fallback mirrors for when it refuses or is down.

const ACCEPT = 'application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json';
type Errors = { errors: Array<{ code: string; message: string; detail?: Record<string, unknown> }> };
type Manifest = { config: { digest: string }; layers: Array<{ digest: string }> };

/** A client's pull through docxy: a token, the manifest, then every blob, each checked against its digest. */
async function pull(base: string, repository: string, reference: string): Promise<HttpResult> {
  const token = await tokenFor(base, repository);
  const auth = { authorization: `Bearer ${token}` };
  const manifest = await http(`${base}/v2/${repository}/manifests/${reference}`, { headers: { ...auth, accept: ACCEPT } });
  if (manifest.status !== 200) return manifest;
  if (reference.includes(':')) assert.equal(sha256(manifest.body), reference);
  const { config, layers } = jsonBody<Manifest>(manifest);
  for (const { digest } of [config, ...layers]) {
    const blob = await http(`${base}/v2/${repository}/blobs/${digest}`, { headers: auth });
    assert.equal(blob.status, 200, `blob ${digest}: ${blob.body.toString()}`);
    assert.equal(sha256(blob.body), digest);
  }
  return manifest;
}

describe('a pool of identities in front of a per-identity pull quota', () => {
  const LIMIT = 5;
  // Everything up to the window's end must fit in it (2.5 s on a CI machine, 4 s was the window): 10 s.
  const WINDOW_MS = 10_000;
  let hub: QuotaRegistry;
  let docxy: RunningDocxy;

  before(async () => {
    hub = await startQuotaRegistry({ users: { ann: 'pw-ann', bob: 'pw-bob', cid: 'pw-cid' }, limit: LIMIT, windowMs: WINDOW_MS });
    for (let i = 0; i <= 20; i++) hub.addImage(`library/img-${i}`, '1', [Buffer.from(`layer of image ${i}`)]);
    docxy = await startDocxy(
      {
        upstreams: {
          'docker.io': hub.docxyUpstream({
            username: 'ann',
            password: 'pw-ann',
            credentials: [{ username: 'bob', passwordEnv: 'BOB_PASSWORD' }, { username: 'cid', password: 'pw-cid' }],
            // Every repeated pull of a tag is revalidated with a HEAD.
            tagTtlSeconds: 0,
            manifestRequestsPerSecond: 200,
            manifestBurst: 200,
          }),
        },
      },
      { BOB_PASSWORD: 'pw-bob' },
    );
  });
  after(async () => {
    await docxy?.close();
    await hub?.close();
  });

  test('20 cold pulls on 3 logins + anonymous, 5 each: no 429 reaches a client; the 21st is a clear 429; HEADs spend nothing; pulls resume after the window', async () => {
    const started = Date.now();
    let served = 0;
    let inFirstWindow = 0;
    const count = (result: HttpResult) => {
      assert.equal(result.status, 200, result.body.toString());
      served++;
      if (Date.now() - started < WINDOW_MS) inFirstWindow++;
    };
    for (let i = 0; i < 20; i++) count(await pull(docxy.url, `library/img-${i}`, '1'));
    assert.equal(hub.refused, 0, 'the upstream never had to refuse docxy');
    assert.deepEqual(Object.fromEntries(hub.pulls), { ann: LIMIT, bob: LIMIT, cid: LIMIT, anonymous: LIMIT });

    // The 21st: every identity used up, nothing cached. docxy says so itself, without asking.
    const countedBefore = hub.counted;
    const refused = await pull(docxy.url, 'library/img-20', '1');
    assert.equal(refused.status, 429);
    assert.ok(Number(refused.headers['retry-after']) >= 1, `Retry-After: ${refused.headers['retry-after']}`);
    const [error] = jsonBody<Errors>(refused).errors;
    assert.equal(error?.code, 'TOOMANYREQUESTS');
    assert.match(error?.message ?? '', /docker\.io's pull rate limit is used up for all 4 identities docxy may pull as \(5 pulls per 10 s each.*resets at \d{4}-/);
    assert.equal(hub.counted, countedBefore);
    assert.equal(hub.refused, 0);
    assert.doesNotMatch(docxy.rawLogs(), /pw-ann|pw-bob|pw-cid/, 'no password in any log line');

    // Repeated pulls are revalidated with HEADs, which cost no quota, and served from the cache.
    const headsBefore = hub.heads;
    for (let i = 0; i < 20; i++) count(await pull(docxy.url, `library/img-${i}`, '1'));
    assert.ok(hub.heads >= headsBefore + 20, `HEAD revalidations: ${hub.heads - headsBefore}`);
    assert.equal(hub.counted, countedBefore, 'HEAD revalidations never spend quota');

    // /ready shows each identity's standing (never a username).
    const ready = jsonBody<{ pullLimits: Record<string, { identities: Array<{ identity: string; state: string; remaining?: number }> }> }>(await http(`${docxy.url}/ready`));
    const identities = ready.pullLimits['docker.io']?.identities ?? [];
    assert.deepEqual(identities.map((i) => i.identity), ['login 1', 'login 2', 'login 3', 'anonymous']);
    assert.ok(identities.every((i) => i.state === 'exhausted' && i.remaining === 0), JSON.stringify(identities));

    // `docxy quota` prints the same from the running docxy, as text or JSON.
    const quota = (...args: string[]) =>
      promisify(execFile)(process.execPath, [fileURLToPath(new URL('../../bin/docxy.js', import.meta.url)), 'quota', '--url', docxy.url, ...args], { timeout: 30_000 });
    const text = (await quota()).stdout;
    assert.match(text, /^docker\.io {2}\(manifest pacing 200\/s, 0 waiting\)\n {2}login 1 +exhausted +0\/5 left per 10 s {2}until \d{4}-/, text);
    assert.match(text, /\n {2}anonymous +exhausted +0\/5 left/);
    const json = JSON.parse((await quota('--json')).stdout) as Record<string, { identities: unknown[] }>;
    assert.equal(json['docker.io']?.identities.length, 4);

    // Once the window is over (docxy reckons it from the last answer it saw), pulls resume.
    await sleep(WINDOW_MS + 300);
    count(await pull(docxy.url, 'library/img-20', '1'));
    assert.equal(hub.refused, 0);

    const wouldRefuse = Math.max(0, inFirstWindow - LIMIT);
    process.stdout.write(
      `# pull limits: docxy served ${served} pulls and the upstream refused none of them; pulled straight from it ` +
        `(anonymous, one address, ${LIMIT} per window) it would have refused ${wouldRefuse} of them (${Math.round((wouldRefuse / served) * 100)}%)\n`,
    );
    assert.ok(wouldRefuse >= served / 4);
  });
});

describe('a pool with a login its token service refuses', () => {
  let hub: FakeRegistry;
  let docxy: RunningDocxy;

  before(async () => {
    hub = await startFakeRegistry({ users: { ann: 'pw-ann', bob: 'pw-bob' } });
    hub.addImage('library/pooled', '1', [Buffer.from('pooled layer')]);
    docxy = await startDocxy({ upstreams: { 'docker.io': hub.docxyUpstream({ username: 'ann', password: 'revoked', credentials: [{ username: 'bob', password: 'pw-bob' }] }) } });
  });
  after(async () => {
    await docxy?.close();
    await hub?.close();
  });

  test('the next login pulls, with a warning naming the refused one by its place, not its name', async () => {
    const result = await pull(docxy.url, 'library/pooled', '1');
    assert.equal(result.status, 200, result.body.toString());
    const warning = docxy.logs.find((line) => line.msg === 'a login of the pool was refused by its token service');
    assert.equal(warning?.identity, 'login 1');
    assert.doesNotMatch(docxy.rawLogs(), /revoked|pw-bob/);
    // As bob: the fake's token service records who asked.
    assert.ok(hub.seen.some((r) => r.server === 'token' && r.headers.authorization?.[0] === `Basic ${Buffer.from('bob:pw-bob').toString('base64')}`));
  });
});

describe('manifest pacing', () => {
  let hub: FakeRegistry;
  let docxy: RunningDocxy;

  before(async () => {
    hub = await startFakeRegistry();
    for (let i = 0; i < 6; i++) hub.addImage(`library/paced-${i}`, '1', [Buffer.from(`paced ${i}`)]);
    docxy = await startDocxy({ cache: { enabled: false }, upstreams: { 'docker.io': hub.docxyUpstream({ manifestRequestsPerSecond: 2, manifestBurst: 1, manifestQueueLimit: 2 }) } });
  });
  after(async () => {
    await docxy?.close();
    await hub?.close();
  });

  test('manifest requests beyond the bucket wait; beyond the queue they get a 429 at once', async () => {
    const tokens = await Promise.all([0, 1, 2, 3, 4, 5].map((i) => tokenFor(docxy.url, `library/paced-${i}`)));
    const started = Date.now();
    const results = await Promise.all(
      tokens.map((token, i) =>
        http(`${docxy.url}/v2/library/paced-${i}/manifests/1`, { headers: { authorization: `Bearer ${token}`, accept: ACCEPT } }).then((r) => ({ r, ms: Date.now() - started })),
      ),
    );
    const ok = results.filter(({ r }) => r.status === 200);
    const limited = results.filter(({ r }) => r.status === 429);
    // One at once, two waiting (queue limit 2), the other three refused.
    assert.equal(ok.length, 3, results.map(({ r }) => r.status).join(','));
    assert.equal(limited.length, 3);
    for (const { r, ms } of limited) {
      assert.ok(ms < 400, `refused at once, not after ${ms} ms`);
      assert.ok(Number(r.headers['retry-after']) >= 1);
      assert.match(jsonBody<Errors>(r).errors[0]?.message ?? '', /paces requests to upstream docker\.io \(2\/s/);
    }
    assert.ok(Math.max(...ok.map(({ ms }) => ms)) >= 800, 'the queued ones went at the pacer\'s rate');
  });
});

describe('fallback mirrors', () => {
  let primary: QuotaRegistry;
  let bad: FakeRegistry;
  let good: FakeRegistry;
  let docxy: RunningDocxy;
  let down: RunningDocxy;
  let trusting: RunningDocxy;
  let image: FakeImage;
  let large: FakeImage;
  const bigLayer = Buffer.alloc(3 * 1024 * 1024, 7);

  before(async () => {
    [primary, bad, good] = await Promise.all([startQuotaRegistry({ limit: 100, windowMs: 60_000 }), startFakeRegistry(), startFakeRegistry()]);
    for (const registry of [primary, bad, good]) {
      image = registry.addImage('library/app', '1', [Buffer.from('app layer')]);
      large = registry.addImage('library/big', '1', [bigLayer]);
    }
    // The bad mirror serves other bytes under every digest (same length).
    bad.intercept = (req, res, server) => {
      if (server !== 'registry') return false;
      const match = /^\/v2\/(.+)\/(manifests|blobs)\/(sha256:[0-9a-f]+)$/.exec(new URL(req.url ?? '/', 'http://x').pathname);
      const grant = bad.grantOf(req.headers.authorization);
      if (!match || !grant) return false;
      const original = match[2] === 'manifests' ? image.manifest : (large.blobs.get(match[3]!) ?? image.blobs.get(match[3]!) ?? Buffer.alloc(0));
      const wrong = Buffer.from(original.map((byte) => byte ^ 0x55));
      sendBytes(req, res, wrong, { 'content-type': match[2] === 'manifests' ? image.mediaType : 'application/octet-stream' });
      return true;
    };
    const fallback = (registry: FakeRegistry) => ({ url: registry.url, trustedRealms: [new URL(registry.tokenUrl).origin] });
    docxy = await startDocxy({ upstreams: { 'docker.io': primary.docxyUpstream({ fallbacks: [fallback(bad), fallback(good)] }) } });
    // An upstream nobody answers at, with one good fallback.
    down = await startDocxy({ upstreams: { 'docker.io': { url: 'http://127.0.0.1:9', fallbacks: [fallback(good)] } } });
    trusting = await startDocxy({ upstreams: { 'docker.io': primary.docxyUpstream({ fallbacks: [{ ...fallback(good), trustedForTags: true }] }) } });
  });
  after(async () => {
    await Promise.all([docxy?.close(), down?.close(), trusting?.close()]);
    await Promise.all([primary, bad, good].map((r) => r?.close()));
  });

  test('the primary answering 429 to everything: a cold image by digest comes from the fallbacks, the wrong bytes of the first discarded', async () => {
    primary.limitEverything = true;
    const result = await pull(docxy.url, 'library/app', image.manifestDigest);
    assert.equal(result.status, 200, result.body.toString());
    assert.ok(bad.seen.some((r) => r.url.includes(image.manifestDigest)), 'the bad mirror was asked first');
    assert.ok(good.seen.some((r) => r.url.includes(image.manifestDigest)), 'then the good one');
    const mismatches = docxy.logs.filter((line) => line.msg === 'fallback mirror sent content that does not match its digest: discarded');
    assert.ok(mismatches.length >= 2, `manifest and blobs refused: ${mismatches.length}`);
    // Stored as verified content: served again without any upstream.
    await docxy.settled();
    const again = await pull(docxy.url, 'library/app', image.manifestDigest);
    assert.equal(again.status, 200);
  });

  test('tags are not taken from an untrusted fallback: the client gets an honest 429', async () => {
    primary.limitEverything = true;
    const result = await pull(docxy.url, 'library/big', '1');
    assert.equal(result.status, 429);
    assert.equal(jsonBody<Errors>(result).errors[0]?.code, 'TOOMANYREQUESTS');
    assert.ok(Number(result.headers['retry-after']) >= 1);
    assert.ok(!good.seen.some((r) => r.url.endsWith('/library/big/manifests/1')));
  });

  test('a fallback trusted for tags resolves them while the primary refuses', async () => {
    primary.limitEverything = true;
    const result = await pull(trusting.url, 'library/app', '1');
    assert.equal(result.status, 200, result.body.toString());
    assert.equal(result.headers['docker-content-digest'], image.manifestDigest);
  });

  test('a large blob with wrong bytes from a fallback fails its transfer, never completes; the retry gets it from the next source', async () => {
    primary.limitEverything = true;
    const layer = sha256(bigLayer);
    assert.ok(large.blobs.has(layer));
    const token = await tokenFor(docxy.url, 'library/big');
    const first = await http(`${docxy.url}/v2/library/big/blobs/${layer}`, { headers: { authorization: `Bearer ${token}` } }).catch((error: Error) => error);
    // The client had the headers and most bytes; the last never comes: its connection breaks.
    assert.ok(first instanceof Error && /aborted/.test(first.message), first instanceof Error ? first.message : `HTTP ${first.status}`);
    await docxy.settled();
    const second = await http(`${docxy.url}/v2/library/big/blobs/${layer}`, { headers: { authorization: `Bearer ${token}` } });
    assert.equal(second.status, 200);
    assert.equal(sha256(second.body), layer);
  });

  test('the primary down: a cold image by digest comes from the fallback', async () => {
    const result = await pull(down.url, 'library/app', image.manifestDigest);
    assert.equal(result.status, 200, result.body.toString());
    const ready = jsonBody<{ pullLimits: Record<string, { fallbacks: string[] }> }>(await http(`${down.url}/ready`));
    assert.deepEqual(ready.pullLimits['docker.io']?.fallbacks, [new URL(good.url).host]);
  });
});
