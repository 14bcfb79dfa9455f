// "No upstream request for an invalid name": everything the fake upstream saw (registry, token
// service and CDN) judged by the OCI grammar of src/oci, independently of how docxy routed it.
import { parseDigest } from '../../src/oci/digest.ts';
import { isValidRepositoryName, parseReference } from '../../src/oci/reference.ts';
import type { SeenRequest } from '../helpers/fake-registry.ts';

/** What docxy should never have sent upstream: an invalid repository name, tag or digest, in a path, a token scope or a blob key. */
export function invalidUpstreamRequests(seen: readonly SeenRequest[]): string[] {
  const found: string[] = [];
  for (const entry of seen) {
    const url = new URL(entry.url, 'http://upstream.invalid');
    const what = `${entry.server} ${entry.method} ${entry.url.length > 120 ? `${entry.url.slice(0, 120)}…` : entry.url}`;
    if (Object.keys(entry.headers).includes('x-fuzz-injected')) found.push(`${what}: an injected header reached the upstream`);
    const problem = entry.server === 'registry' ? registryPathProblem(url) : entry.server === 'token' ? tokenScopeProblem(entry, url) : blobKeyProblem(url);
    if (problem) found.push(`${what}: ${problem}`);
  }
  return found;
}

function registryPathProblem(url: URL): string | undefined {
  if (url.pathname === '/v2/') return undefined;
  const match = /^\/v2\/(.+)\/(manifests|blobs|tags|referrers)\/([^/]+)$/.exec(url.pathname);
  if (!match) return 'not a registry API path';
  const [, name, route, arg] = match as unknown as [string, string, string, string];
  if (!isValidRepositoryName(name)) return 'invalid repository name';
  if (route === 'manifests' && !parseReference(arg)) return 'invalid tag or digest';
  if ((route === 'blobs' || route === 'referrers') && !parseDigest(arg)) return 'invalid digest';
  if (route === 'tags' && arg !== 'list') return 'not a registry API path';
  return undefined;
}

function tokenScopeProblem(entry: SeenRequest, url: URL): string | undefined {
  const params = entry.method === 'POST' ? new URLSearchParams(entry.body ?? '') : url.searchParams;
  for (const scope of params.getAll('scope').flatMap((s) => s.split(' ')).filter(Boolean)) {
    // `type:name:actions`; a scope without both colons names nothing, and is not judged here.
    const first = scope.indexOf(':');
    const last = scope.lastIndexOf(':');
    if (first <= 0 || last <= first || !scope.startsWith('repository')) continue;
    if (!isValidRepositoryName(scope.slice(first + 1, last))) return `token scope ${JSON.stringify(scope.slice(0, 200))} names an invalid repository`;
  }
  return undefined;
}

/** The fake CDN's `?key=<repository>@<digest>`. */
function blobKeyProblem(url: URL): string | undefined {
  const key = url.searchParams.get('key') ?? '';
  const at = key.lastIndexOf('@');
  return isValidRepositoryName(key.slice(0, at)) && parseDigest(key.slice(at + 1)) ? undefined : 'invalid blob key';
}
