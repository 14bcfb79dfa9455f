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

export function createDigestHash(digest: Digest): Hash {
  return createHash(digest.algorithm);
}
