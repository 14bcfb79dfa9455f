import { watch, type FSWatcher } from 'node:fs';
import type { Server as HttpsServer } from 'node:https';
import { basename, dirname } from 'node:path';
import { loadTls } from '../config/tls.ts';
import type { ConfigProblem, TlsConfig } from '../config/types.ts';
import type { Logger } from '../observability/logger.ts';

/** Renewals write the certificate and the key one after the other: wait for both. */
const SETTLE_MS = 500;

/**
 * Keeps the HTTPS listener's certificate current: when the certificate or key file changes (a
 * renewal by acme.sh or certbot, a replaced file, a symlink moved) or on `reload()` (SIGHUP),
 * the pair is read and checked again, and a good pair is installed for new handshakes with
 * `setSecureContext`; connections already open, and transfers on them, go on untouched. A broken
 * pair (unreadable, not PEM, a key of another certificate, half written) is refused with an error
 * line and the certificate in use is kept.
 */
export class CertificateReloader {
  readonly #server: HttpsServer;
  readonly #logger: Logger;
  #current: TlsConfig;
  readonly #watchers: FSWatcher[] = [];
  #timer: NodeJS.Timeout | undefined;
  /** Reloads done (a certificate installed), for tests and /ready. */
  reloads = 0;

  constructor(server: HttpsServer, tls: TlsConfig, logger: Logger) {
    this.#server = server;
    this.#current = tls;
    this.#logger = logger;
    // The directories, not the files: a renewal often replaces a file (or a symlink) rather
    // than writing into it, and a watch on the old inode would go quiet.
    const names = new Map<string, Set<string>>();
    for (const path of [tls.certPath, tls.keyPath]) {
      const dir = dirname(path);
      if (!names.has(dir)) names.set(dir, new Set());
      names.get(dir)!.add(basename(path));
    }
    for (const [dir, files] of names) {
      try {
        const watcher = watch(dir, { persistent: false }, (_event, name) => {
          if (name === null || files.has(String(name))) this.#schedule();
        });
        watcher.on('error', (error) => this.#logger.warn({ err: error.message, dir }, 'certificate watch stopped; SIGHUP still reloads'));
        this.#watchers.push(watcher);
      } catch (error) {
        this.#logger.warn({ err: (error as Error).message, dir }, 'cannot watch the certificate directory; SIGHUP still reloads');
      }
    }
  }

  /** Reads the pair again now; resolves true when a new certificate was installed. */
  reload(): boolean {
    const problems: ConfigProblem[] = [];
    const next = loadTls(this.#current.certPath, this.#current.keyPath, problems);
    if (!next) {
      this.#logger.error({ problems: problems.map((p) => `${p.path}: ${p.message}`) }, 'new TLS certificate refused; the current one stays in use');
      return false;
    }
    if (next.cert.equals(this.#current.cert) && next.key.equals(this.#current.key)) return false;
    try {
      this.#server.setSecureContext({ cert: next.cert, key: next.key });
    } catch (error) {
      this.#logger.error({ err: (error as Error).message }, 'new TLS certificate refused; the current one stays in use');
      return false;
    }
    this.#current = next;
    this.reloads++;
    this.#logger.info({ cert: next.certPath }, 'TLS certificate reloaded');
    return true;
  }

  close(): void {
    if (this.#timer) clearTimeout(this.#timer);
    for (const watcher of this.#watchers) watcher.close();
  }

  #schedule(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.reload();
    }, SETTLE_MS);
    this.#timer.unref();
  }
}
