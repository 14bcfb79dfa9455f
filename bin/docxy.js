#!/usr/bin/env node
// docxy runs its TypeScript sources directly: Node.js 24 LTS strips types natively; Node 22.12
// to 22.17 need the flag, so docxy re-executes itself with it there.
import { spawnSync } from 'node:child_process';

const [major, minor] = process.versions.node.split('.').map(Number);
if (major < 22 || (major === 22 && minor < 12)) {
  process.stderr.write(
    `docxy needs Node.js 24 LTS (>= 22.12); this is ${process.version}.\n` +
      'Run it through npm (npm start, npm exec docxy), which uses the Node 24 that `npm ci` installs.\n',
  );
  process.exit(1);
}
if (!process.features.typescript) {
  const child = spawnSync(process.execPath, ['--experimental-strip-types', '--no-warnings', ...process.argv.slice(1)], { stdio: 'inherit' });
  process.exit(child.status ?? 1);
}
const { buildCli } = await import('../src/cli.ts');
await buildCli().parseAsync(process.argv);
