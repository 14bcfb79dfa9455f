#!/usr/bin/env -S node --max-semi-space-size=1 --external-memory-accounted-in-global-limit --heap-growing-percent=100
// docxy runs the JavaScript that `npm run build` compiles into dist/ when that is at least as new
// as every source file (`npm start` builds first); otherwise it runs its TypeScript sources
// directly: Node.js 24 LTS strips types natively; Node 22.12 to 22.17 need the flag, so docxy
// re-executes itself with it there. Compiled, it starts with ~30 MiB less memory.
//
// --max-semi-space-size=1 (MiB; V8's default grows to 16): a small young generation keeps the
// garbage of many concurrent small requests from piling up (-40 MiB RSS under a 32-connection
// manifest load), and is scavenged often enough to free the socket reads' Buffers (64 KiB each)
// before they add up to a full GC: at 2 MiB, a 1 GiB pass-through ran 19-26 mark-compacts (GC
// threads 1.2-1.6 CPU-s) and took 3.0-3.4 s; at 1 MiB, 4 mark-compacts (0.4-0.5 CPU-s) and
// 2.2-3.4 s in alternating runs, with 1.5 MiB less RSS at idle and the same 50-client fan-out.
// It only works on the command line (here, and in `npm start`): V8 sizes the heap before any
// script runs.
//
// --external-memory-accounted-in-global-limit: V8 counts the memory of Buffers (socket reads,
// 64 KiB each) in its one heap limit instead of starting a full mark-compact whenever it grew by
// its own smaller limit. Those Buffers die young and the scavenges free them: a cold 1 GiB pull
// ran ~50 mark-compacts of a 21 MB heap (1.0 s of GC threads' CPU), with the flag 3 (0.25 s).
//
// --heap-growing-percent=100: after a full GC, V8 lets the old generation grow to twice what
// survived before the next one, instead of up to four times when the program allocates fast.
// Under a 32-connection manifest HEAD load (8-12k req/s), ~19 MB survive each full GC; in about
// half of the runs V8 then let garbage pile up to ~80 MB (peak RSS 160-171 MiB, against 104-111 in
// the other runs). With the flag: 22-23 MB at most, peak RSS 106-111 MiB in every run. The price
// is more full GCs on a cold 1 GiB pull: 0.4-0.9 CPU-seconds of the GC threads instead of 0.3.
//
// The same three places carry these flags: here, `npm start`, and the single binary (build-binary.ts).
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const [major, minor] = process.versions.node.split('.').map(Number);
if (major < 22 || (major === 22 && minor < 12)) {
  process.stderr.write(
    `docxy needs Node.js 24 LTS (>= 22.12); this is ${process.version}.\n` +
      'Run it through npm (npm start, npm exec docxy), which uses the Node 24 that `npm ci` installs.\n',
  );
  process.exit(1);
}

/** Newest (or oldest) modification time of the files below `dir` whose names end in `suffix`. */
function mtimes(dir, suffix, pick) {
  let result;
  try {
    for (const entry of readdirSync(dir, { recursive: true, withFileTypes: true })) {
      if (!entry.isFile() || !entry.name.endsWith(suffix)) continue;
      const mtime = statSync(`${entry.parentPath}/${entry.name}`).mtimeMs;
      result = result === undefined ? mtime : pick(result, mtime);
    }
  } catch {
    return undefined; // no such directory
  }
  return result;
}

/** dist/ is built and no source file changed since (an install without src/ runs dist/). */
function compiledIsCurrent() {
  const built = mtimes(fileURLToPath(new URL('../dist/', import.meta.url)), '.js', Math.min);
  const edited = mtimes(fileURLToPath(new URL('../src/', import.meta.url)), '.ts', Math.max);
  return built !== undefined && (edited === undefined || built >= edited);
}

let cli;
if (compiledIsCurrent()) {
  cli = await import('../dist/cli.js');
} else {
  if (!process.features.typescript) {
    const child = spawnSync(process.execPath, [...process.execArgv, '--experimental-strip-types', '--no-warnings', ...process.argv.slice(1)], { stdio: 'inherit' });
    process.exit(child.status ?? 1);
  }
  cli = await import('../src/cli.ts');
}
await cli.buildCli().parseAsync(process.argv);
