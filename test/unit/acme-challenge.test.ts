// The ACME webroot (src/http/acme-challenge.ts) over real sockets: a plain-HTTP server that does
// what docxy's redirect listener does (a challenge is answered, everything else is a 301 to
// HTTPS), once through withAcmeChallenges and once through handleAcmeChallenge as a dispatcher
// calls it, with requests written byte for byte so that no client normalizes a path on the way.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type RequestListener, type Server } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ACME_CHALLENGE_PATH, handleAcmeChallenge, withAcmeChallenges } from '../../src/http/acme-challenge.ts';

interface Answer {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** One request as raw bytes on a fresh connection; the answer parsed just enough. */
function rawRequest(port: number, target: string, method = 'GET', extra = ''): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', reject);
    socket.on('end', () => {
      const text = Buffer.concat(chunks).toString('latin1');
      const split = text.indexOf('\r\n\r\n');
      const [statusLine, ...lines] = text.slice(0, split).split('\r\n');
      const headers: Record<string, string> = {};
      for (const line of lines) {
        const colon = line.indexOf(':');
        headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim();
      }
      resolve({ status: Number(statusLine!.split(' ')[1]), headers, body: text.slice(split + 4) });
    });
    socket.write(`${method} ${target} HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n${extra}\r\n`);
  });
}

/** A plain-HTTP listener like docxy's redirect listener: everything moves to HTTPS. */
const redirectToHttps: RequestListener = (req, res) => {
  res.writeHead(301, { location: `https://example.test${req.url ?? '/'}`, 'content-length': 0 });
  res.end();
};

/**
 * docxy's listeners in miniature: the redirect listener wrapped with `withAcmeChallenges`, or
 * (`dispatch`) a dispatcher that calls `handleAcmeChallenge` first, as request-handler.ts does.
 */
async function startListener(webroot: string | undefined, kind: 'redirect' | 'dispatch' = 'redirect'): Promise<{ server: Server; port: number }> {
  const dispatch: RequestListener = (req, res) => {
    const url = new URL(req.url ?? '/', 'http://docxy.invalid');
    handleAcmeChallenge(webroot, req, res, url).then(
      (handled) => {
        if (!handled) redirectToHttps(req, res);
      },
      (error: unknown) => {
        res.writeHead(500);
        res.end(String(error));
      },
    );
  };
  const server = createServer(kind === 'redirect' ? withAcmeChallenges(webroot, redirectToHttps) : dispatch);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, port: (server.address() as AddressInfo).port };
}

for (const kind of ['redirect', 'dispatch'] as const) {
  describe(`ACME http-01 challenges from a webroot (${kind === 'redirect' ? 'withAcmeChallenges' : 'handleAcmeChallenge'})`, () => {
    let dir = '';
    let webroot = '';
    let listener: { server: Server; port: number };
    let bare: { server: Server; port: number };
    const TOKEN = 'LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0';
    const KEY_AUTHORIZATION = `${TOKEN}.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI`;

    before(async () => {
      dir = await mkdtemp(join(tmpdir(), 'docxy-acme-'));
      webroot = join(dir, 'acme');
      const challenges = join(webroot, '.well-known', 'acme-challenge');
      await mkdir(challenges, { recursive: true });
      await writeFile(join(challenges, TOKEN), KEY_AUTHORIZATION);
      await mkdir(join(challenges, 'a-directory'));
      await writeFile(join(dir, 'secret'), 'not a challenge');
      await writeFile(join(webroot, 'config-like'), 'outside the challenge directory');
      await symlink(join(dir, 'secret'), join(challenges, 'link'));
      await writeFile(join(challenges, 'huge'), Buffer.alloc(100 * 1024, 'a'));
      listener = await startListener(webroot, kind);
      bare = await startListener(undefined, kind);
    });

    after(async () => {
      listener?.server.close();
      bare?.server.close();
      if (dir) await rm(dir, { recursive: true, force: true });
    });

    test('a challenge file is served as text/plain, exactly', async () => {
      const answer = await rawRequest(listener.port, `${ACME_CHALLENGE_PATH}${TOKEN}`);
      assert.equal(answer.status, 200);
      assert.equal(answer.body, KEY_AUTHORIZATION);
      assert.match(answer.headers['content-type'] ?? '', /^text\/plain/);
      assert.equal(answer.headers['content-length'], String(KEY_AUTHORIZATION.length));
      assert.equal(answer.headers['cache-control'], 'no-store');
    });

    test('HEAD: the headers without the body', async () => {
      const answer = await rawRequest(listener.port, `${ACME_CHALLENGE_PATH}${TOKEN}`, 'HEAD');
      assert.equal(answer.status, 200);
      assert.equal(answer.headers['content-length'], String(KEY_AUTHORIZATION.length));
      assert.equal(answer.body, '');
    });

    test('a query string does not change the file', async () => {
      const answer = await rawRequest(listener.port, `${ACME_CHALLENGE_PATH}${TOKEN}?x=1`);
      assert.equal(answer.status, 200);
      assert.equal(answer.body, KEY_AUTHORIZATION);
    });

    test('an unknown token is a 404, not a redirect', async () => {
      const answer = await rawRequest(listener.port, `${ACME_CHALLENGE_PATH}unknown-token_1`);
      assert.equal(answer.status, 404);
      assert.match(answer.headers['content-type'] ?? '', /^text\/plain/);
      assert.equal(answer.headers.location, undefined);
    });

    test('no path leads outside the challenge directory', async () => {
      const attempts = [
        `${ACME_CHALLENGE_PATH}..%2f..%2fconfig-like`,
        `${ACME_CHALLENGE_PATH}..%2F..%2F..%2Fsecret`,
        `${ACME_CHALLENGE_PATH}%2e%2e/%2e%2e/config-like`,
        `${ACME_CHALLENGE_PATH}..\\..\\config-like`,
        `${ACME_CHALLENGE_PATH}${TOKEN}/`,
        `${ACME_CHALLENGE_PATH}${TOKEN}%00`,
        `${ACME_CHALLENGE_PATH}.${TOKEN}`,
        `${ACME_CHALLENGE_PATH}a-directory`,
        `${ACME_CHALLENGE_PATH}link`,
        `${ACME_CHALLENGE_PATH}huge`,
        ACME_CHALLENGE_PATH,
      ];
      for (const target of attempts) {
        const answer = await rawRequest(listener.port, target);
        assert.notEqual(answer.status, 200, `${target}: ${answer.body}`);
        assert.ok(!answer.body.includes('not a challenge') && !answer.body.includes('outside the challenge'), `${target} leaked a file`);
        // Inside the challenge path: a 404 from the handler; normalized out of it ("../.."): the
        // listener's redirect, never a file.
        if (answer.status !== 404) assert.equal(answer.status, 301, `${target}: ${answer.status}`);
      }
      // A dot-dot path that the URL parser resolves lands outside the challenge path: not the handler's.
      const resolved = await rawRequest(listener.port, `${ACME_CHALLENGE_PATH}../../config-like`);
      assert.equal(resolved.status, 301);
    });

    test('other methods are refused', async () => {
      const answer = await rawRequest(listener.port, `${ACME_CHALLENGE_PATH}${TOKEN}`, 'POST', 'Content-Length: 0\r\n');
      assert.equal(answer.status, 405);
      assert.equal(answer.headers.allow, 'GET, HEAD');
    });

    test('other paths, and every path without a webroot, are not the handler’s (the listener redirects)', async () => {
      const other = await rawRequest(listener.port, '/v2/');
      assert.equal(other.status, 301);
      assert.equal(other.headers.location, 'https://example.test/v2/');
      const near = await rawRequest(listener.port, '/.well-known/acme-challengeX');
      assert.equal(near.status, 301);
      const unconfigured = await rawRequest(bare.port, `${ACME_CHALLENGE_PATH}${TOKEN}`);
      assert.equal(unconfigured.status, 301);
    });

    test('a challenge written while the listener runs is served at once (no caching)', async () => {
      const token = 'fresh_token-2';
      const target = `${ACME_CHALLENGE_PATH}${token}`;
      assert.equal((await rawRequest(listener.port, target)).status, 404);
      await writeFile(join(webroot, '.well-known', 'acme-challenge', token), `${token}.thumb`);
      const answer = await rawRequest(listener.port, target);
      assert.equal(answer.status, 200);
      assert.equal(answer.body, `${token}.thumb`);
    });
  });
}
