import { Readable } from 'node:stream';
import type { Digest } from '../../src/oci/digest.ts';
import type { HeaderValues } from '../../src/upstream/upstream-client.ts';
import type { UpstreamAnswer, UpstreamBody, UpstreamCall, UpstreamIdentity, UpstreamRegistry, UpstreamRepository } from '../../src/upstream/upstream-registry.ts';

/** One request the core made through the port. */
export interface PortCall {
  what: 'manifest' | 'blob' | 'tags' | 'referrers';
  upstream: string;
  repository: string;
  /** The tag or digest (for tags: the query). */
  ref: string;
  method: 'GET' | 'HEAD';
  identity: UpstreamIdentity;
  headers: HeaderValues;
}

/** What the fake upstream answers: a response (identity and authentication as the port would say), or a thrown error. */
export type PortReply = { status: number; headers?: HeaderValues; body?: Buffer | string } | Error;

export type FakeUpstreamPort = UpstreamRegistry & { calls: PortCall[] };

/** A body as the port hands it out: readable once, or let go of with dump(). */
export function portBody(data?: Buffer | string): UpstreamBody {
  const body = Readable.from(data === undefined || data.length === 0 ? [] : [Buffer.from(data)], { objectMode: false });
  return Object.assign(body, {
    async dump() {
      body.resume();
    },
  });
}

/**
 * The upstream port as the core sees it, answering with `reply` and recording every call: what
 * the core asked, as which identity, with which headers. `ping`, `authScheme` and the token
 * service are not part of what these tests drive.
 */
export function fakeUpstreamPort(reply: (call: PortCall) => PortReply | Promise<PortReply>): FakeUpstreamPort {
  const calls: PortCall[] = [];
  const answer = async (what: PortCall['what'], target: UpstreamRepository, ref: string, call: UpstreamCall): Promise<UpstreamAnswer> => {
    const { authorization: _ignored, ...headers } = call.headers ?? {};
    const recorded: PortCall = { what, upstream: target.upstream.name, repository: target.repository, ref, method: call.method, identity: call.identity, headers };
    calls.push(recorded);
    const result = await reply(recorded);
    if (result instanceof Error) throw result;
    return {
      status: result.status,
      headers: result.headers ?? {},
      body: portBody(result.body),
      identity: call.identity.kind === 'client' ? 'client' : 'docxy',
      authenticated: call.identity.kind !== 'none',
    };
  };
  const unsupported = () => Promise.reject(new Error('not part of this fake'));
  return {
    calls,
    manifest: (target, reference, call) => answer('manifest', target, reference, call),
    blob: (target, digest: Digest, call) => answer('blob', target, digest.value, call),
    tags: (target, query, call) => answer('tags', target, query, call),
    referrers: (target, digest: Digest, query, call) => answer('referrers', target, `${digest.value}${query}`, call),
    ping: unsupported,
    authScheme: unsupported,
    knownService: () => undefined,
    requestToken: unsupported,
  };
}
