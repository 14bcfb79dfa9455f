// "No file written outside the data dir": docxy runs with its working directory and data dir in
// one fresh temp root. Everything in that root outside the data dir is listed before the run and
// compared after it; and no file whose name carries the traversal payloads' marker may appear in
// the places a `../` could reach (the root, the temp dir, /, the repository, the runner's cwd).
import { readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));

export interface OutsideWritesWatch {
  /** What appeared outside the data dir since the watch began: new paths, and any file named with the marker. */
  check(): string[];
}

export function watchOutsideWrites(root: string, dataDir: string, marker: string): OutsideWritesWatch {
  const before = new Set(listOutside(root, dataDir));
  const topLevelDirs = [...new Set([dirname(root), tmpdir(), '/', REPO_ROOT, process.cwd()].map((dir) => resolve(dir)))];
  return {
    check() {
      const found: string[] = [];
      for (const path of listOutside(root, dataDir)) if (!before.has(path)) found.push(`new file outside the data dir: ${join(root, path)}`);
      for (const path of listOutside(root, dataDir)) if (path.includes(marker)) found.push(`traversal marker in a file name: ${join(root, path)}`);
      for (const dir of topLevelDirs) {
        for (const name of namesIn(dir)) if (name.includes(marker)) found.push(`traversal marker in a file name: ${join(dir, name)}`);
      }
      return [...new Set(found)];
    },
  };
}

/** Every path below `root` (relative to it) except inside `dataDir`. */
function listOutside(root: string, dataDir: string): string[] {
  const skip = resolve(dataDir);
  const paths: string[] = [];
  const walk = (dir: string) => {
    for (const entry of safeReaddir(dir)) {
      const path = join(dir, entry.name);
      if (resolve(path) === skip) continue;
      paths.push(relative(root, path));
      if (entry.isDirectory()) walk(path);
    }
  };
  walk(root);
  return paths;
}

function namesIn(dir: string): string[] {
  return safeReaddir(dir).map((entry) => entry.name);
}

function safeReaddir(dir: string) {
  try {
    return readdirSync(dir, { withFileTypes: true });
  } catch {
    return [];
  }
}
