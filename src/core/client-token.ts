/**
 * The token docxy hands a client that brings no credentials of its own when docxy authenticates
 * upstream by itself (clientAuth `forward`): with the operator's server-side credentials, for an
 * upstream that uses no bearer tokens, or when the upstream's token service cannot be reached.
 * It grants nothing by itself; a request carrying it is served with docxy's own upstream
 * authorization, so the operator's upstream token never leaves docxy.
 */
export const DOCXY_ANONYMOUS_TOKEN = 'docxy-anonymous';

const LIFETIME_S = 300;

/** A token endpoint's JSON answer (the Docker token specification's fields, `access_token` for OAuth2 clients). */
export interface TokenResponse {
  token: string;
  access_token: string;
  expires_in: number;
  issued_at: string;
}

export function isDocxyToken(authorization: string | string[] | undefined): boolean {
  const value = Array.isArray(authorization) ? authorization[0] : authorization;
  return value === `Bearer ${DOCXY_ANONYMOUS_TOKEN}`;
}

export function docxyTokenResponse(): TokenResponse {
  return tokenResponse(DOCXY_ANONYMOUS_TOKEN, LIFETIME_S, new Date());
}

export function tokenResponse(token: string, expiresIn: number, issuedAt: Date): TokenResponse {
  return { token, access_token: token, expires_in: expiresIn, issued_at: issuedAt.toISOString() };
}
