import type { AccessRule } from '../config/types.ts';
import { RegistryError } from '../oci/errors.ts';
import { globToRegExp } from '../oci/repository-glob.ts';

/** Who asks for what: the user (undefined: no login), the upstream's name, the repository there. */
export interface RuleSubject {
  user: string | undefined;
  upstream: string;
  repository: string;
}

/** The user name a rule's `users` uses for clients without a login. */
export const ANONYMOUS_USER = 'anonymous';

/**
 * The decision of `access.rules` for one request: the first rule that matches decides; none
 * matching allows. A rule matches when every field it sets matches: `users` (names, "anonymous"
 * for a client without a login), `upstream` (the upstream's name), `repositories` (globs).
 */
export function ruleDecision(rules: readonly AccessRule[], subject: RuleSubject): 'allow' | 'deny' {
  for (const rule of rules) {
    if (ruleMatches(rule, subject)) return rule.action;
  }
  return 'allow';
}

function ruleMatches(rule: AccessRule, subject: RuleSubject): boolean {
  if (rule.users !== undefined && !rule.users.includes(subject.user ?? ANONYMOUS_USER)) return false;
  if (rule.upstream !== undefined && rule.upstream !== subject.upstream) return false;
  return rule.repositories.some((glob) => globToRegExp(glob).test(subject.repository));
}

/** The 403 a pull the rules refuse gets: it names the repository, the upstream and who asked (never a credential). */
export function deniedByRules(subject: RuleSubject): RegistryError {
  const who = subject.user === undefined ? 'anonymous clients' : `user ${subject.user}`;
  return new RegistryError('DENIED', `pulling ${subject.repository} from ${subject.upstream} is denied to ${who} by this mirror's access rules`, {
    detail: { upstream: subject.upstream, repository: subject.repository },
  });
}
