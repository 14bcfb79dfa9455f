// Issue 10, egress rules: which addresses an upstream may send docxy to, checked on the address
// the socket connects to.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { describe, test } from 'node:test';
import {
  EgressRefusal,
  createEgressConnector,
  createEgressLookup,
  createEgressPolicy,
  internalRange,
  type Resolver,
} from '../../src/upstream/egress-policy.ts';

/** A resolver that answers every name with `addresses` (the next list at each call, the last one repeated). */
function resolverOf(...answers: string[][]): Resolver & { calls: number } {
  const resolver = Object.assign(
    ((_hostname, _options, callback) => {
      const addresses = answers[Math.min(resolver.calls++, answers.length - 1)]!;
      callback(null, addresses.map((address) => ({ address, family: address.includes(':') ? 6 : 4 })));
    }) as Resolver,
    { calls: 0 },
  );
  return resolver;
}

describe('internalRange', () => {
  const internal: Array<[string, RegExp]> = [
    ['127.0.0.1', /loopback/],
    ['127.255.0.9', /loopback/],
    ['::1', /loopback/],
    ['10.1.2.3', /private/],
    ['172.16.0.1', /private/],
    ['172.31.255.255', /private/],
    ['192.168.1.1', /private/],
    ['fc00::1', /private/],
    ['fd12:3456::1', /private/],
    ['169.254.169.254', /link-local/],
    ['fe80::1', /link-local/],
    ['fe80::1%eth0', /link-local/],
    ['100.64.0.1', /CGNAT/],
    ['100.127.255.254', /CGNAT/],
    ['0.0.0.0', /unspecified/],
    ['::', /unspecified/],
    ['224.0.0.1', /multicast/],
    ['ff02::1', /multicast/],
    ['255.255.255.255', /broadcast/],
    // IPv4-mapped, in both spellings, NAT64 and IPv4-compatible forms of internal addresses.
    ['::ffff:169.254.169.254', /link-local/],
    ['::ffff:a9fe:a9fe', /link-local/],
    ['::ffff:127.0.0.1', /loopback/],
    ['::ffff:10.0.0.1', /private/],
    ['64:ff9b::169.254.169.254', /link-local/],
    ['64:ff9b::7f00:1', /loopback/],
    ['::127.0.0.1', /IPv4-compatible/],
  ];
  for (const [address, reason] of internal) {
    test(`${address} is internal`, () => assert.match(internalRange(address) ?? 'public', reason));
  }

  test('public addresses are not', () => {
    for (const address of ['8.8.8.8', '1.1.1.1', '172.32.0.1', '172.15.255.255', '100.128.0.1', '100.63.255.255', '192.169.0.1', '169.255.0.1', '2606:4700::1111', '::ffff:8.8.8.8', '64:ff9b::8.8.8.8']) {
      assert.equal(internalRange(address), undefined, address);
    }
  });

  test('what is not an IP address is refused', () => {
    assert.equal(internalRange('metadata.google.internal'), 'not an IP address');
  });
});

describe('createEgressPolicy', () => {
  test('by default every internal address is refused', () => {
    const policy = createEgressPolicy();
    assert.equal(policy.allowHttpRedirects, false);
    assert.match(policy.refusal('169.254.169.254') ?? '', /link-local/);
    assert.match(policy.refusal('127.0.0.1') ?? '', /loopback/);
    assert.equal(policy.refusal('93.184.216.34'), undefined);
  });

  test('allowPrivate lets exactly its ranges in, IPv4-mapped forms included', () => {
    const policy = createEgressPolicy({ allowPrivate: ['127.0.0.0/8', '10.1.0.0/16'], allowHttpRedirects: true });
    assert.equal(policy.allowHttpRedirects, true);
    for (const address of ['127.0.0.1', '::ffff:127.0.0.1', '10.1.9.9']) assert.equal(policy.refusal(address), undefined, address);
    for (const address of ['10.2.0.1', '169.254.169.254', '::1', '192.168.0.1']) assert.ok(policy.refusal(address), address);
  });
});

describe('createEgressLookup', () => {
  const lookup = (resolve: Resolver, all: boolean) =>
    new Promise<{ error: Error | null; address: unknown; family?: number | undefined }>((done) => {
      createEgressLookup(createEgressPolicy(), resolve)('cdn.example', { all }, (error, address, family) => done({ error, address, family }));
    });

  test('a name that resolves to the metadata address is refused, naming both', async () => {
    const { error } = await lookup(resolverOf(['169.254.169.254']), false);
    assert.ok(error instanceof EgressRefusal);
    assert.match(error.message, /cdn\.example \(169\.254\.169\.254\) is link-local/);
  });

  test('internal addresses among public ones are dropped; the first usable one is connected to', async () => {
    const single = await lookup(resolverOf(['10.0.0.1', '93.184.216.34', '::1', '2606:4700::1111']), false);
    assert.equal(single.error, null);
    assert.equal(single.address, '93.184.216.34');
    assert.equal(single.family, 4);
    const all = await lookup(resolverOf(['10.0.0.1', '93.184.216.34', '::1', '2606:4700::1111']), true);
    assert.deepEqual(all.address, [
      { address: '93.184.216.34', family: 4 },
      { address: '2606:4700::1111', family: 6 },
    ]);
  });
});

describe('createEgressConnector', () => {
  function connect(connector: ReturnType<typeof createEgressConnector>, hostname: string, port: number): Promise<Socket> {
    return new Promise((resolve, reject) => {
      connector({ hostname, host: `${hostname}:${port}`, protocol: 'http:', port: String(port) }, (error, socket) => (error ? reject(error) : resolve(socket as Socket)));
    });
  }

  test('an IP literal is refused before any name resolution or socket', async () => {
    const resolve = resolverOf(['93.184.216.34']);
    const connector = createEgressConnector(createEgressPolicy(), {}, resolve);
    for (const host of ['169.254.169.254', '[::ffff:169.254.169.254]', '[fe80::1]']) {
      await assert.rejects(connect(connector, host, 80), (error: unknown) => error instanceof EgressRefusal && /link-local/.test(error.message));
    }
    assert.equal(resolve.calls, 0);
  });

  test('the address checked is the address connected to: a name that rebinds to an internal address is refused at that connect', async () => {
    const server = createServer((socket) => socket.end());
    let connections = 0;
    server.on('connection', () => connections++);
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const { port } = server.address() as AddressInfo;
    try {
      // First answer: the allowed test address; then the name rebinds to the metadata service, then to loopback outside allowPrivate.
      const resolve = resolverOf(['127.0.0.1'], ['169.254.169.254'], ['127.0.0.2']);
      const connector = createEgressConnector(createEgressPolicy({ allowPrivate: ['127.0.0.1/32'], allowHttpRedirects: false }), {}, resolve);
      const socket = await connect(connector, 'cdn.example', port);
      socket.destroy();
      await assert.rejects(connect(connector, 'cdn.example', port), (error: unknown) => error instanceof EgressRefusal && /169\.254\.169\.254/.test(error.message));
      await assert.rejects(connect(connector, 'cdn.example', port), (error: unknown) => error instanceof EgressRefusal && /\(127\.0\.0\.2\) is loopback/.test(error.message));
      assert.equal(resolve.calls, 3);
      assert.equal(connections, 1);
    } finally {
      server.close();
    }
  });
});
