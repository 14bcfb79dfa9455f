import { createHash } from 'node:crypto';
import type { HeaderValues } from '../upstream/upstream-client.ts';
import type { UpstreamIdentity } from '../upstream/upstream-registry.ts';
import { isDocxyToken } from './client-token.ts';

/**
 * Who a client's request goes upstream as, decided here once from its Authorization: none at
 * all; docxy's own anonymous token (docxy then authenticates as itself); or the client's own login
 * (its `docker login`, or the upstream token it got through docxy), passed through untouched.
 */
export function identityOf(headers: HeaderValues): UpstreamIdentity {
  const { authorization } = headers;
  if (authorization === undefined) return { kind: 'none' };
  if (isDocxyToken(authorization)) return { kind: 'docxy' };
  return { kind: 'client', authorization };
}

/** Whether what this identity gets, every user of the mirror may read (docxy acted as itself). */
export function actsAsDocxy(identity: UpstreamIdentity): boolean {
  return identity.kind !== 'client';
}

/**
 * A short key naming an identity, for whatever is remembered per identity (a fill's leader, a
 * proven access, a tag's 404): `docxy` for docxy itself, a hash of the credentials for a login
 * (never the credentials themselves).
 */
export function identityKey(identity: UpstreamIdentity): string {
  if (identity.kind !== 'client') return 'docxy';
  return createHash('sha256').update(String(identity.authorization)).digest('hex').slice(0, 32);
}
