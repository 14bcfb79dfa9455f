// deploy/install.sh in --prefix mode, for each deployment mode, into a temporary root: no
// systemd, no root-only side effects. The "binary" is a shell script that runs this checkout's
// bin/docxy.js. Checked: the files written (the systemd unit with systemd-analyze verify, the
// config with `docxy config check`, the nginx site with nginx -t), idempotence (a second run
// keeps an edited config), --dry-run writes nothing, --uninstall removes what it should; then the
// installed docxy, started with the written config on free loopback ports, answers /health.
import { after, before, describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { access, chmod, mkdir, readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse, stringify } from 'yaml';
import { e2eGate, findExecutable, INSTALL_HINT } from './harness/tools.ts';
import { envWithout, makeTempDir, removeTempDir, run, runAllowFail, spawnTracked, stopChild, tail, type RunResult } from './harness/process.ts';
import { freePort } from './harness/net.ts';
import { BINARY, builtBinary } from './harness/single-executable.ts';
import { generateTlsFixtures, type TlsFixtures } from '../helpers/tls-keys.ts';

const SCRIPT = fileURLToPath(new URL('../../deploy/install.sh', import.meta.url));
const DOCXY_JS = fileURLToPath(new URL('../../bin/docxy.js', import.meta.url));
const DOMAIN = 'example.test';
/** No DOCXY_* override of this process reaches the installer or the installed docxy. */
const ENV = envWithout((name) => name.startsWith('DOCXY_'), { PATH: `${process.env.PATH ?? ''}:/usr/sbin:/sbin` });

/** The files of an installation under `root`, as install.sh lays them out. */
function layout(root: string) {
  return {
    bin: join(root, 'usr/local/bin/docxy'),
    config: join(root, 'etc/docxy/config.yaml'),
    cert: join(root, 'etc/docxy/tls/fullchain.pem'),
    key: join(root, 'etc/docxy/tls/key.pem'),
    hook: join(root, 'etc/docxy/renew-hook.sh'),
    unit: join(root, 'etc/systemd/system/docxy.service'),
    state: join(root, 'var/lib/docxy'),
    data: join(root, 'var/lib/docxy/data'),
    webroot: join(root, 'var/lib/docxy/acme'),
    site: join(root, 'etc/nginx/conf.d/docxy.conf'),
  };
}

const exists = (path: string): Promise<boolean> => access(path).then(
  () => true,
  () => false,
);

/** Every file below `dir` (relative paths), for "nothing was written" checks. */
async function filesBelow(dir: string): Promise<string[]> {
  if (!(await exists(dir))) return [];
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries.filter((e) => !e.isDirectory()).map((e) => join(e.parentPath, e.name).slice(dir.length + 1)).sort();
}

interface Answer {
  status: number;
  location: string | undefined;
  body: string;
}

function get(url: string, ca?: Buffer): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const send = url.startsWith('https:') ? httpsRequest : httpRequest;
    const req = send(url, { timeout: 5_000, ...(ca ? { ca } : {}) }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, location: res.headers.location, body }));
    });
    req.on('timeout', () => req.destroy(new Error(`timeout: ${url}`)));
    req.on('error', reject);
    req.end();
  });
}

/**
 * A program one test needs (install-test-deps installs it): its path; missing, the test is
 * skipped, or fails under CI=true as e2eGate does.
 */
function tool(t: TestContext, name: string): string | undefined {
  const path = findExecutable(name);
  if (path) return path;
  const message = `${name} not installed; ${INSTALL_HINT}`;
  if (process.env.CI === 'true') throw new Error(message);
  t.skip(message);
  return undefined;
}

/** True when this checkout's config schema knows the `acme` key (the ACME webroot). */
async function schemaHasAcme(dir: string, stub: string): Promise<boolean> {
  const file = join(dir, 'acme-probe.yaml');
  await writeFile(file, `acme:\n  webroot: "${dir}"\n`);
  return (await runAllowFail(stub, ['config', 'check', '--config', file], { env: ENV })).code === 0;
}

describe('deploy/install.sh --prefix', { ...e2eGate(['bash', 'openssl']), timeout: 240_000 }, () => {
  let dir = '';
  let stub = '';
  let tls: TlsFixtures | undefined;
  let cert = '';
  let key = '';
  let acmeKnown = false;

  /** Runs install.sh into `root` with `args`; resolves with the result whatever its exit code. */
  const install = (root: string, ...args: string[]): Promise<RunResult> =>
    runAllowFail('bash', [SCRIPT, '--prefix', root, ...args], { env: ENV, timeoutMs: 90_000 });
  const installed = async (root: string, ...args: string[]): Promise<RunResult> => {
    const result = await install(root, '--domain', DOMAIN, '--binary', stub, ...args);
    assert.equal(result.code, 0, `install.sh ${args.join(' ')} failed:\n${tail(result.stderr || result.stdout, 30)}`);
    return result;
  };
  /** install.sh into a fresh root `name` under the test's directory; resolves with that root. */
  const installInto = async (name: string, ...args: string[]): Promise<string> => {
    const root = join(dir, name);
    await installed(root, ...args);
    return root;
  };
  const configCheck = async (root: string): Promise<Record<string, unknown>> => {
    const paths = layout(root);
    const checked = await run(paths.bin, ['config', 'check', '--config', paths.config], { env: ENV });
    return JSON.parse(checked.stdout) as Record<string, unknown>;
  };

  before(async () => {
    dir = await makeTempDir('install');
    // The single executable when it is built (CI builds it first): what a server really gets.
    // Otherwise a script that runs this checkout's sources.
    stub = builtBinary() ?? join(dir, 'docxy-stub');
    if (stub !== BINARY) {
      await writeFile(stub, `#!/bin/sh\nexec '${process.execPath}' '${DOCXY_JS}' "$@"\n`);
      await chmod(stub, 0o755);
    }
    tls = generateTlsFixtures(); // self-signed for localhost and 127.0.0.1
    cert = tls.pairs.pkcs8.certPath;
    key = tls.pairs.pkcs8.keyPath;
    acmeKnown = await schemaHasAcme(dir, stub);
  });

  after(async () => {
    tls?.remove();
    if (dir) await removeTempDir(dir);
  });

  test('the script is shellcheck-clean', async (t) => {
    const shellcheck = tool(t, 'shellcheck');
    if (!shellcheck) return;
    const result = await runAllowFail(shellcheck, [SCRIPT], { env: ENV });
    assert.equal(result.code, 0, result.stdout);
  });

  test('flags are checked before anything is written', async () => {
    const root = join(dir, 'refused');
    const cases: Array<[string[], RegExp]> = [
      [['--mode', 'standalone'], /--domain is needed/],
      [['--domain', 'bad domain', '--mode', 'http'], /not a host name/],
      [['--domain', DOMAIN, '--mode', 'sideways'], /--mode must be/],
      [['--domain', DOMAIN, '--mode', 'standalone'], /needs a certificate/],
      [['--domain', DOMAIN, '--mode', 'http', '--acme', 'certbot'], /plain HTTP/],
      [['--domain', DOMAIN, '--mode', 'nginx', '--cert', cert], /go together/],
      [['--domain', DOMAIN, '--mode', 'nginx', '--acme', 'lego'], /certbot or acme.sh/],
      [['--domain', DOMAIN, '--mode', 'http', '--bogus'], /unknown option/],
    ];
    for (const [args, message] of cases) {
      const result = await install(root, '--yes', '--binary', stub, ...args);
      assert.notEqual(result.code, 0, args.join(' '));
      assert.match(result.stderr, message, args.join(' '));
    }
    assert.deepEqual(await filesBelow(root), []);
  });

  describe('standalone: HTTPS on 443, HTTP on 80', () => {
    let root = '';
    before(async () => (root = await installInto('standalone', '--mode', 'standalone', '--cert', cert, '--key', key)));

    test('writes the executable, the certificate, the config and the unit', async () => {
      const paths = layout(root);
      assert.deepEqual(await filesBelow(root), [
        'etc/docxy/config.yaml',
        'etc/docxy/tls/fullchain.pem',
        'etc/docxy/tls/key.pem',
        'etc/systemd/system/docxy.service',
        'usr/local/bin/docxy',
      ]);
      assert.ok((await stat(paths.data)).isDirectory(), 'the data directory');
      assert.equal((await stat(paths.bin)).mode & 0o777, 0o755);
      assert.equal((await stat(paths.key)).mode & 0o777, 0o640, 'the key is not world-readable');
      assert.equal((await stat(paths.config)).mode & 0o777, 0o640);
      assert.deepEqual(await readFile(paths.cert), await readFile(cert));
    });

    test('the config parses: HTTPS with the installed certificate, the redirect on 80', async () => {
      const paths = layout(root);
      const effective = await configCheck(root);
      assert.match(String(effective.listen), /:443$/);
      assert.equal(effective.publicUrl, `https://${DOMAIN}/`);
      assert.equal(effective.dataDir, paths.data);
      assert.ok(effective.tls, 'tls');
      assert.match(JSON.stringify(effective.httpRedirect), /:80/);
    });

    test('the unit: a dedicated user, a read-only system, state in /var/lib/docxy; systemd-analyze verify passes', async (t) => {
      const paths = layout(root);
      const unit = await readFile(paths.unit, 'utf8');
      for (const line of [
        `ExecStart=${paths.bin} serve --config ${paths.config}`,
        'User=docxy',
        'ProtectSystem=strict',
        `ReadWritePaths=${paths.state}`,
        'NoNewPrivileges=yes',
        'PrivateTmp=yes',
        'AmbientCapabilities=CAP_NET_BIND_SERVICE',
        'Restart=on-failure',
        'ExecReload=/bin/kill -HUP $MAINPID',
        'WantedBy=multi-user.target',
      ]) {
        assert.ok(unit.split('\n').includes(line), `the unit has "${line}":\n${unit}`);
      }
      assert.match(unit, /^TimeoutStopSec=\d+s$/m);
      assert.ok(!unit.includes('{{') && !unit.includes('#!'), 'rendered: no placeholder, no template note');
      const analyze = findExecutable('systemd-analyze');
      if (!analyze) return t.skip('systemd-analyze not installed (Debian package systemd): the unit is not verified');
      const verified = await runAllowFail(analyze, ['verify', paths.unit], { env: ENV });
      const ours = verified.stderr.split('\n').filter((l) => l.includes('docxy'));
      assert.equal(verified.code, 0, verified.stderr);
      assert.deepEqual(ours, [], 'systemd-analyze has nothing to say about the unit');
    });

    test('a second run upgrades the executable in place and keeps an edited config', async () => {
      const paths = layout(root);
      const edited = `${await readFile(paths.config, 'utf8')}logLevel: warn   # edited by the operator\n`;
      await writeFile(paths.config, edited);
      await writeFile(paths.bin, '#!/bin/sh\necho old\n'); // an older binary
      const again = await installed(root, '--mode', 'standalone', '--cert', cert, '--key', key);
      assert.match(again.stdout, /keeping the config/);
      assert.equal(await readFile(paths.config, 'utf8'), edited);
      assert.deepEqual(await readFile(paths.bin), await readFile(stub), 'the executable replaced');
      const third = await installed(root, '--mode', 'standalone');
      assert.match(third.stdout, /installed already/, 'same binary: nothing to upgrade');
      assert.equal(await readFile(paths.config, 'utf8'), edited);
    });

    test('the installed docxy serves HTTPS with the written config; plain HTTP moves to HTTPS', async () => {
      const paths = layout(root);
      const { https, http } = await withPorts(paths.config);
      await serving(paths, [[`https://127.0.0.1:${https}/health`, tls!.pairs.pkcs8.cert], [`http://127.0.0.1:${http}/`]], async () => {
        const health = await get(`https://127.0.0.1:${https}/health`, tls!.pairs.pkcs8.cert);
        assert.equal(health.status, 200, health.body);
        assert.equal((JSON.parse(health.body) as { status: string }).status, 'ok');
        const redirected = await get(`http://127.0.0.1:${http}/v2/`);
        assert.equal(redirected.status, 301);
        assert.equal(redirected.location, `https://${DOMAIN}/v2/`);
      });
    });
  });

  describe('nginx: docxy on 127.0.0.1:5000 behind the site config', () => {
    let root = '';
    before(async () => (root = await installInto('nginx', '--mode', 'nginx', '--cert', cert, '--key', key)));

    test('the config: local, trusting nginx, X-Accel-Redirect on', async () => {
      const effective = await configCheck(root);
      assert.equal(effective.listen, '127.0.0.1:5000');
      assert.equal(effective.publicUrl, `https://${DOMAIN}/`);
      assert.deepEqual(effective.trustedProxies, ['127.0.0.1']);
      assert.match(JSON.stringify(effective.cache), /_docxy_blobs/);
      assert.equal(effective.tls, null, 'TLS is nginx’s');
    });

    test('the site is deploy/nginx/docxy.conf rendered, plus port 80 for ACME; nginx -t passes', async (t) => {
      const paths = layout(root);
      const site = await readFile(paths.site, 'utf8');
      assert.ok(!site.includes('{{') && !site.includes('#!'), 'rendered');
      assert.match(site, /^\s*listen 443 ssl;$/m);
      assert.match(site, new RegExp(`^\\s*server_name ${DOMAIN.replace('.', '\\.')};$`, 'm'));
      assert.match(site, /^\s*server 127\.0\.0\.1:5000;$/m);
      assert.ok(site.includes(`alias ${paths.data}/blobs/;`), 'hits sent from the data directory');
      assert.ok(site.includes(`ssl_certificate ${paths.cert};`) && site.includes(`ssl_certificate_key ${paths.key};`));
      assert.match(site, /proxy_buffering off;/);
      assert.match(site, /location \/\.well-known\/acme-challenge\/ \{\s*proxy_pass http:\/\/docxy;/);
      assert.ok(site.includes(`return 301 https://${DOMAIN}$request_uri;`));
      const nginx = tool(t, 'nginx');
      if (!nginx) return;
      const work = join(dir, 'nginx-t');
      await mkdir(work, { recursive: true });
      const conf = join(work, 'nginx.conf');
      await writeFile(
        conf,
        [
          `pid ${join(work, 'nginx.pid')};`,
          `error_log ${join(work, 'error.log')} warn;`,
          'events { worker_connections 64; }',
          `http { include ${paths.site}; }`,
          '',
        ].join('\n'),
      );
      const checked = await runAllowFail(nginx, ['-t', '-p', work, '-e', join(work, 'error.log'), '-c', conf], { env: ENV });
      assert.equal(checked.code, 0, checked.stderr);
      assert.match(checked.stderr, /test is successful/);
    });

    test('the installed docxy answers /health on its local port', () => answersPlainHealth(root));
  });

  describe('http: plain HTTP, a CDN origin', () => {
    let root = '';
    before(async () => (root = await installInto('http', '--mode', 'http', '--public-url', 'https://cdn.example.test')));

    test('no certificate, no nginx site; the config parses', async () => {
      assert.deepEqual(await filesBelow(root), ['etc/docxy/config.yaml', 'etc/systemd/system/docxy.service', 'usr/local/bin/docxy']);
      const effective = await configCheck(root);
      assert.match(String(effective.listen), /:80$/);
      assert.equal(effective.publicUrl, 'https://cdn.example.test/');
      assert.equal(effective.tls, null);
    });

    test('the installed docxy answers /health', () => answersPlainHealth(root));
  });

  describe('ACME (webroot): a stand-in certificate, the renew hook, the webroot served', () => {
    test('--acme certbot: the commands printed, the stand-in certificate, the hook installs a renewal', async (t) => {
      if (!acmeKnown) return t.skip('the config schema has no `acme` key yet (acme: { webroot }): install.sh --acme writes one');
      const root = join(dir, 'acme');
      const paths = layout(root);
      const result = await installed(root, '--mode', 'standalone', '--acme', 'certbot', '--email', 'ops@example.test');
      assert.match(result.stdout, /certbot certonly --webroot --webroot-path \S+\/var\/lib\/docxy\/acme -d example\.test/);
      assert.ok(result.stdout.includes(`--deploy-hook ${paths.hook}`), result.stdout);
      await configCheck(root);
      const written = parse(await readFile(paths.config, 'utf8')) as { acme?: { webroot?: string } };
      assert.equal(written.acme?.webroot, paths.webroot);
      assert.ok((await stat(paths.webroot)).isDirectory());
      const standIn = await run('openssl', ['x509', '-noout', '-subject', '-in', paths.cert], { env: ENV });
      assert.match(standIn.stdout, /CN ?= ?example\.test/);
      // certbot runs the hook with RENEWED_LINEAGE: the new files land where docxy reads them.
      const lineage = join(dir, 'lineage');
      await mkdir(lineage, { recursive: true });
      await writeFile(join(lineage, 'fullchain.pem'), await readFile(cert));
      await writeFile(join(lineage, 'privkey.pem'), await readFile(key));
      await run(paths.hook, [], { env: { ...ENV, RENEWED_LINEAGE: lineage } });
      assert.deepEqual(await readFile(paths.cert), await readFile(cert));
      assert.deepEqual(await readFile(paths.key), await readFile(key));
      assert.equal((await stat(paths.key)).mode & 0o777, 0o640);

      // docxy serves the challenge on its plain-HTTP listener while HTTPS runs.
      const token = 'Tok3n_-x';
      await mkdir(join(paths.webroot, '.well-known/acme-challenge'), { recursive: true });
      await writeFile(join(paths.webroot, '.well-known/acme-challenge', token), `${token}.thumbprint`);
      const { https, http } = await withPorts(paths.config);
      await serving(paths, [[`https://127.0.0.1:${https}/health`, tls!.pairs.pkcs8.cert], [`http://127.0.0.1:${http}/`]], async () => {
        assert.equal((await get(`https://127.0.0.1:${https}/health`, tls!.pairs.pkcs8.cert)).status, 200);
        const challenge = await get(`http://127.0.0.1:${http}/.well-known/acme-challenge/${token}`);
        assert.equal(challenge.status, 200, `the HTTP listener answers the challenge (${challenge.status} ${challenge.location ?? ''})`);
        assert.equal(challenge.body, `${token}.thumbprint`);
        assert.equal((await get(`http://127.0.0.1:${http}/.well-known/acme-challenge/unknown`)).status, 404);
        assert.equal((await get(`http://127.0.0.1:${http}/v2/`)).status, 301, 'everything else still moves to HTTPS');
      });
    });

    test('--acme acme.sh: its issue and install-cert commands, with the hook as reload command', async (t) => {
      if (!acmeKnown) return t.skip('the config schema has no `acme` key yet (acme: { webroot })');
      const root = join(dir, 'acme-sh');
      const paths = layout(root);
      const result = await installed(root, '--mode', 'nginx', '--acme', 'acme.sh');
      assert.match(result.stdout, /acme\.sh --issue -d example\.test --webroot \S+\/var\/lib\/docxy\/acme/);
      assert.ok(result.stdout.includes(`--fullchain-file ${paths.cert} --key-file ${paths.key} --reloadcmd ${paths.hook}`), result.stdout);
      assert.ok(await exists(paths.site));
      // Behind nginx, the site passes /.well-known/acme-challenge/ to docxy's main listener.
      const token = 'nginx-token';
      await mkdir(join(paths.webroot, '.well-known/acme-challenge'), { recursive: true });
      await writeFile(join(paths.webroot, '.well-known/acme-challenge', token), `${token}.thumbprint`);
      const { https: port } = await withPorts(paths.config);
      await serving(paths, [[`http://127.0.0.1:${port}/health`]], async () => {
        const challenge = await get(`http://127.0.0.1:${port}/.well-known/acme-challenge/${token}`);
        assert.equal(challenge.status, 200, `docxy's main listener answers the challenge (${challenge.status})`);
        assert.equal(challenge.body, `${token}.thumbprint`);
      });
    });
  });

  test('--dry-run prints what it would do and writes nothing', async () => {
    const root = join(dir, 'dry');
    const result = await installed(root, '--mode', 'nginx', '--cert', cert, '--key', key, '--dry-run');
    assert.deepEqual(await filesBelow(root), [], 'nothing written');
    assert.ok(!(await exists(root)), 'not even the prefix directory');
    const paths = layout(root);
    for (const file of [paths.config, paths.unit, paths.site]) assert.ok(result.stdout.includes(`would write ${file}`), `${file}:\n${result.stdout}`);
    assert.ok(result.stdout.includes(`install ${stub} -> ${paths.bin}`));
  });

  test('--uninstall removes the executable, the unit and the site; --purge the rest', async () => {
    const root = join(dir, 'uninstall');
    const paths = layout(root);
    await installed(root, '--mode', 'nginx', '--cert', cert, '--key', key);
    const dry = await install(root, '--uninstall', '--dry-run');
    assert.equal(dry.code, 0, dry.stderr);
    assert.ok(await exists(paths.bin), '--dry-run removed nothing');
    const removed = await install(root, '--uninstall');
    assert.equal(removed.code, 0, removed.stderr);
    for (const gone of [paths.bin, paths.unit, paths.site]) assert.ok(!(await exists(gone)), `${gone} removed`);
    for (const kept of [paths.config, paths.key, paths.data]) assert.ok(await exists(kept), `${kept} kept`);
    const purged = await install(root, '--uninstall', '--purge');
    assert.equal(purged.code, 0, purged.stderr);
    assert.deepEqual(await filesBelow(root), []);
    assert.ok(!(await exists(paths.state)) && !(await exists(join(root, 'etc/docxy'))));
  });
});

/**
 * Moves the written config's listeners to free loopback ports (the main one, returned as
 * `https`, and the plain-HTTP one): the test's only change to what install.sh wrote.
 */
async function withPorts(config: string): Promise<{ https: number; http: number }> {
  const parsed = parse(await readFile(config, 'utf8')) as Record<string, unknown>;
  const https = await freePort();
  const http = await freePort();
  parsed.listen = `127.0.0.1:${https}`;
  if (parsed.httpRedirect) parsed.httpRedirect = { listen: `127.0.0.1:${http}` };
  await writeFile(config, stringify(parsed));
  return { https, http };
}

/** The installed docxy under `root`, moved to a free port, answers /health over plain HTTP. */
async function answersPlainHealth(root: string): Promise<void> {
  const paths = layout(root);
  const { https: port } = await withPorts(paths.config);
  await serving(paths, [[`http://127.0.0.1:${port}/health`]], async () => {
    const health = await get(`http://127.0.0.1:${port}/health`);
    assert.equal(health.status, 200, health.body);
  });
}

/**
 * Starts the installed docxy with its config, runs `check` once every URL of `ready` answers (the
 * log may be quiet: an operator's logLevel is kept), then stops it.
 */
async function serving(paths: ReturnType<typeof layout>, ready: Array<[string, Buffer?]>, check: () => Promise<void>): Promise<void> {
  const child = spawnTracked(paths.bin, ['serve', '--config', paths.config], { env: ENV, cwd: paths.state });
  let output = '';
  child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  try {
    for (const [url, ca] of ready) {
      for (const deadline = Date.now() + 20_000; !(await get(url, ca).then(() => true, () => false)); ) {
        if (child.exitCode !== null) throw new Error(`docxy exited (${child.exitCode}):\n${tail(output)}`);
        if (Date.now() > deadline) throw new Error(`docxy did not answer ${url}:\n${tail(output)}`);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
    await check();
  } finally {
    await stopChild(child);
  }
}
