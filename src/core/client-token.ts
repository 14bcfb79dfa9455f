/**
 * The token docxy hands a client that brings no credentials of its own when docxy authenticates
 * upstream by itself: with the operator's server-side credentials, for an upstream that uses
 * no bearer tokens, or when the upstream's token service cannot be reached. It grants nothing
 * by itself; a request carrying it is served with docxy's own upstream authorization, so the
 * operator's upstream token never leaves docxy.
 */
export const DOCXY_ANONYMOUS_TOKEN = 'docxy-anonymous';

const LIFETIME_S = 300;

export function isDocxyToken(authorization: string | string[] | undefined): boolean {
  const value = Array.isArray(authorization) ? authorization[0] : authorization;
  return value === `Bearer ${DOCXY_ANONYMOUS_TOKEN}`;
}

export function docxyTokenResponse(): { token: string; access_token: string; expires_in: number; issued_at: string } {
  return { token: DOCXY_ANONYMOUS_TOKEN, access_token: DOCXY_ANONYMOUS_TOKEN, expires_in: LIFETIME_S, issued_at: new Date().toISOString() };
}
