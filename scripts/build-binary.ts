// `npm run build:binary`: one self-contained `docxy` executable for the platform of the Node.js
// binary in node_modules (linux-x64 here), so a server needs neither Node nor npm.
//
// 1. esbuild bundles src/cli.ts and every npm dependency into one CommonJS script (Node's single
//    executable applications run exactly one CommonJS script). src/version.ts reads package.json
//    next to the sources at run time; in the bundle it becomes the version string itself.
// 2. `node --experimental-sea-config` turns the script into a blob (with V8's code cache, so the
//    binary starts without compiling the bundle).
// 3. A copy of node_modules/node/bin/node gets the blob injected by postject; its debug symbols
//    are stripped first when `strip` is installed (126 -> ~120 MiB).
//
// Output: dist-bin/docxy (gitignored); the intermediate files live in a temp dir, removed after.
import { build, type Plugin } from 'esbuild';
import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const OUT_DIR = join(ROOT, 'dist-bin');
const BINARY_PATH = join(OUT_DIR, 'docxy');
const NODE_BINARY = join(ROOT, 'node_modules', 'node', 'bin', 'node');
/** The fuse postject flips so that the Node binary looks for its injected blob. */
const SEA_FUSE = 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2';

/** What bin/docxy.js does once it has found the CLI: parse argv (an error ends the process, as there). */
const ENTRY = `import { buildCli } from './src/cli.ts';
void buildCli().parseAsync(process.argv).catch((error) => { process.exitCode = 1; throw error; });
`;

/** src/version.ts without its package.json read: the version is fixed at build time. */
function fixedVersion(version: string): Plugin {
  return {
    name: 'docxy-version',
    setup(b) {
      b.onLoad({ filter: /[\\/]src[\\/]version\.ts$/ }, () => ({
        contents: `export const VERSION = ${JSON.stringify(version)};\n`,
        loader: 'ts',
      }));
    },
  };
}

function step(command: string, args: string[]): void {
  const result = spawnSync(command, args, { stdio: 'inherit' });
  if (result.error) throw result.error;
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} exited with ${result.status ?? result.signal}`);
}

function hasCommand(name: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' }).status === 0;
}

async function main(): Promise<void> {
  const started = performance.now();
  const { version } = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
  mkdirSync(OUT_DIR, { recursive: true });
  const work = mkdtempSync(join(tmpdir(), 'docxy-build-binary-'));
  try {
    await buildInto(work, version);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  const mib = (statSync(BINARY_PATH).size / 1024 / 1024).toFixed(1);
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  process.stdout.write(`build:binary: ${BINARY_PATH} (docxy ${version}, ${mib} MiB) in ${seconds} s\n`);
}

/** Bundle, blob, injected copy of node in `work`; the finished binary moved to BINARY_PATH. */
async function buildInto(work: string, version: string): Promise<void> {
  const bundle = join(work, 'docxy.cjs');
  const bundled = await build({
    stdin: { contents: ENTRY, resolveDir: ROOT, sourcefile: 'docxy-entry.ts', loader: 'ts' },
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node24',
    outfile: bundle,
    plugins: [fixedVersion(version)],
    legalComments: 'none',
    logLevel: 'warning',
  });
  // A warning is something the bundle would get wrong (e.g. a new import.meta use): stop here.
  if (bundled.warnings.length > 0) throw new Error(`esbuild: ${bundled.warnings.length} warning(s), see above`);

  // The V8 flags bin/docxy.js and `npm start` run docxy with (see bin/docxy.js). The code cache is
  // made under the same flags: V8 rejects a cache made under flags that differ (with a warning on
  // every start), and --external-memory-accounted-in-global-limit is one it checks.
  const v8Flags = ['--max-semi-space-size=1', '--external-memory-accounted-in-global-limit', '--heap-growing-percent=100'];
  const seaConfig = join(work, 'sea-config.json');
  const blob = join(work, 'docxy.blob');
  // The native addon (the sendfile engine) goes in as an asset (src/native.ts loads it from there), when
  // it could be built here; without it the executable streams stored bytes itself.
  step(NODE_BINARY, [join(ROOT, 'scripts', 'build-native.ts')]);
  const engine = join(ROOT, 'native', 'sendfile.node');
  const assets = existsSync(engine) ? { 'sendfile.node': engine } : undefined;
  if (!assets) process.stderr.write('build:binary: no sendfile engine (native/sendfile.node): the executable streams stored bytes itself\n');
  writeFileSync(seaConfig, `${JSON.stringify({
    main: bundle,
    output: blob,
    disableExperimentalSEAWarning: true,
    useCodeCache: true,
    execArgv: v8Flags,
    ...(assets ? { assets } : {}),
  }, null, 2)}\n`);
  step(NODE_BINARY, [...v8Flags, '--experimental-sea-config', seaConfig]);

  const staged = join(work, 'docxy');
  copyFileSync(NODE_BINARY, staged);
  chmodSync(staged, 0o755);
  if (hasCommand('strip')) step('strip', ['--strip-debug', staged]);
  step(NODE_BINARY, [join(ROOT, 'node_modules', 'postject', 'dist', 'cli.js'), staged, 'NODE_SEA_BLOB', blob, '--sentinel-fuse', SEA_FUSE]);
  // Not a rename: the temp dir may be on another file system.
  copyFileSync(staged, `${BINARY_PATH}.partial`);
  chmodSync(`${BINARY_PATH}.partial`, 0o755);
  renameSync(`${BINARY_PATH}.partial`, BINARY_PATH);
}

await main();
