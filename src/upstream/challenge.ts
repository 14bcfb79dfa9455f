/**
 * WWW-Authenticate challenges (RFC 7235) as registries send them, e.g.
 * `Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull"`.
 */
export interface Challenge {
  /** Lower-cased scheme: `bearer`, `basic`, ... */
  scheme: string;
  /** Parameter names are lower-cased; values are unquoted. */
  params: Record<string, string>;
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+/;

/**
 * Parses every challenge in a WWW-Authenticate header value. Malformed parts end the parse;
 * what was read before them is kept, so a bad header never throws.
 */
export function parseChallenges(header: string): Challenge[] {
  const challenges: Challenge[] = [];
  let rest = header.trim();
  while (rest.length > 0) {
    const scheme = TOKEN.exec(rest)?.[0];
    if (!scheme) break;
    rest = rest.slice(scheme.length).trimStart();
    const challenge: Challenge = { scheme: scheme.toLowerCase(), params: {} };
    challenges.push(challenge);
    // auth-params: name=value pairs separated by commas, until the next scheme.
    for (;;) {
      const name = TOKEN.exec(rest)?.[0];
      if (!name) break;
      const afterName = rest.slice(name.length).trimStart();
      if (!afterName.startsWith('=')) break; // a new scheme starts here
      let valueText = afterName.slice(1).trimStart();
      let value: string;
      if (valueText.startsWith('"')) {
        const parsed = readQuoted(valueText);
        if (!parsed) return challenges;
        value = parsed.value;
        valueText = parsed.rest;
      } else {
        const match = /^[^,\s]*/.exec(valueText)?.[0] ?? '';
        value = match;
        valueText = valueText.slice(match.length);
      }
      challenge.params[name.toLowerCase()] = value;
      rest = valueText.trimStart();
      if (!rest.startsWith(',')) break;
      rest = rest.slice(1).trimStart();
    }
    if (rest.startsWith(',')) rest = rest.slice(1).trimStart();
  }
  return challenges;
}

function readQuoted(text: string): { value: string; rest: string } | undefined {
  let value = '';
  for (let i = 1; i < text.length; i++) {
    const ch = text[i];
    if (ch === '\\' && i + 1 < text.length) {
      value += text[++i];
    } else if (ch === '"') {
      return { value, rest: text.slice(i + 1) };
    } else {
      value += ch;
    }
  }
  return undefined;
}

export function formatChallenge(challenge: Challenge): string {
  const scheme = challenge.scheme === 'bearer' ? 'Bearer' : challenge.scheme === 'basic' ? 'Basic' : challenge.scheme;
  const params = Object.entries(challenge.params).map(
    ([name, value]) => `${name}="${value.replace(/["\\]/g, (c) => `\\${c}`)}"`,
  );
  return params.length > 0 ? `${scheme} ${params.join(',')}` : scheme;
}

/** A token scope such as `repository:library/nginx:pull,push`. */
export interface Scope {
  type: string;
  name: string;
  actions: string;
}

export function parseScope(scope: string): Scope | undefined {
  const first = scope.indexOf(':');
  const last = scope.lastIndexOf(':');
  if (first <= 0 || last <= first + 1) return undefined;
  return { type: scope.slice(0, first), name: scope.slice(first + 1, last), actions: scope.slice(last + 1) };
}

export function formatScope(scope: Scope): string {
  return `${scope.type}:${scope.name}:${scope.actions}`;
}

/** Whether a scope type names a repository (`repository` or `repository(plugin)`). */
export function isRepositoryScope(scope: Scope): boolean {
  return scope.type === 'repository' || scope.type.startsWith('repository(');
}

/**
 * Points every Bearer challenge in a WWW-Authenticate value at docxy's own token endpoint,
 * keeping service, scope and error. Other schemes pass unchanged.
 */
export function rewriteChallengeRealm(header: string | string[], realm: string, mapScope?: (scope: string) => string): string {
  const values = Array.isArray(header) ? header : [header];
  return values
    .flatMap(parseChallenges)
    .map((challenge) => {
      if (challenge.scheme !== 'bearer') return formatChallenge(challenge);
      const { realm: _upstreamRealm, ...rest } = challenge.params;
      const params: Record<string, string> = { realm, ...rest };
      if (mapScope && params.scope) params.scope = params.scope.split(' ').map(mapScope).join(' ');
      return formatChallenge({ scheme: 'bearer', params });
    })
    .join(', ');
}
