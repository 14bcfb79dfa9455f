// `npm test`: every test of the project, unit to end-to-end, with Node's own test runner.
// End-to-end tests need Debian packages (docker-registry, skopeo, podman, ...). When some are
// missing, this says exactly which and how to install them; under CI=true that is a failure.
import { spawnSync } from 'node:child_process';
import { globSync } from 'node:fs';
import { requireTools } from '../test/e2e/harness/tools.ts';

/** Every program some end-to-end test runs. */
const E2E_TOOLS = ['docker-registry', 'skopeo', 'podman', 'nginx', 'openssl', 'containerd', 'ctr', 'dockerd', 'docker', 'prometheus', 'promtool', 'chromium', 'redis-server', 'ceph-mon', 'ceph-osd', 'radosgw'];

const check = requireTools(E2E_TOOLS);
const missing = check.ok ? [] : check.missing;
if (missing.length > 0) {
  const banner = [
    `End-to-end tests need tools that are not installed: ${missing.join(', ')}.`,
    'Install them (Debian/Ubuntu, as root) with:  npm run install-test-deps',
    process.env.CI === 'true' ? 'CI=true: the end-to-end tests will FAIL, not skip.' : 'Until then the end-to-end tests are skipped.',
  ];
  process.stderr.write(`\n${banner.map((line) => `  ${line}`).join('\n')}\n\n`);
}

// The sendfile engine (native/sendfile.c) is built first: the tests run docxy from its sources.
const native = spawnSync(process.execPath, ['scripts/build-native.ts', ...(process.env.CI === 'true' ? ['--required'] : [])], { stdio: 'inherit' });
if (native.status !== 0) process.exit(native.status ?? 1);

const pattern = process.argv[2];
const files = ['test/unit', 'test/integration', 'test/e2e', 'test/reliability']
  .flatMap((dir) => globSync(`${dir}/**/*.test.ts`))
  .filter((file) => !pattern || file.includes(pattern))
  .sort();
const result = spawnSync(process.execPath, ['--test', '--test-reporter=spec', '--test-concurrency=1', ...files], { stdio: 'inherit' });
process.exit(result.status ?? 1);
