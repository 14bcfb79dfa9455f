// A real S3 server for tests: a one-node Ceph cluster (one ceph-mon, one memstore ceph-osd, one
// radosgw, no ceph-mgr) on 127.0.0.1, as plain background processes with every file under one
// temp directory. The recipe and its pitfalls: ../shared/S3.md. Stopped by PID, rgw -> osd -> mon.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { readFileSync, rmSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { CreateBucketCommand, ListBucketsCommand, S3Client } from '@aws-sdk/client-s3';
import type { TestOptions } from 'node:test';
import { e2eGate } from '../e2e/harness/tools.ts';

const run = promisify(execFile);

/** The Debian packages' programs the cluster needs (package names: ceph-mon ceph-osd radosgw). */
export const CEPH_TOOLS = ['ceph-mon', 'ceph-osd', 'radosgw', 'radosgw-admin', 'ceph', 'ceph-authtool', 'monmaptool'];

export interface CephRgw {
  /** `http://127.0.0.1:<port>`. */
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: 'us-east-1';
  /** The directory holding the cluster's state and logs. */
  dir: string;
  /** An S3 client for the tests' own checks (path style, checksums only when required). */
  client(): S3Client;
  /** Creates a bucket with a fresh name; resolves with the name. */
  createBucket(prefix?: string): Promise<string>;
  /** Stops rgw, then the OSD, then the monitor (by PID) and removes the directory. */
  stop(): Promise<void>;
}

/**
 * Options for the `describe` of a test file that needs Ceph: `{}` when it is installed or an
 * external S3 endpoint is given (DOCXY_TEST_S3_ENDPOINT); otherwise skipped with the install hint,
 * or, under CI=true, a failing test saying what is missing.
 */
export function cephGate(): TestOptions {
  if (process.env.DOCXY_TEST_S3_ENDPOINT) return {};
  return e2eGate(CEPH_TOOLS);
}

/**
 * An S3 endpoint for a test file: DOCXY_TEST_S3_ENDPOINT (with DOCXY_TEST_S3_ACCESS_KEY and
 * DOCXY_TEST_S3_SECRET_KEY; `stop()` then leaves it running), else a cluster of its own.
 */
export async function startCephRgw(): Promise<CephRgw> {
  const external = process.env.DOCXY_TEST_S3_ENDPOINT;
  if (external) {
    return withHelpers({
      endpoint: external,
      accessKeyId: process.env.DOCXY_TEST_S3_ACCESS_KEY ?? '',
      secretAccessKey: process.env.DOCXY_TEST_S3_SECRET_KEY ?? '',
      region: 'us-east-1',
      dir: '',
      stop: async () => {},
    });
  }
  const cluster = await startCluster({ detached: false });
  return withHelpers({ ...cluster.info, stop: () => cluster.stop() });
}

interface ClusterInfo {
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: 'us-east-1';
  dir: string;
}

/** What `scripts/ceph-rgw.ts start` records for `stop`. */
export interface ClusterState extends ClusterInfo {
  pids: { rgw: number; osd: number; mon: number };
}

/**
 * Starts the cluster. `detached`: the daemons outlive this process (the CLI wrapper); their PIDs
 * are in `<dir>/state.json`, for `stopCluster`.
 */
export async function startCluster(options: { detached: boolean; dir?: string }): Promise<{ info: ClusterInfo; pids: ClusterState['pids']; stop: () => Promise<void> }> {
  const dir = options.dir ?? (await mkdtemp(join(tmpdir(), 'docxy-ceph-')));
  const children: ChildProcess[] = [];
  const pids = { rgw: 0, osd: 0, mon: 0 };
  // A test process that ends without stop() (a crash, a forgotten after()) leaves no daemon behind.
  const killAtExit = () => {
    for (const pid of [pids.rgw, pids.osd, pids.mon]) if (pid) process.kill(pid, 'SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  };
  if (!options.detached) process.once('exit', killAtExit);
  const stop = async () => {
    process.off('exit', killAtExit);
    await stopPids(pids);
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const monPort = await freePort();
    const rgwPort = await freePort();
    const fsid = randomUUID();
    const conf = join(dir, 'ceph.conf');
    for (const sub of ['run', 'log', 'crash', 'mon/ceph-a', 'osd/ceph-0', 'rgw/ceph-rgw.a']) await mkdir(join(dir, sub), { recursive: true });
    await writeFile(conf, cephConf(dir, fsid, monPort, rgwPort));
    const ceph = (...args: string[]) => run('ceph', ['-c', conf, ...args], { timeout: 30_000 });
    const daemon = (program: string, args: string[], name: keyof typeof pids) => {
      const child = spawn(program, ['-c', conf, ...args, '-f'], { stdio: 'ignore', detached: options.detached });
      if (options.detached) child.unref();
      children.push(child);
      pids[name] = child.pid ?? 0;
      child.once('error', () => undefined);
      return child;
    };

    // The monitor.
    const monKeyring = join(dir, 'mon.keyring');
    await run('ceph-authtool', ['--create-keyring', monKeyring, '--gen-key', '-n', 'mon.', '--cap', 'mon', 'allow *']);
    await run('ceph-authtool', ['--create-keyring', join(dir, 'keyring'), '--gen-key', '-n', 'client.admin', '--cap', 'mon', 'allow *', '--cap', 'osd', 'allow *', '--cap', 'mgr', 'allow *']);
    await run('ceph-authtool', [monKeyring, '--import-keyring', join(dir, 'keyring')]);
    await run('monmaptool', ['--create', '--fsid', fsid, '--addv', 'a', `[v2:127.0.0.1:${monPort}]`, join(dir, 'monmap')]);
    await run('ceph-mon', ['-c', conf, '--mkfs', '-i', 'a', '--monmap', join(dir, 'monmap'), '--keyring', monKeyring]);
    daemon('ceph-mon', ['-i', 'a'], 'mon');

    // The OSD: registered and its key added before mkfs (otherwise "unable to find a keyring").
    const osdUuid = randomUUID();
    const osdId = (await ceph('osd', 'new', osdUuid)).stdout.trim();
    if (osdId !== '0') throw new Error(`ceph osd new gave id ${osdId}`);
    const osdKeyring = join(dir, 'osd/ceph-0/keyring');
    await run('ceph-authtool', ['--create-keyring', osdKeyring, '--gen-key', '-n', 'osd.0']);
    await ceph('auth', 'add', 'osd.0', 'osd', 'allow *', 'mon', 'allow profile osd', 'mgr', 'allow profile osd', '-i', osdKeyring);
    await run('ceph-osd', ['-c', conf, '-i', '0', '--mkfs', '--osd-uuid', osdUuid]);
    daemon('ceph-osd', ['-i', '0'], 'osd');
    await waitUntil('the OSD to be up', 30_000, async () => {
      const dump = JSON.parse((await ceph('osd', 'dump', '-f', 'json')).stdout) as { osds?: { up?: number }[] };
      return dump.osds?.[0]?.up === 1;
    });

    // The gateway and its user.
    await ceph('auth', 'get-or-create', 'client.rgw.a', 'mon', 'allow rw', 'osd', 'allow rwx', '-o', join(dir, 'rgw.keyring'));
    daemon('radosgw', ['-n', 'client.rgw.a'], 'rgw');
    const endpoint = `http://127.0.0.1:${rgwPort}`;
    await waitUntil('radosgw to answer HTTP', 60_000, async () => {
      try {
        await fetch(endpoint, { signal: AbortSignal.timeout(2000) });
        return true;
      } catch {
        return false;
      }
    });
    const accessKeyId = `DOCXY${randomBytes(8).toString('hex').toUpperCase()}`;
    const secretAccessKey = randomBytes(24).toString('base64url');
    await run('radosgw-admin', ['-c', conf, 'user', 'create', '--uid', 'docxy', '--display-name', 'docxy', '--access-key', accessKeyId, '--secret-key', secretAccessKey], { timeout: 30_000 });
    const info: ClusterInfo = { endpoint, accessKeyId, secretAccessKey, region: 'us-east-1', dir };
    const client = s3Client(info);
    await waitUntil('a signed ListBuckets', 30_000, async () => {
      try {
        await client.send(new ListBucketsCommand({}));
        return true;
      } catch {
        return false;
      }
    });
    client.destroy();
    if (options.detached) await writeFile(join(dir, 'state.json'), JSON.stringify({ ...info, pids } satisfies ClusterState));
    return { info, pids, stop };
  } catch (error) {
    const logs = await readFile(join(dir, 'log', 'client.rgw.a.log'), 'utf8').catch(() => '');
    await stop().catch(() => undefined);
    throw new Error(`Ceph did not start: ${(error as Error).message}${logs ? `\nrgw log tail:\n${logs.slice(-2000)}` : ''}`, { cause: error });
  }
}

/** Stops a cluster started detached (by `scripts/ceph-rgw.ts start`), from its state file. */
export async function stopCluster(dir: string): Promise<void> {
  const state = JSON.parse(await readFile(join(dir, 'state.json'), 'utf8')) as ClusterState;
  await stopPids(state.pids);
  await rm(dir, { recursive: true, force: true });
}

/** SIGTERM to rgw, then the OSD, then the monitor, each awaited (other orders hang ~5 s). */
async function stopPids(pids: ClusterState['pids']): Promise<void> {
  for (const name of ['rgw', 'osd', 'mon'] as const) {
    const pid = pids[name];
    if (!pid) continue;
    if (!alive(pid)) continue;
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      continue;
    }
    const deadline = Date.now() + 10_000;
    while (alive(pid) && Date.now() < deadline) await sleep(25);
    if (alive(pid)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone meanwhile
      }
    }
    pids[name] = 0;
  }
}

/** Running, and not a zombie waiting to be reaped (a zombie still answers `kill -0`). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The state is the field after the command in parentheses.
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== '';
  } catch {
    return false;
  }
}

function cephConf(dir: string, fsid: string, monPort: number, rgwPort: number): string {
  return `[global]
fsid = ${fsid}
mon host = [v2:127.0.0.1:${monPort}]
mon initial members = a
ms bind msgr1 = false
public addr = 127.0.0.1
cluster addr = 127.0.0.1
auth allow insecure global id reclaim = false
keyring = ${dir}/keyring
log file = ${dir}/log/$name.log
run dir = ${dir}/run
admin socket = ${dir}/run/$name.asok
crash dir = ${dir}/crash
pid file = ${dir}/run/$name.pid
mon data = ${dir}/mon/$cluster-$id
osd data = ${dir}/osd/$cluster-$id
rgw data = ${dir}/rgw/$cluster-$id
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
paxos propose interval = 0.1
osd objectstore = memstore
# memstore's accounting size (default 1 GiB): past it the OSD is "full" and every write hangs.
# Only what is stored takes RAM.
memstore device bytes = 34359738368
mon data avail warn = 1

[mon.a]
keyring = ${dir}/mon.keyring

[osd]
keyring = $osd_data/keyring

[client.rgw.a]
keyring = ${dir}/rgw.keyring
rgw frontends = beast endpoint=127.0.0.1:${rgwPort}
rgw gc obj min wait = 0
rgw gc processor period = 10
debug rgw = 0/0
`;
}

function withHelpers(info: ClusterInfo & { stop: () => Promise<void> }): CephRgw {
  let buckets = 0;
  return {
    ...info,
    client: () => s3Client(info),
    async createBucket(prefix = 'docxy-test') {
      const name = `${prefix}-${process.pid}-${Date.now().toString(36)}-${buckets++}`;
      const client = s3Client(info);
      try {
        await client.send(new CreateBucketCommand({ Bucket: name }));
      } finally {
        client.destroy();
      }
      return name;
    },
  };
}

function s3Client(info: ClusterInfo): S3Client {
  return new S3Client({
    endpoint: info.endpoint,
    region: info.region,
    forcePathStyle: true,
    credentials: { accessKeyId: info.accessKeyId, secretAccessKey: info.secretAccessKey },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

async function waitUntil(what: string, timeoutMs: number, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}
