// Starts or stops a one-node Ceph cluster with the RADOS Gateway on loopback, for local runs of
// the S3 tests against one long-lived cluster (test/helpers/ceph-rgw.ts has the recipe).
//   node scripts/ceph-rgw.ts start [dir]   prints the DOCXY_TEST_S3_* variables to export
//   node scripts/ceph-rgw.ts stop <dir>    stops rgw, then the OSD, then the monitor
import { mkdir } from 'node:fs/promises';
import { startCluster, stopCluster } from '../test/helpers/ceph-rgw.ts';

const [command, dir] = process.argv.slice(2);
if (command === 'start') {
  if (dir !== undefined) await mkdir(dir, { recursive: true });
  const started = Date.now();
  const { info } = await startCluster({ detached: true, dir });
  process.stdout.write(
    `# Ceph RGW ready in ${Date.now() - started} ms; stop: node scripts/ceph-rgw.ts stop ${info.dir}\n` +
      `export DOCXY_TEST_S3_ENDPOINT=${info.endpoint}\nexport DOCXY_TEST_S3_ACCESS_KEY=${info.accessKeyId}\nexport DOCXY_TEST_S3_SECRET_KEY=${info.secretAccessKey}\n`,
  );
} else if (command === 'stop' && dir !== undefined) {
  await stopCluster(dir);
} else {
  process.stderr.write('usage: node scripts/ceph-rgw.ts start [dir] | stop <dir>\n');
  process.exitCode = 2;
}
