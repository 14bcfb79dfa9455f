// A private containerd: its own root, state and sockets under a temp dir, the cri plugin and
// `io.containerd.internal.v1.opt` (which would create /opt/containerd) disabled, so it touches
// nothing of the machine's. `ctr` talks to it through its socket.
import { writeFile } from 'node:fs/promises';
import type { ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { makeTempDir, removeTempDir, run, runAllowFail, spawnTracked, stopChild, tail } from './process.ts';
import type { RunResult } from './process.ts';

export interface ContainerdOptions {
  /** Environment for containerd and for `ctr` (which does the registry requests of a pull). */
  env?: NodeJS.ProcessEnv;
  /** The namespace `ctr` uses; default "test". */
  namespace?: string;
}

export interface Containerd {
  /** The gRPC socket (`ctr -a`, `dockerd --containerd`). */
  socket: string;
  /** containerd's `root`. */
  root: string;
  dir: string;
  pid: number;
  namespace: string;
  /** `ctr -a SOCK -n NS ...args`; rejects on a non-zero exit. */
  ctr(args: readonly string[], timeoutMs?: number): Promise<RunResult>;
  ctrAllowFail(args: readonly string[], timeoutMs?: number): Promise<RunResult>;
  /** Where the content store keeps a blob (the file is named by its digest). */
  contentPath(digest: string): string;
  /** containerd's own output so far. */
  output(): string;
  /** SIGTERM (SIGKILL after 5 s) by pid, then removes its directory. */
  stop(): Promise<void>;
}

const START_TIMEOUT_MS = 15_000;

export async function startContainerd(options: ContainerdOptions = {}): Promise<Containerd> {
  const dir = await makeTempDir('containerd');
  const root = join(dir, 'root');
  const state = join(dir, 'state');
  const socket = join(dir, 'containerd.sock');
  const configPath = join(dir, 'config.toml');
  const namespace = options.namespace ?? 'test';
  const env = options.env ?? process.env;
  await writeFile(
    configPath,
    [
      'version = 2',
      `root = ${JSON.stringify(root)}`,
      `state = ${JSON.stringify(state)}`,
      'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt"]',
      '[grpc]',
      `  address = ${JSON.stringify(socket)}`,
      '[ttrpc]',
      `  address = ${JSON.stringify(`${socket}.ttrpc`)}`,
      '[debug]',
      '  address = ""',
      '[metrics]',
      '  address = ""',
      '',
    ].join('\n'),
  );
  const child = spawnTracked('containerd', ['--config', configPath], { env });
  let output = '';
  const keep = (s: string): void => {
    output = (output + s).slice(-1024 * 1024);
  };
  child.stdout?.setEncoding('utf8').on('data', keep);
  child.stderr?.setEncoding('utf8').on('data', keep);

  const ctrArgs = (args: readonly string[]): string[] => ['-a', socket, '-n', namespace, ...args];
  const stop = async (): Promise<void> => {
    await stopChild(child, 'SIGTERM', 5_000);
    await removeTempDir(dir);
  };
  try {
    await waitUntilServing(child, socket, env, () => output);
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    socket,
    root,
    dir,
    pid: child.pid ?? -1,
    namespace,
    ctr: (args, timeoutMs = 60_000) => run('ctr', ctrArgs(args), { env, timeoutMs }),
    ctrAllowFail: (args, timeoutMs = 60_000) => runAllowFail('ctr', ctrArgs(args), { env, timeoutMs }),
    contentPath: (digest) => join(root, 'io.containerd.content.v1.content', 'blobs', ...digest.split(':')),
    output: () => output,
    stop,
  };
}

/** Polls `ctr version` until the daemon answers; fails at once if containerd exits. */
async function waitUntilServing(child: ChildProcess, socket: string, env: NodeJS.ProcessEnv, output: () => string): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`containerd exited with ${child.exitCode ?? child.signalCode}:\n${tail(output())}`);
    }
    const probe = await runAllowFail('ctr', ['-a', socket, 'version'], { env, timeoutMs: 5_000 });
    if (probe.code === 0) return;
    if (Date.now() > deadline) {
      throw new Error(`containerd did not serve ${socket} within ${START_TIMEOUT_MS} ms:\n${tail(probe.stderr)}\n${tail(output())}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}
