import { createHash, type Hash } from 'node:crypto';

/** Registered algorithms and the exact length of their hex encoding. */
const ALGORITHMS: Record<string, number> = { sha256: 64, sha512: 128 };

export interface Digest {
  algorithm: 'sha256' | 'sha512';
  hex: string;
  /** `algorithm:hex`, the canonical form. */
  value: string;
}

/**
 * Parses an OCI digest. Only sha256 and sha512 are accepted (the registered algorithms);
 * the encoded part must be lowercase hex of the exact length. Returns undefined when invalid.
 */
export function parseDigest(input: string): Digest | undefined {
  const colon = input.indexOf(':');
  if (colon <= 0) return undefined;
  const algorithm = input.slice(0, colon);
  const hex = input.slice(colon + 1);
  const length = ALGORITHMS[algorithm];
  if (length === undefined || hex.length !== length || !/^[a-f0-9]+$/.test(hex)) return undefined;
  return { algorithm: algorithm as Digest['algorithm'], hex, value: input };
}

export function isDigest(input: string): boolean {
  return parseDigest(input) !== undefined;
}

/**
 * Checks content against the digest (and, when known, the length) it is announced as, while it
 * passes: feed every chunk to `update`, then ask `matches()`. The one digest check of docxy:
 * cache fills, stored content, manifests fetched upstream and `docxy cache verify` all use it.
 */
export class DigestVerifier {
  readonly expected: Digest;
  /** Bytes seen so far. */
  bytes = 0;
  readonly #hash: Hash;
  #actual: string | undefined;

  constructor(expected: Digest) {
    this.expected = expected;
    this.#hash = createHash(expected.algorithm);
  }

  update(chunk: Buffer): void {
    this.bytes += chunk.length;
    this.#hash.update(chunk);
  }

  /** `algorithm:hex` of what passed; ends hashing (later chunks are not counted in it). */
  actual(): string {
    this.#actual ??= `${this.expected.algorithm}:${this.#hash.digest('hex')}`;
    return this.#actual;
  }

  /** Whether what passed hashes to the expected digest and, when `size` is given, is that long. */
  matches(size?: number): boolean {
    return this.actual() === this.expected.value && (size === undefined || this.bytes === size);
  }
}

/** The digest of `bytes` with `algorithm`. */
export function digestOf(bytes: Buffer, algorithm: Digest['algorithm'] = 'sha256'): Digest {
  const hex = createHash(algorithm).update(bytes).digest('hex');
  return { algorithm, hex, value: `${algorithm}:${hex}` };
}
