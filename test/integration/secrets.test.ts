// Issue 10, egress rules: passwords, tokens and htpasswd content never appear in docxy's logs,
// its error bodies, /ready or `docxy config check`, whichever way the secret was configured and
// however the pull went (token service 401, upstream 5xx, refused redirect).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import bcrypt from 'bcryptjs';
import { startDocxy, type RunningDocxy } from '../helpers/docxy-app.ts';
import { sha256, startFakeRegistry, type FakeImage, type FakeRegistry } from '../helpers/fake-registry.ts';
import { http, jsonBody, type HttpResult } from '../helpers/http-client.ts';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const MANIFEST_ACCEPT = 'application/vnd.docker.distribution.manifest.v2+json';
const PASSWORD_ENV = 'DOCXY_TEST_UPSTREAM_PASSWORD';
const TOKEN_ENV = 'DOCXY_TEST_API_TOKEN';

/** One way of configuring the operator's upstream password; each logs in as its own user. */
interface Variant {
  name: 'password' | 'passwordFile' | 'passwordEnv';
  username: string;
  secret: string;
}

const VARIANTS: Variant[] = [
  { name: 'password', username: 'ops-inline', secret: 'pw-inline-S3cr3t-5b1e' },
  { name: 'passwordFile', username: 'ops-file', secret: 'pw-file-S3cr3t-0c7d' },
  { name: 'passwordEnv', username: 'ops-env', secret: 'pw-env-S3cr3t-9a42' },
];
const CLIENT_PASSWORD = 'client-wrong-S3cr3t-31d0';

/** `docxy <args>` as a child process: its exit code and everything it printed. */
function docxyCli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [join(ROOT, 'bin/docxy.js'), ...args], { cwd: ROOT, timeout: 30_000, env: { ...process.env, ...env } }, (error, stdout, stderr) => {
      resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, output: `${stdout}\n${stderr}` });
    });
  });
}

/** The forms a secret takes on the wire: itself, and inside a Basic authorization. */
function secretForms(secret: string, username?: string): string[] {
  return username === undefined ? [secret] : [secret, Buffer.from(`${username}:${secret}`).toString('base64')];
}

/** Fails naming where a secret (or an upstream token `tok-N`, which only docxy holds) showed up. */
function assertNoSecrets(where: Record<string, string>, secrets: string[]): void {
  for (const [place, text] of Object.entries(where)) {
    for (const secret of secrets) assert.ok(!text.includes(secret), `${place} contains the secret ${secret}:\n${text.slice(0, 4000)}`);
    assert.doesNotMatch(text, /\btok-\d+\b/, `${place} contains an upstream token`);
  }
}

/** What a client sees of an answer: its status line, headers and body. */
function seen(result: HttpResult): string {
  return `${result.status} ${JSON.stringify(result.headers)} ${result.body.toString()}`;
}

describe("the operator's upstream password, configured three ways, never shows", () => {
  let upstream: FakeRegistry;
  let image: FakeImage;
  let dir: string;

  before(async () => {
    upstream = await startFakeRegistry({ cdn: true, users: Object.fromEntries(VARIANTS.map((v) => [v.username, v.secret])), privateRepos: ['team/private'] });
    image = upstream.addImage('team/private', '1', [Buffer.from('private layer')]);
    upstream.addImage('team/broken', '1', [Buffer.from('broken layer')]);
    upstream.addImage('team/denied', '1', [Buffer.from('denied layer')]);
    upstream.addImage('team/metadata', '1', [Buffer.from('metadata layer')]);
    dir = await mkdtemp(join(tmpdir(), 'docxy-secrets-'));
  });
  after(async () => {
    await upstream?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  for (const variant of VARIANTS) {
    test(`${variant.name}: logs, error bodies, /ready and config check`, async () => {
      const credentials: Record<string, string> = { username: variant.username };
      const env: NodeJS.ProcessEnv = {};
      if (variant.name === 'password') credentials.password = variant.secret;
      if (variant.name === 'passwordFile') {
        credentials.passwordFile = join(dir, `${variant.username}.pass`);
        await writeFile(credentials.passwordFile, `${variant.secret}\n`, { mode: 0o600 });
      }
      if (variant.name === 'passwordEnv') {
        credentials.passwordEnv = PASSWORD_ENV;
        env[PASSWORD_ENV] = variant.secret;
      }
      const config = { upstreams: { 'docker.io': upstream.docxyUpstream(credentials) }, egress: LOOPBACK_EGRESS };
      const docxy = await startDocxy(config, env);
      let answers: string[];
      try {
        answers = await pullsGoodAndBad(docxy);
      } finally {
        await docxy.close();
      }

      const configFile = join(dir, `${variant.name}.yaml`);
      await writeFile(configFile, JSON.stringify({ ...config, dataDir: join(dir, 'data') })); // JSON is YAML
      const check = await docxyCli(['config', 'check', '--config', configFile], env);
      assert.equal(check.code, 0, check.output);
      assert.match(check.output, new RegExp(variant.username), 'config check does not show the configured upstream');
      // A bad file: two password sources and a bad URL, each named, neither secret echoed.
      const badFile = join(dir, `${variant.name}-bad.yaml`);
      await writeFile(badFile, JSON.stringify({ upstreams: { corp: { url: `ftp://${variant.username}:${variant.secret}@x`, ...credentials, password: variant.secret, passwordEnv: PASSWORD_ENV } } }));
      const bad = await docxyCli(['config', 'check', '--config', badFile], env);
      assert.notEqual(bad.code, 0, bad.output);
      assert.match(bad.output, /upstreams\.corp/);

      assertNoSecrets({ logs: docxy.rawLogs(), 'answers to clients': answers.join('\n'), 'config check': check.output, 'config check of a bad file': bad.output }, [
        ...secretForms(variant.secret, variant.username),
        ...secretForms(CLIENT_PASSWORD, 'alice'),
      ]);
    });
  }

  /**
   * Pulls through `docxy` as an anonymous client (docxy authenticates upstream with the operator's
   * password): one that works, then a token service 401, an upstream 5xx, a redirect to the cloud
   * metadata address, a client's wrong login, and /ready while the upstream fails. Returns what
   * the client saw of each failure.
   */
  async function pullsGoodAndBad(docxy: RunningDocxy): Promise<string[]> {
    const answers: string[] = [];
    const get = async (path: string, headers: Record<string, string> = {}): Promise<HttpResult> => {
      const result = await http(`${docxy.url}${path}`, { headers });
      if (result.status >= 400 || path === '/ready' || path.startsWith('/auth/')) answers.push(seen(result));
      return result;
    };
    const token = async (repository: string) => jsonBody<{ token: string }>(await get(`/auth/token?service=x&scope=repository:${repository}:pull`)).token;
    const pull = async (repository: string, what: string) => get(`/v2/${repository}/${what}`, { authorization: `Bearer ${await token(repository)}`, accept: MANIFEST_ACCEPT });

    const layer = sha256(Buffer.from('private layer'));
    assert.equal((await pull('team/private', 'manifests/1')).status, 200);
    const blob = await pull('team/private', `blobs/${layer}`);
    assert.equal(blob.status, 200, blob.body.toString());
    assert.deepEqual(blob.body, image.blobs.get(layer));

    try {
      upstream.intercept = (req, res, server) => {
        const url = req.url ?? '';
        if (server === 'token' && url.includes('team%2Fdenied')) {
          res.writeHead(401, { 'content-type': 'application/json', 'www-authenticate': 'Basic realm="token service"' });
          res.end(JSON.stringify({ details: 'incorrect username or password' }));
          return true;
        }
        if (server === 'registry' && url.startsWith('/v2/team/broken/')) {
          res.writeHead(500, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ errors: [{ code: 'UNKNOWN', message: 'the registry is on fire' }] }));
          return true;
        }
        if (server === 'registry' && url.startsWith('/v2/team/metadata/blobs/')) {
          res.writeHead(307, { location: 'http://169.254.169.254/latest/meta-data/iam/security-credentials/', 'content-length': 0 });
          res.end();
          return true;
        }
        return false;
      };
      assert.equal((await pull('team/denied', 'manifests/1')).status, 502);
      assert.equal((await pull('team/broken', 'manifests/1')).status >= 500, true);
      const refused = await pull('team/metadata', `blobs/${sha256(Buffer.from('metadata layer'))}`);
      assert.equal(refused.status, 502);
      assert.match(refused.body.toString(), /169\.254\.169\.254/);
      const login = await get('/auth/token?service=x&scope=repository:team/private:pull', { authorization: `Basic ${Buffer.from(`alice:${CLIENT_PASSWORD}`).toString('base64')}` });
      assert.equal(login.status, 401);
      upstream.intercept = (req, res, server) => {
        if (server !== 'registry') return false;
        res.writeHead(503, { 'retry-after': '1' });
        res.end();
        return true;
      };
      assert.equal((await get('/ready')).status, 503);
    } finally {
      upstream.intercept = undefined;
    }
    assert.ok(docxy.logs.some((line) => line.level === 'warn' && /egress refused/.test(String(line.msg))), 'the refused redirect was not logged');
    return answers;
  }
});

describe("docxy's own users: htpasswd and API tokens never show", () => {
  const HTPASSWD_PASSWORD = 'htpw-S3cr3t-77aa';
  const TOKENS = { inline: 'api-inline-S3cr3t-0123456789', file: 'api-file-S3cr3t-0123456789ab', env: 'api-env-S3cr3t-0123456789cd' };
  let upstream: FakeRegistry;
  let dir: string;
  let htpasswdLine: string;

  before(async () => {
    upstream = await startFakeRegistry({ cdn: true });
    upstream.addImage('library/app', '1', [Buffer.from('app layer')]);
    dir = await mkdtemp(join(tmpdir(), 'docxy-secrets-access-'));
    htpasswdLine = `carol:${bcrypt.hashSync(HTPASSWD_PASSWORD, 4)}`;
  });
  after(async () => {
    await upstream?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('logins right and wrong, pulls, /ready and config check', async () => {
    const htpasswd = join(dir, 'htpasswd');
    await writeFile(htpasswd, `${htpasswdLine}\n`, { mode: 0o600 });
    const tokenFile = join(dir, 'api-token');
    await writeFile(tokenFile, `${TOKENS.file}\n`, { mode: 0o600 });
    const env = { [TOKEN_ENV]: TOKENS.env };
    const config = {
      upstreams: { 'docker.io': upstream.docxyUpstream() },
      egress: LOOPBACK_EGRESS,
      access: {
        htpasswd,
        tokens: [
          { name: 'ci', token: TOKENS.inline },
          { name: 'ci-file', tokenFile },
          { name: 'ci-env', tokenEnv: TOKEN_ENV },
        ],
      },
    };
    // docxy's access module reads tokenEnv from its own environment, as the CLI does.
    process.env[TOKEN_ENV] = TOKENS.env;
    const docxy = await startDocxy(config, env).finally(() => delete process.env[TOKEN_ENV]);
    const answers: string[] = [];
    const issued: string[] = [];
    try {
      const logins: Array<[user: string, password: string]> = [
        ['carol', HTPASSWD_PASSWORD],
        ['carol', `${HTPASSWD_PASSWORD}-wrong`],
        ['ci', TOKENS.inline],
        ['ci-file', TOKENS.file],
        ['ci-env', TOKENS.env],
        ['ci', TOKENS.file],
      ];
      for (const [user, password] of logins) {
        const login = await http(`${docxy.url}/auth/token?service=x&scope=repository:library/app:pull`, {
          headers: { authorization: `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}` },
        });
        if (login.status !== 200) {
          answers.push(seen(login));
          continue;
        }
        // docxy's own token for its user (or, before the access module, the upstream's): used, never logged.
        const token = jsonBody<{ token: string }>(login).token;
        issued.push(token);
        const manifest = await http(`${docxy.url}/v2/library/app/manifests/1`, { headers: { authorization: `Bearer ${token}`, accept: MANIFEST_ACCEPT } });
        if (manifest.status >= 400) answers.push(seen(manifest));
      }
      answers.push(seen(await http(`${docxy.url}/v2/library/app/manifests/1`, { headers: { authorization: 'Bearer forged.token.value', accept: MANIFEST_ACCEPT } })));
      answers.push(seen(await http(`${docxy.url}/ready`)));
    } finally {
      await docxy.close();
    }
    const configFile = join(dir, 'config.yaml');
    await writeFile(configFile, JSON.stringify({ ...config, dataDir: join(dir, 'data') }));
    const check = await docxyCli(['config', 'check', '--config', configFile], env);
    assert.equal(check.code, 0, check.output);

    const secrets = [
      htpasswdLine,
      htpasswdLine.slice('carol:'.length),
      ...secretForms(HTPASSWD_PASSWORD, 'carol'),
      ...Object.values(TOKENS).flatMap((token) => [token, ...['ci', 'ci-file', 'ci-env'].map((user) => Buffer.from(`${user}:${token}`).toString('base64'))]),
    ];
    assertNoSecrets({ logs: docxy.rawLogs(), 'answers to clients': answers.join('\n'), 'config check': check.output }, secrets);
    for (const token of issued) assert.ok(!docxy.rawLogs().includes(token), `an issued token reached the log: ${token}`);
  });
});
