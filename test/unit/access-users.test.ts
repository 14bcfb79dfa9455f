import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import bcrypt from 'bcryptjs';
import { Htpasswd, HtpasswdError } from '../../src/access/htpasswd.ts';
import { UserDirectory } from '../../src/access/user-directory.ts';
import { ConfigError } from '../../src/config/types.ts';

// Cost 4: the lowest bcrypt allows, so the tests stay fast; verification is the same code.
const ALICE_HASH = bcrypt.hashSync('alice-password', 4);
const BOB_HASH = bcrypt.hashSync('bob-password', 4);
const STATIC_TOKEN = 'ci-token-0123456789abcdef';

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'docxy-users-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function file(name: string, content: string): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, content);
  return path;
}

describe('htpasswd', () => {
  test('bcrypt entries ($2a$, $2b$, $2y$) verify their own password only', async () => {
    const users = Htpasswd.parse(`# docxy users\nalice:${ALICE_HASH}\n\nbob:${BOB_HASH.replace('$2b$', '$2y$')}\ncarol:${BOB_HASH.replace('$2b$', '$2a$')}\n`);
    assert.equal(users.size, 3);
    assert.equal(await users.verify('alice', 'alice-password'), true);
    assert.equal(await users.verify('alice', 'bob-password'), false);
    assert.equal(await users.verify('bob', 'bob-password'), true);
    assert.equal(await users.verify('carol', 'bob-password'), true);
    assert.equal(await users.verify('mallory', 'alice-password'), false);
    assert.equal(await users.verify('alice', ''), false);
    assert.equal(users.has('alice'), true);
    assert.equal(users.has('mallory'), false);
  });

  test('a successful check is remembered: a second one takes no bcrypt time, a wrong password still fails', async (t) => {
    const slow = bcrypt.hashSync('slow-password', 10); // ~70 ms per comparison
    const users = Htpasswd.parse(`slow:${slow}\n`);
    // Counted, not timed: a busy machine's pause is no bcrypt comparison.
    const compare = t.mock.method(bcrypt, 'compare');
    assert.equal(await users.verify('slow', 'slow-password'), true);
    assert.equal(compare.mock.callCount(), 1);
    assert.equal(await users.verify('slow', 'slow-password'), true);
    assert.equal(compare.mock.callCount(), 1, 'the second check is remembered');
    assert.equal(await users.verify('slow', 'slow-passwordX'), false);
    assert.equal(compare.mock.callCount(), 2, 'a wrong password is compared');
  });

  test('entries other than bcrypt are refused with the file and line, never the hash', () => {
    const entries = {
      md5: 'alice:$apr1$abcdefgh$0123456789abcdefghijkl',
      sha: 'alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=',
      crypt: 'alice:rl0Ek6OQ6Rsqg',
      plain: 'alice:secret-in-clear',
      badBcrypt: 'alice:$2b$10$tooshort',
    };
    for (const [kind, line] of Object.entries(entries)) {
      const hash = line.slice(line.indexOf(':') + 1);
      assert.throws(
        () => Htpasswd.parse(`# users\n${line}\n`, '/etc/docxy/htpasswd'),
        (error: Error) => {
          assert.ok(error instanceof HtpasswdError, kind);
          assert.match(error.message, /\/etc\/docxy\/htpasswd line 2/);
          assert.match(error.message, /only bcrypt/);
          assert.ok(!error.message.includes(hash), `${kind}: the hash is not in the message`);
          return true;
        },
      );
    }
    assert.throws(() => Htpasswd.parse('no-colon-here\n', 'f'), /f line 1: expected "user:bcrypt-hash"/);
    assert.throws(() => Htpasswd.parse(`a:${ALICE_HASH}\na:${BOB_HASH}\n`, 'f'), /f line 2: user "a" appears twice/);
  });

  test('a missing file is an error naming it', async () => {
    await assert.rejects(Htpasswd.load(join(dir, 'nope')), (error: Error) => error instanceof HtpasswdError && error.message.includes('nope') && error.message.includes('ENOENT'));
  });
});

describe('user directory: htpasswd users and static tokens', () => {
  test('a static token is the password of its name; htpasswd users log in beside them', async () => {
    const htpasswd = await file('users', `alice:${ALICE_HASH}\n`);
    const tokenFile = await file('ci-token', 'file-token-0123456789abcdef\n');
    const users = await UserDirectory.load(
      {
        htpasswd,
        tokens: [
          { name: 'ci', token: STATIC_TOKEN },
          { name: 'deploy', tokenFile },
          { name: 'bot', tokenEnv: 'BOT_TOKEN' },
        ],
      },
      { BOT_TOKEN: 'env-token-0123456789abcdef' },
    );
    assert.equal(await users.check('ci', STATIC_TOKEN), true);
    assert.equal(await users.check('ci', `${STATIC_TOKEN}x`), false);
    assert.equal(await users.check('ci', STATIC_TOKEN.slice(0, -1)), false);
    assert.equal(await users.check('alice', STATIC_TOKEN), false, 'a token is only its own name\'s password');
    assert.equal(await users.check('deploy', 'file-token-0123456789abcdef'), true, 'the trailing newline of a token file is not part of it');
    assert.equal(await users.check('bot', 'env-token-0123456789abcdef'), true);
    assert.equal(await users.check('alice', 'alice-password'), true);
    assert.equal(users.has('ci') && users.has('alice') && users.has('bot'), true);
    assert.equal(users.has('mallory'), false);
  });

  test('a token entry needs exactly one source; every bad field is named, no secret is shown', async () => {
    await assert.rejects(
      UserDirectory.load(
        {
          htpasswd: join(dir, 'missing-htpasswd'),
          tokens: [
            { name: 'none' },
            { name: 'both', token: STATIC_TOKEN, tokenEnv: 'X' },
            { name: 'unset', tokenEnv: 'NOT_SET' },
            { name: 'short', tokenEnv: 'SHORT' },
            { name: 'nofile', tokenFile: join(dir, 'no-such-token') },
          ],
        },
        { SHORT: 'abc' },
      ),
      (error: Error) => {
        assert.ok(error instanceof ConfigError);
        const paths = error.problems.map((p) => p.path);
        assert.deepEqual(paths, ['access.htpasswd', 'access.tokens.0', 'access.tokens.1', 'access.tokens.2.tokenEnv', 'access.tokens.3.tokenEnv', 'access.tokens.4.tokenFile']);
        assert.match(error.message, /set exactly one of token, tokenFile and tokenEnv/);
        assert.ok(!error.message.includes(STATIC_TOKEN));
        assert.ok(!error.message.includes('abc'));
        return true;
      },
    );
  });
});
