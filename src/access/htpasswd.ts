import { createHash, randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import bcrypt from 'bcryptjs';

/** How long a successful check is remembered: a bcrypt comparison costs 50-100 ms of CPU. */
const VERIFIED_TTL_MS = 60_000;
const VERIFIED_MAX = 10_000;


const BCRYPT = /^\$2[aby]\$\d{2}\$[./A-Za-z0-9]{53}$/;

/** An htpasswd file that cannot be used; the message names the file and line, never a hash. */
export class HtpasswdError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'HtpasswdError';
  }
}

/**
 * docxy's own users from an htpasswd file (`htpasswd -B`: bcrypt entries only). Successful checks
 * are remembered for a minute under a hash of user and password, never the password itself.
 */
export class Htpasswd {
  readonly #hashes: Map<string, string>;
  /** sha256(user, password) -> when the success stops counting. */
  readonly #verified = new Map<string, number>();
  /** A hash of a random password at the file's cost: compared against for unknown users, so they take as long as known ones. */
  #decoy: Promise<string> | undefined;

  private constructor(hashes: Map<string, string>) {
    this.#hashes = hashes;
  }

  /** Reads and checks `file`; throws HtpasswdError naming the file and line of a bad entry. */
  static async load(file: string): Promise<Htpasswd> {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (error) {
      throw new HtpasswdError(`cannot read htpasswd file ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
    }
    return new Htpasswd(parseHtpasswd(text, file));
  }

  /** Parses htpasswd text (for tests and callers that have the content already). */
  static parse(text: string, file = 'htpasswd'): Htpasswd {
    return new Htpasswd(parseHtpasswd(text, file));
  }

  get size(): number {
    return this.#hashes.size;
  }

  has(user: string): boolean {
    return this.#hashes.has(user);
  }

  /** Whether `password` is `user`'s; an unknown user costs as much time as a wrong password. */
  async verify(user: string, password: string): Promise<boolean> {
    const key = createHash('sha256').update(user).update('\0').update(password).digest('base64');
    const until = this.#verified.get(key);
    if (until !== undefined && until > Date.now()) return true;
    const hash = this.#hashes.get(user);
    const ok = await bcrypt.compare(password, hash ?? (await this.#decoyHash()));
    if (!ok || hash === undefined) return false;
    if (this.#verified.size >= VERIFIED_MAX) this.#prune();
    this.#verified.set(key, Date.now() + VERIFIED_TTL_MS);
    return true;
  }

  #decoyHash(): Promise<string> {
    const cost = Number(this.#hashes.values().next().value?.slice(4, 6) ?? 10);
    this.#decoy ??= bcrypt.hash(randomBytes(16).toString('hex'), cost);
    return this.#decoy;
  }

  #prune(): void {
    const now = Date.now();
    for (const [key, until] of this.#verified) if (until <= now) this.#verified.delete(key);
    if (this.#verified.size >= VERIFIED_MAX) this.#verified.clear();
  }
}

/** `user:hash` lines; blank lines and `#` comments are skipped. */
function parseHtpasswd(text: string, file: string): Map<string, string> {
  const hashes = new Map<string, string>();
  for (const [index, raw] of text.split(/\r?\n/).entries()) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const where = `${file} line ${index + 1}`;
    const colon = line.indexOf(':');
    if (colon <= 0) throw new HtpasswdError(`${where}: expected "user:bcrypt-hash"`);
    const user = line.slice(0, colon);
    const hash = line.slice(colon + 1);
    if (!BCRYPT.test(hash)) {
      throw new HtpasswdError(`${where}: user ${JSON.stringify(user)} has a ${hashKind(hash)} entry; only bcrypt is accepted (create it with "htpasswd -B")`);
    }
    if (hashes.has(user)) throw new HtpasswdError(`${where}: user ${JSON.stringify(user)} appears twice`);
    hashes.set(user, hash);
  }
  return hashes;
}

/** What kind of entry a non-bcrypt hash is, for the error message (the hash itself is never shown). */
function hashKind(hash: string): string {
  if (hash.startsWith('$apr1$')) return 'MD5 (apr1)';
  if (hash.startsWith('{SHA}')) return 'SHA-1';
  if (hash.startsWith('$5$') || hash.startsWith('$6$')) return 'SHA-crypt';
  if (hash.startsWith('$2')) return 'malformed bcrypt';
  if (hash === '') return 'empty';
  return hash.startsWith('$') ? 'unsupported' : 'crypt or plain-text';
}
