import { DigestVerifier, parseDigest } from '../oci/digest.ts';

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
 * The check of a verified storage write, chunk by chunk as the bytes arrive: the digest (through
 * the one DigestVerifier) and the length, which fails at once when the content outgrows it, so a
 * runaway upstream is stopped early rather than after it sent everything.
 */
export class ContentVerifier {
  readonly expected: Readonly<ContentExpectation>;
  readonly #digest: DigestVerifier;
  #size = 0;

  /** Throws on an invalid digest or size. */
  constructor(expected: ContentExpectation) {
    const digest = parseDigest(expected.digest);
    if (!digest) throw new Error(`invalid digest: ${JSON.stringify(expected.digest)}`);
    const { size } = expected;
    if (size !== undefined && (!Number.isSafeInteger(size) || size < 0)) throw new RangeError(`invalid expected size: ${size}`);
    this.expected = size === undefined ? { digest: digest.value } : { digest: digest.value, size };
    this.#digest = new DigestVerifier(digest);
  }

  /** Bytes seen so far. */
  get size(): number {
    return this.#size;
  }

  /** Counts and hashes a chunk; throws DigestMismatchError once the content outgrows its size. */
  update(chunk: Buffer): void {
    this.#size += chunk.length;
    const { size } = this.expected;
    if (size !== undefined && this.#size > size) throw this.#mismatch(undefined);
    this.#digest.update(chunk);
  }

  /** After the last chunk: throws DigestMismatchError unless the content is what was expected. */
  finish(): void {
    if (!this.#digest.matches(this.expected.size)) throw this.#mismatch(this.#digest.actual());
  }

  #mismatch(actualDigest: string | undefined): DigestMismatchError {
    return new DigestMismatchError({ expectedDigest: this.expected.digest, actualDigest, expectedSize: this.expected.size, actualSize: this.#size });
  }
}

/** Throws DigestMismatchError unless `bytes` are the content expected (invalid expectations throw too). */
export function verifyContent(bytes: Buffer, expected: ContentExpectation): void {
  const verifier = new ContentVerifier(expected);
  verifier.update(bytes);
  verifier.finish();
}
