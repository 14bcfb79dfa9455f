// A private dockerd (Debian's docker.io, 20.10) on its own socket, data-root, exec-root and
// pidfile, with the vfs storage driver and no networking of its own (no iptables, no bridge),
// talking to a private containerd (see containerd.ts), so it neither touches the machine's
// Docker nor creates /opt/containerd. `daemon.json` is the caller's, plus "deprecated-key-path"
// so dockerd does not write /etc/docker/key.json.
import { existsSync } from 'node:fs';
import { readdir, rmdir, writeFile } from 'node:fs/promises';
import type { ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { makeTempDir, removeTempDir, run, runAllowFail, spawnTracked, stopChild, tail } from './process.ts';
import type { RunResult } from './process.ts';
import { startContainerd } from './containerd.ts';
import type { Containerd } from './containerd.ts';

export interface DockerdOptions {
  /** daemon.json content (e.g. what `docxy client-config --for docker` prints). */
  daemonJson: Record<string, unknown>;
  /** Environment for containerd, dockerd and the docker CLI (HOME, DOCKER_CONFIG, proxies). */
  env: NodeJS.ProcessEnv;
}

export interface Dockerd {
  /** unix:///…/docker.sock */
  host: string;
  dir: string;
  pid: number;
  containerd: Containerd;
  /** `docker ...args` against this daemon; rejects on a non-zero exit. */
  docker(args: readonly string[], timeoutMs?: number): Promise<RunResult>;
  dockerAllowFail(args: readonly string[], timeoutMs?: number): Promise<RunResult>;
  /** dockerd's own output so far. */
  output(): string;
  /** Stops dockerd, then its containerd (each by pid), and removes their directories. */
  stop(): Promise<void>;
}

const START_TIMEOUT_MS = 20_000;
/** dockerd creates this plugin-socket directory whatever its exec-root. */
const PLUGIN_SOCKET_DIRS = ['/run/docker/plugins', '/run/docker'];

export async function startDockerd(options: DockerdOptions): Promise<Dockerd> {
  const dir = await makeTempDir('dockerd');
  const socket = join(dir, 'docker.sock');
  const host = `unix://${socket}`;
  const daemonJsonPath = join(dir, 'daemon.json');
  await writeFile(daemonJsonPath, JSON.stringify({ ...options.daemonJson, 'deprecated-key-path': join(dir, 'key.json') }, null, 2));
  const createdRunDocker = !existsSync('/run/docker');
  const env: NodeJS.ProcessEnv = { ...options.env, DOCKER_HOST: host };

  let containerd: Containerd | undefined;
  let child: ChildProcess | undefined;
  let output = '';
  const stop = async (): Promise<void> => {
    if (child !== undefined) await stopChild(child, 'SIGTERM', 10_000);
    await containerd?.stop();
    await removeTempDir(dir);
    if (createdRunDocker) await removeEmptyDirs(PLUGIN_SOCKET_DIRS);
  };

  try {
    containerd = await startContainerd({ env: options.env, namespace: 'moby' });
    child = spawnTracked(
      'dockerd',
      [
        '--data-root', join(dir, 'data'),
        '--exec-root', join(dir, 'exec'),
        '--pidfile', join(dir, 'docker.pid'),
        '-H', host,
        '--containerd', containerd.socket,
        '--storage-driver', 'vfs',
        '--iptables=false',
        '--ip6tables=false',
        '--bridge=none',
        '--config-file', daemonJsonPath,
      ],
      { env: options.env },
    );
    const keep = (s: string): void => {
      output = (output + s).slice(-1024 * 1024);
    };
    child.stdout?.setEncoding('utf8').on('data', keep);
    child.stderr?.setEncoding('utf8').on('data', keep);
    await waitUntilServing(child, env, () => output);
  } catch (err) {
    await stop();
    throw err;
  }
  const started = child;
  return {
    host,
    dir,
    pid: started.pid ?? -1,
    containerd,
    docker: (args, timeoutMs = 60_000) => run('docker', args, { env, timeoutMs }),
    dockerAllowFail: (args, timeoutMs = 60_000) => runAllowFail('docker', args, { env, timeoutMs }),
    output: () => output,
    stop,
  };
}

async function waitUntilServing(child: ChildProcess, env: NodeJS.ProcessEnv, output: () => string): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`dockerd exited with ${child.exitCode ?? child.signalCode}:\n${tail(output(), 30)}`);
    }
    const probe = await runAllowFail('docker', ['version', '--format', '{{.Server.Version}}'], { env, timeoutMs: 5_000 });
    if (probe.code === 0) return;
    if (Date.now() > deadline) {
      throw new Error(`dockerd did not answer within ${START_TIMEOUT_MS} ms:\n${tail(probe.stderr)}\n${tail(output(), 30)}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Removes each directory that is (by then) empty, in order; leaves any other alone. */
async function removeEmptyDirs(dirs: readonly string[]): Promise<void> {
  for (const d of dirs) {
    try {
      if ((await readdir(d)).length === 0) await rmdir(d);
    } catch {
      // absent, or not ours to remove
    }
  }
}
