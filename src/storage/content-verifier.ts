import { DigestVerifier, parseDigest } from '../oci/digest.ts';
import { openThreadedHash, warmHashThread, type ThreadedHash } from '../oci/hash-thread.ts';

/** Contents at least this large (by their expected size) are hashed on the hashing thread. */
export const THREADED_HASH_MIN_BYTES = 4 * 1024 * 1024;

/**
 * A write of content that may be large is coming (a blob fill about to ask its upstream): the
 * hashing thread is started now, so that its boot overlaps the upstream's answer rather than
 * holding up the first chunks (measured: ~60 ms off a 64 MiB cold pull through a 200 MiB/s line).
 */
export function prepareLargeWrite(): void {
  warmHashThread();
}

/** What content must be to be stored: its digest and, when known, its length in bytes. */
export interface ContentExpectation {
  /** `algorithm:hex` (sha256 or sha512). */
  digest: string;
  size?: number;
}

/** The content did not match what it was announced as; nothing was stored. */
export class DigestMismatchError extends Error {
  readonly expectedDigest: string;
  /** Undefined when the write was stopped early, as soon as it outgrew `expectedSize`. */
  readonly actualDigest: string | undefined;
  readonly expectedSize: number | undefined;
  /** Bytes received (when stopped early: at least that many were sent). */
  readonly actualSize: number;

  constructor(details: { expectedDigest: string; actualDigest: string | undefined; expectedSize: number | undefined; actualSize: number }) {
    const what =
      details.actualDigest === undefined
        ? `more than the ${details.expectedSize} bytes expected`
        : `${details.actualDigest} (${details.actualSize} bytes)`;
    super(`content does not match ${details.expectedDigest}${details.expectedSize === undefined ? '' : ` (${details.expectedSize} bytes)`}: got ${what}`);
    this.name = 'DigestMismatchError';
    this.expectedDigest = details.expectedDigest;
    this.actualDigest = details.actualDigest;
    this.expectedSize = details.expectedSize;
    this.actualSize = details.actualSize;
  }
}

/**
 * The check of a verified storage write, chunk by chunk as the bytes arrive: the digest and the
 * length, which fails at once when the content outgrows it, so a runaway upstream is stopped
 * early rather than after it sent everything. The digest is computed by the one DigestVerifier,
 * or, for a content announced as large (THREADED_HASH_MIN_BYTES), on the hashing thread
 * (hash-thread.ts), off the main thread that streams it.
 */
export class ContentVerifier {
  readonly expected: Readonly<ContentExpectation>;
  readonly #digest: DigestVerifier;
  readonly #threaded: ThreadedHash | undefined;
  #size = 0;

  /**
   * Throws on an invalid digest or size. `threaded`: a large content may be hashed on the hashing
   * thread (then `finish` must be awaited); otherwise it is hashed here and `finishNow` decides.
   */
  constructor(expected: ContentExpectation, options: { threaded?: boolean } = {}) {
    const digest = parseDigest(expected.digest);
    if (!digest) throw new Error(`invalid digest: ${JSON.stringify(expected.digest)}`);
    const { size } = expected;
    if (size !== undefined && (!Number.isSafeInteger(size) || size < 0)) throw new RangeError(`invalid expected size: ${size}`);
    this.expected = size === undefined ? { digest: digest.value } : { digest: digest.value, size };
    this.#digest = new DigestVerifier(digest);
    this.#threaded = options.threaded && size !== undefined && size >= THREADED_HASH_MIN_BYTES ? openThreadedHash(digest.algorithm) : undefined;
  }

  /** Bytes seen so far. */
  get size(): number {
    return this.#size;
  }

  /**
   * Counts and hashes a chunk; throws DigestMismatchError once the content outgrows its size.
   * False: the hashing thread has all it can take, await `ready()` before the next chunk.
   */
  update(chunk: Buffer): boolean {
    this.#size += chunk.length;
    const { size } = this.expected;
    if (size !== undefined && this.#size > size) {
      this.#threaded?.abort();
      throw this.#mismatch(undefined);
    }
    if (this.#threaded) return this.#threaded.update(chunk);
    this.#digest.update(chunk);
    return true;
  }

  /** Resolves when the next chunk may be given (see `update`). */
  ready(): Promise<void> {
    return this.#threaded ? this.#threaded.ready() : Promise.resolve();
  }

  /** After the last chunk: rejects with DigestMismatchError unless the content is what was expected. */
  async finish(): Promise<void> {
    if (this.#threaded) {
      const actual = `${this.expected.digest.split(':')[0]}:${await this.#threaded.digest()}`;
      const { size } = this.expected;
      if (actual !== this.expected.digest || (size !== undefined && this.#size !== size)) throw this.#mismatch(actual);
      return;
    }
    this.finishNow();
  }

  /** `finish` for a content hashed on this thread (never a threaded one). */
  finishNow(): void {
    if (!this.#digest.matches(this.expected.size)) throw this.#mismatch(this.#digest.actual());
  }

  /** The write was given up: the hashing thread forgets it. */
  abandon(): void {
    this.#threaded?.abort();
  }

  #mismatch(actualDigest: string | undefined): DigestMismatchError {
    return new DigestMismatchError({ expectedDigest: this.expected.digest, actualDigest, expectedSize: this.expected.size, actualSize: this.#size });
  }
}

/** Throws DigestMismatchError unless `bytes` are the content expected (invalid expectations throw too). */
export function verifyContent(bytes: Buffer, expected: ContentExpectation): void {
  const verifier = new ContentVerifier(expected);
  verifier.update(bytes);
  verifier.finishNow();
}
