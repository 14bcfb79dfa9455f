import { createHash } from 'node:crypto';
import type { HeaderValues } from '../upstream/upstream-client.ts';
import type { UpstreamIdentity } from '../upstream/upstream-registry.ts';
import { DOCXY_ANONYMOUS_TOKEN, isDocxyToken } from './client-token.ts';

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

/**
 * The headers of a request by one of docxy's own users (an upstream with clientAuth `docxy`, once
 * the authenticator has let it in): it goes upstream as docxy, with the server-side credentials;
 * the client's Authorization (docxy's token, or its Basic login) never leaves docxy.
 */
export function asDocxyUser(headers: HeaderValues): HeaderValues {
  return { ...headers, authorization: `Bearer ${DOCXY_ANONYMOUS_TOKEN}` };
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
