// An isolated environment for skopeo and podman: its own policy, registries.conf, auth file,
// storage.conf, containers.conf, HOME and TMPDIR, so nothing from the machine's or the user's
// configuration applies, plus a blackhole proxy so nothing can leave the machine.
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeTempDir, removeTempDir, run, runAllowFail } from './process.ts';
import type { RunResult } from './process.ts';
import { createBlackholeProxy } from './blackhole-proxy.ts';

export interface ContainersEnvOptions {
  /** Registry prefix (e.g. "docker.io") -> mirror host:port, tried first and without TLS. */
  mirrors?: Record<string, string>;
}

export interface ContainersEnv {
  dir: string;
  env: NodeJS.ProcessEnv;
  policyPath: string;
  registriesConfPath: string;
  /** containers-storage graphroot and runroot (vfs driver), for podman. */
  storageRoot: string;
  runRoot: string;
  /** Requests that tried to leave 127.0.0.1 through the proxy (should stay empty). */
  outsideAttempts: string[];
  /** `skopeo --policy POLICY ...args`; rejects on a non-zero exit. */
  skopeo(args: readonly string[], timeoutMs?: number): Promise<RunResult>;
  /** Same, resolving whatever the exit code. */
  skopeoAllowFail(args: readonly string[], timeoutMs?: number): Promise<RunResult>;
  stop(): Promise<void>;
}

export const INSECURE_POLICY = JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] });

export async function createContainersEnv(options: ContainersEnvOptions = {}): Promise<ContainersEnv> {
  const dir = await makeTempDir('containers');
  const proxy = await createBlackholeProxy();
  const home = join(dir, 'home');
  const tmp = join(dir, 'tmp');
  await mkdir(join(home, '.config'), { recursive: true });
  await mkdir(tmp);
  const policyPath = join(dir, 'policy.json');
  const registriesConfPath = join(dir, 'registries.conf');
  const authPath = join(dir, 'auth.json');
  const storageConfPath = join(dir, 'storage.conf');
  const containersConfPath = join(dir, 'containers.conf');
  await writeFile(policyPath, INSECURE_POLICY);
  await writeFile(registriesConfPath, registriesConf(options.mirrors ?? {}));
  await writeFile(authPath, '{"auths":{}}\n');
  const storageRoot = join(dir, 'storage');
  const runRoot = join(dir, 'run');
  await writeFile(
    storageConfPath,
    `[storage]\ndriver = "vfs"\ngraphroot = ${JSON.stringify(storageRoot)}\nrunroot = ${JSON.stringify(runRoot)}\n`,
  );
  await writeFile(containersConfPath, '');

  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin',
    LANG: 'C.UTF-8',
    HOME: home,
    XDG_CONFIG_HOME: join(home, '.config'),
    XDG_DATA_HOME: join(home, '.local', 'share'),
    XDG_CACHE_HOME: join(home, '.cache'),
    TMPDIR: tmp,
    REGISTRY_AUTH_FILE: authPath,
    DOCKER_CONFIG: join(home, '.docker'),
    CONTAINERS_REGISTRIES_CONF: registriesConfPath,
    CONTAINERS_STORAGE_CONF: storageConfPath,
    CONTAINERS_CONF: containersConfPath,
    HTTP_PROXY: proxy.url,
    HTTPS_PROXY: proxy.url,
    http_proxy: proxy.url,
    https_proxy: proxy.url,
    NO_PROXY: '127.0.0.1,localhost',
    no_proxy: '127.0.0.1,localhost',
  };
  const skopeoArgs = (args: readonly string[]): string[] => ['--policy', policyPath, '--tmpdir', tmp, ...args];

  return {
    dir,
    env,
    policyPath,
    registriesConfPath,
    storageRoot,
    runRoot,
    outsideAttempts: proxy.attempts,
    skopeo: (args, timeoutMs = 60_000) => run('skopeo', skopeoArgs(args), { env, timeoutMs }),
    skopeoAllowFail: (args, timeoutMs = 60_000) => runAllowFail('skopeo', skopeoArgs(args), { env, timeoutMs }),
    async stop() {
      await proxy.stop();
      await removeTempDir(dir);
    },
  };
}

function registriesConf(mirrors: Record<string, string>): string {
  const lines = ['unqualified-search-registries = []', ''];
  for (const [prefix, mirror] of Object.entries(mirrors)) {
    lines.push(
      '[[registry]]',
      `prefix = ${JSON.stringify(prefix)}`,
      `location = ${JSON.stringify(prefix)}`,
      '',
      '[[registry.mirror]]',
      `location = ${JSON.stringify(mirror)}`,
      'insecure = true',
      '',
    );
  }
  return lines.join('\n');
}
