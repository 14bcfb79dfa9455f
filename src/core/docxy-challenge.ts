import type { HeaderValues } from '../upstream/upstream-client.ts';
import { formatChallenge, rewriteChallengeRealm } from '../upstream/challenge.ts';

/**
 * The answer's headers with every Bearer challenge pointed at docxy's token endpoint (`realm`),
 * keeping service, scope and error: clients then log in through docxy, never past it.
 */
export function withDocxyRealm(headers: HeaderValues, realm: string): HeaderValues {
  const header = headers['www-authenticate'];
  if (header === undefined) return headers;
  return { ...headers, 'www-authenticate': rewriteChallengeRealm(header, realm) };
}

/** docxy's own Bearer challenge, for when the upstream cannot give one. */
export function docxyChallenge(realm: string, service: string): string {
  return formatChallenge({ scheme: 'bearer', params: { realm, service } });
}
