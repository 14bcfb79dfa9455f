import type { AccessConfig, AccessRule, UpstreamConfig } from '../config/types.ts';
import type { TokenAuthority } from './authenticator.ts';
import { RegistryError } from '../oci/errors.ts';
import { clientKey, IpRules, parseClientIp } from './ip-rules.ts';
import { mostConstrained, RateLimiter, type BudgetState, type RateLimiterOptions } from './rate-limiter.ts';
import { deniedByRules, ruleDecision } from './repository-rules.ts';

/** What the policy needs of docxy's token authority (authenticator.ts). */
export type ClientAuthenticator = Pick<TokenAuthority, 'authenticate' | 'challenge'>;

/** The budgets of every client; they outlive a policy, so that a reload keeps what was spent. */
export interface Budgets {
  perIp: RateLimiter;
  perUser: RateLimiter;
}

/** A client let in before routing: its budget key, the headers that tell its budget, and where its bytes are charged. */
export interface ClientPass {
  /** The address in messages: the IPv4 address, or the IPv6 /64. */
  key: string | undefined;
  /** `RateLimit-*` of the most constrained budget (empty when no limit is configured). */
  headers: Record<string, string>;
  /** Counts bytes sent to the client against its byte budgets (its address's, and its user's once known). */
  charge(bytes: number): void;
}

/** What a registry request may go on with. */
export interface RegistryPass {
  /** The docxy user it authenticated as (undefined: anonymous, or an upstream with `clientAuth: forward`). */
  user: string | undefined;
  /** The client logged in to docxy (`clientAuth: docxy`): docxy fetches upstream as itself, its Authorization stays home. */
  docxyUser: boolean;
  /** `RateLimit-*` again, now over the address's and the user's budgets. */
  rateLimitHeaders: Record<string, string>;
  /** Counts bytes sent against the address's and the user's byte budgets. */
  charge(bytes: number): void;
}

export interface RegistrySubject {
  upstream: UpstreamConfig;
  /** The repository as the upstream names it (`library/nginx`): what rules match. */
  repository: string;
  /** The name as the client wrote it (the scope of its token). */
  clientName: string;
  /** The client's Authorization. */
  authorization: string | string[] | undefined;
  /** docxy's token endpoint for this upstream, for a 401's challenge. */
  realm: string;
}

/**
 * The `access` section as decisions, rebuilt on every reload (the budgets carry over): (a) for
 * every request before it is routed, the client's address against `allowIps`/`denyIps` (403
 * DENIED) and its address's budget (429); (b) for a registry request once its upstream and
 * repository are known and before anything is asked upstream, the login (for `clientAuth: docxy`
 * upstreams), `rules` (403 DENIED naming the repository) and the user's budget (429).
 */
export class AccessPolicy {
  readonly budgets: Budgets;
  private readonly ips: IpRules;
  private readonly rules: readonly AccessRule[];
  private readonly authenticator: ClientAuthenticator;

  constructor(access: AccessConfig, authenticator: ClientAuthenticator, options: { budgets?: Budgets; limiter?: RateLimiterOptions } = {}) {
    this.ips = new IpRules(access.allowIps, access.denyIps);
    this.rules = access.rules;
    this.authenticator = authenticator;
    if (options.budgets) {
      options.budgets.perIp.setLimits(access.limits.perIp);
      options.budgets.perUser.setLimits(access.limits.perUser);
    }
    this.budgets = options.budgets ?? {
      perIp: new RateLimiter(access.limits.perIp, options.limiter),
      perUser: new RateLimiter(access.limits.perUser, options.limiter),
    };
  }

  /**
   * (a) Refuses a client whose address is not allowed or whose address's budget is spent; else
   * charges one request to it (none when `count` is false: health probes).
   */
  admitClient(address: string | undefined, count = true): ClientPass {
    const ip = address !== undefined ? parseClientIp(address) : undefined;
    // No address (the client already left): nothing to count, and an allowlist lets nobody unknown in.
    const refusal = ip ? this.ips.refusal(ip) : this.ips.restricted ? 'not-allowed' : undefined;
    if (refusal) {
      const who = ip ? `your address ${ip.address}` : 'an unknown address';
      const why = refusal === 'denied' ? 'is denied access to' : 'is not among the addresses allowed to use';
      throw new RegistryError('DENIED', `${who} ${why} this mirror`, { detail: { address: ip?.address } });
    }
    if (!ip || !count) return { key: undefined, headers: {}, charge: () => undefined };
    const key = clientKey(ip);
    const admission = this.budgets.perIp.admit(key);
    const scope = ip.family === 'ipv4' ? `your address ${key}` : `your network ${key}`;
    if (admission.refused) throw tooManyRequests(admission.refused, scope, admission.budgets);
    const perIp = this.budgets.perIp;
    return { key, headers: rateLimitHeaders(admission.budgets), charge: (bytes) => perIp.charge(key, bytes) };
  }

  /**
   * `/v2/` of an upstream whose clients log in to docxy: docxy answers it itself. Without
   * credentials, the challenge (as Docker Hub, so that `docker login` sends them and anonymous
   * clients fetch a token); with them, the authenticator's verdict (throws its 401).
   */
  async admitPing(subject: Pick<RegistrySubject, 'upstream' | 'authorization' | 'realm'>): Promise<void> {
    if (subject.authorization === undefined) throw this.authenticator.challenge({ realm: subject.realm });
    await this.authenticator.authenticate({ ...subject, repository: undefined, clientName: undefined });
  }

  /** (b) The login (`clientAuth: docxy` upstreams), the repository rules and the user's budget, in that order; throws the refusal. */
  async admitRegistryRequest(client: ClientPass, subject: RegistrySubject): Promise<RegistryPass> {
    const { upstream, repository } = subject;
    const docxyUser = upstream.clientAuth === 'docxy';
    const user = docxyUser ? (await this.authenticator.authenticate(subject)).user : undefined;
    const rulesSubject = { user, upstream: upstream.name, repository };
    if (ruleDecision(this.rules, rulesSubject) === 'deny') throw deniedByRules(rulesSubject);
    if (user === undefined) return { user, docxyUser, rateLimitHeaders: client.headers, charge: client.charge };
    const ipBudgets = client.key !== undefined ? this.budgets.perIp.budgets(client.key) : [];
    const admission = this.budgets.perUser.admit(user);
    if (admission.refused) throw tooManyRequests(admission.refused, `user ${user}`, [...ipBudgets, ...admission.budgets]);
    const perUser = this.budgets.perUser;
    return {
      user,
      docxyUser,
      rateLimitHeaders: rateLimitHeaders([...ipBudgets, ...admission.budgets]),
      charge: (bytes) => {
        client.charge(bytes);
        perUser.charge(user, bytes);
      },
    };
  }
}

/** The standard headers for the budget closest to exhaustion; none when no limit is configured. */
function rateLimitHeaders(budgets: readonly BudgetState[]): Record<string, string> {
  const tightest = mostConstrained(budgets);
  if (!tightest) return {};
  return {
    'ratelimit-limit': String(tightest.limit),
    'ratelimit-remaining': String(tightest.remaining),
    'ratelimit-reset': String(tightest.resetSeconds),
  };
}

/** 429 naming the limit, whose it is and when the client may try again (never a credential). */
function tooManyRequests(refused: BudgetState, scope: string, budgets: readonly BudgetState[]): RegistryError {
  const wait = refused.retryAfterSeconds;
  return new RegistryError('TOOMANYREQUESTS', `the limit of ${refused.limit} ${refused.label} for ${scope} is used up; try again in ${formatWait(wait)}`, {
    detail: { limit: refused.label, retryAfterSeconds: wait },
    headers: { ...rateLimitHeaders([refused, ...budgets.filter((b) => b !== refused)]), 'retry-after': String(wait) },
  });
}

function formatWait(seconds: number): string {
  if (seconds < 120) return `${seconds} s`;
  const minutes = Math.ceil(seconds / 60);
  if (minutes < 120) return `${minutes} min`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}
