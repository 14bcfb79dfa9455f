// What `docxy client-config` prints, as files a test can write: the snippets a user would
// paste, parsed from the CLI's own output (`# TITLE`, `# file: PATH`, content), so the e2e
// tests configure each client exactly as the documentation tells users to.
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { DOCXY_BIN, NODE_BIN, REPO_ROOT, startDocxy } from './docxy.ts';
import type { Docxy } from './docxy.ts';
import { freePort } from './net.ts';
import { run } from './process.ts';

export type ClientKind = 'docker' | 'containerd' | 'podman' | 'kubernetes';

export interface ClientSnippet {
  title: string;
  /** The `# file:` path; undefined for a note without a file. */
  path?: string;
  content: string;
}

/** Runs `docxy client-config --for KIND [--registry NAME] --config FILE` and parses its output. */
export async function docxyClientConfig(configPath: string, kind: ClientKind, registry?: string): Promise<ClientSnippet[]> {
  const args = [DOCXY_BIN, 'client-config', '--for', kind, '--config', configPath];
  if (registry !== undefined) args.push('--registry', registry);
  const { stdout } = await run(NODE_BIN, args, { cwd: REPO_ROOT, timeoutMs: 20_000 });
  return parseClientConfig(stdout);
}

/**
 * Splits the rendered snippets: each starts with a `# title` line right after a blank line (or
 * at the top), optionally followed by `# file: PATH`; the rest up to the next one is content.
 */
export function parseClientConfig(text: string): ClientSnippet[] {
  const snippets: ClientSnippet[] = [];
  for (const chunk of text.split(/\n\n(?=# )/)) {
    const lines = chunk.replace(/\n+$/, '').split('\n');
    const title = lines.shift();
    if (title === undefined || !title.startsWith('# ')) throw new Error(`unexpected client-config output:\n${text}`);
    const snippet: ClientSnippet = { title: title.slice(2), content: '' };
    const fileLine = /^# file: (.+)$/.exec(lines[0] ?? '');
    if (fileLine) {
      snippet.path = fileLine[1];
      lines.shift();
    }
    snippet.content = `${lines.join('\n')}\n`;
    snippets.push(snippet);
  }
  return snippets;
}

/** The one snippet whose path is `path` (throws, listing the paths there are, when absent). */
export function snippetAt(snippets: readonly ClientSnippet[], path: string): ClientSnippet {
  const found = snippets.find((s) => s.path === path);
  if (!found) throw new Error(`client-config printed no ${path}; it printed: ${snippets.map((s) => s.path ?? `(${s.title})`).join(', ')}`);
  return found;
}

/**
 * Writes every snippet whose path starts with `fromPrefix` below `toDir` instead (e.g.
 * /etc/containerd/certs.d/ -> a private hosts dir); returns the paths written.
 */
export async function writeSnippets(snippets: readonly ClientSnippet[], fromPrefix: string, toDir: string): Promise<string[]> {
  const written: string[] = [];
  for (const s of snippets) {
    if (s.path === undefined || !s.path.startsWith(fromPrefix)) continue;
    const target = join(toDir, s.path.slice(fromPrefix.length));
    await mkdir(dirname(target), { recursive: true });
    await writeFile(target, s.content);
    written.push(target);
  }
  return written;
}

/**
 * Starts docxy on a fixed free port with `publicUrl` set to it, so that `client-config` (which
 * prints publicUrl) names the address the clients really reach. Retries when the port was taken.
 */
export async function startDocxyAtPublicUrl(config: Record<string, unknown>): Promise<Docxy> {
  let last: unknown;
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    try {
      return await startDocxy({ ...config, listen: `127.0.0.1:${port}`, publicUrl: `http://127.0.0.1:${port}` });
    } catch (err) {
      last = err;
      if (!/EADDRINUSE|address already in use/i.test(String(err))) throw err;
    }
  }
  throw last;
}
