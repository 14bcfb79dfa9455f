import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { getRawAsset, isSea } from 'node:sea';
import { fileURLToPath } from 'node:url';

/**
 * docxy's native addon (native/sendfile.c, built by `npm run build:native`): the sendfile engine
 * (src/http/file-sender.ts), the allocator's trim (src/heap-trim.ts), and the accept queue's
 * drain (src/http/accept-drain.ts). Without it (no C compiler where docxy was built, another OS)
 * docxy streams the bytes itself, keeps what the allocator keeps, and takes in one new connection
 * per turn of its event loop.
 */
export interface NativeAddon {
  /** The sendfile engine: see native/sendfile.c. */
  start(socketFd: number, fileFd: number, offset: number, length: number, done: (errno: number, sent: number) => void): number;
  cancel(id: number): void;
  sent(id: number): number;
  /** glibc's malloc_trim(0): true when memory went back to the system; undefined without glibc. */
  trimHeap(): boolean | undefined;
  /** Accepts up to `max` connections waiting on a listening socket; their descriptors (src/http/accept-drain.ts). */
  acceptPending(listenFd: number, max: number): number[];
}

/** The addon's name among the single executable's assets (scripts/build-binary.ts). */
export const SEA_ASSET = 'sendfile.node';

/**
 * Where `npm run build:native` puts the addon: native/ at the project's root (from src or dist);
 * undefined in the single executable (a bundle, without a file of its own).
 */
function addonPath(): string | undefined {
  try {
    return fileURLToPath(new URL('../native/sendfile.node', import.meta.url));
  } catch {
    return undefined;
  }
}

let addon: NativeAddon | null | undefined;
/** Why the addon could not be loaded, once it was tried. */
export let nativeError: string | undefined;
/** Where the single executable writes its addon when the temp dir will not do (see loadFromExecutable). */
let fallbackDir: string | undefined;

/**
 * A directory of docxy's own (its storage's temp dir) where the single executable may write the
 * addon to load it when the system's temp dir refuses (mounted noexec, as hardening guides ask).
 * Set before the first `nativeAddon()`.
 */
export function setNativeFallbackDir(dir: string | undefined): void {
  fallbackDir = dir;
}

/** The addon, loaded on first use; null when it cannot be (and why, once, in `nativeError`). */
export function nativeAddon(): NativeAddon | null {
  if (addon !== undefined) return addon;
  addon = null;
  if (process.platform !== 'linux') {
    nativeError = 'not Linux';
    return addon;
  }
  try {
    addon = isSea() ? loadFromExecutable() : loadFromProject();
  } catch (error) {
    nativeError = (error as Error).message;
  }
  return addon;
}

function load(path: string): NativeAddon {
  const module = { exports: {} as NativeAddon };
  process.dlopen(module, path);
  return module.exports;
}

function loadFromProject(): NativeAddon | null {
  const path = addonPath();
  if (path === undefined || !existsSync(path)) {
    nativeError = `no engine at ${path}: npm run build:native builds it`;
    return null;
  }
  return load(path);
}

/**
 * The single executable carries the addon as an asset (build-binary.ts): it is written to a file
 * nobody else can have put there, loaded, and removed again (a loaded library needs no file).
 * First into a new directory of its own (mode 0700) under the system's temp dir; where that is
 * mounted noexec (the library cannot be mapped), into `fallbackDir`, under a random name created
 * exclusively (a leftover of a crash there is the storage's to clean at the next start).
 */
function loadFromExecutable(): NativeAddon | null {
  let bytes: ArrayBuffer;
  try {
    bytes = getRawAsset(SEA_ASSET);
  } catch {
    nativeError = 'not built into this executable';
    return null;
  }
  const content = new Uint8Array(bytes);
  /** Each place prepares where the copy goes: the file to write, and what to remove afterwards. */
  const places: (() => { path: string; remove: string })[] = [
    () => {
      const dir = mkdtempSync(join(tmpdir(), 'docxy-sendfile-'));
      return { path: join(dir, SEA_ASSET), remove: dir };
    },
  ];
  const own = fallbackDir;
  if (own !== undefined) {
    places.push(() => {
      mkdirSync(own, { recursive: true, mode: 0o700 });
      const path = join(own, `${randomUUID()}.${SEA_ASSET}`);
      return { path, remove: path };
    });
  }
  const refusals: string[] = [];
  for (const place of places) {
    let remove: string | undefined;
    try {
      const prepared = place();
      remove = prepared.remove;
      writeFileSync(prepared.path, content, { mode: 0o500, flag: 'wx' });
      return load(prepared.path);
    } catch (error) {
      refusals.push((error as Error).message);
    } finally {
      if (remove !== undefined) rmSync(remove, { recursive: true, force: true });
    }
  }
  nativeError = refusals.join('; then ');
  return null;
}
