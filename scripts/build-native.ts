// `npm run build:native` (also run by `npm run build` and `npm test`): compiles docxy's sendfile
// engine, native/sendfile.c, into native/sendfile.node with the system's C compiler, against the
// Node-API headers that come with the node@24 npm package (or the system's). It needs nothing
// else: no node-gyp, no download. Without a compiler it says so and leaves docxy as it is: docxy
// then streams stored bytes itself (`sendfile: off` in its start-up log). `--required` makes a
// failure an error (CI).
import { spawnSync } from 'node:child_process';
import { existsSync, globSync, renameSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const SOURCE = join(ROOT, 'native', 'sendfile.c');
const OUTPUT = join(ROOT, 'native', 'sendfile.node');
const required = process.argv.includes('--required');

function give(message: string): never {
  process.stderr.write(`build:native: ${message}\n`);
  process.exit(required ? 1 : 0);
}

if (process.platform !== 'linux') give(`the sendfile engine is Linux-only (this is ${process.platform}); docxy streams stored bytes itself`);
if (existsSync(OUTPUT) && statSync(OUTPUT).mtimeMs >= statSync(SOURCE).mtimeMs) process.exit(0);

const headers = [...globSync('node_modules/node/node_modules/node-*/include/node/node_api.h', { cwd: ROOT }).map((file) => join(ROOT, file)), '/usr/include/node/node_api.h'].find((file) => existsSync(file));
if (!headers) give('no Node-API headers (node_modules/node is missing: run npm ci)');
const compiler = process.env.CC ?? 'cc';
const partial = `${OUTPUT}.${process.pid}.tmp`;
const result = spawnSync(
  compiler,
  ['-O2', '-Wall', '-Wextra', '-Werror', '-shared', '-fPIC', '-DNODE_GYP_MODULE_NAME=sendfile', '-I', join(headers, '..'), SOURCE, '-o', partial, '-lpthread'],
  { stdio: ['ignore', 'inherit', 'inherit'] },
);
if (result.error || result.status !== 0) {
  rmSync(partial, { force: true });
  give(result.error ? `no C compiler (${compiler}: ${result.error.message}); install gcc (apt-get install gcc libc6-dev) for the sendfile engine` : `${compiler} failed (exit ${result.status})`);
}
renameSync(partial, OUTPUT);
process.stderr.write(`build:native: built ${OUTPUT}\n`);
