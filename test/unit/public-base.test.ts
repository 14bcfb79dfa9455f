import assert from 'node:assert/strict';
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import { BlockList } from 'node:net';
import { describe, test } from 'node:test';
import { clientAddress, isTrustedProxy, publicBase, type PublicBaseOptions } from '../../src/http/public-base.ts';

interface FakeRequest {
  headers?: IncomingHttpHeaders;
  localAddress?: string;
  localPort?: number;
  remoteAddress?: string;
}

/** Just enough of an IncomingMessage: headers and the socket's addresses. */
function request({ headers = {}, localAddress = '192.0.2.10', localPort = 5000, remoteAddress = '198.51.100.23' }: FakeRequest): IncomingMessage {
  return { headers, socket: { localAddress, localPort, remoteAddress } } as unknown as IncomingMessage;
}

function proxies(...entries: string[]): BlockList {
  const list = new BlockList();
  for (const entry of entries) {
    const [address, prefix] = entry.split('/');
    const type = address!.includes(':') ? 'ipv6' : 'ipv4';
    if (prefix === undefined) list.addAddress(address!, type);
    else list.addSubnet(address!, Number(prefix), type);
  }
  return list;
}

const NONE = proxies();
const LB = proxies('10.0.0.0/8', 'fd00::/8');
const FORWARDED = { 'x-forwarded-proto': 'https', 'x-forwarded-host': 'registry.example.com' };

function options(overrides: Partial<PublicBaseOptions> = {}): PublicBaseOptions {
  return { tls: false, trustedProxies: NONE, ...overrides };
}

describe('publicBase', () => {
  test('uses publicUrl when set, whatever the request says', () => {
    const req = request({ headers: { host: 'evil.example', ...FORWARDED }, remoteAddress: '10.0.0.5' });
    assert.equal(publicBase(req, options({ publicUrl: new URL('https://mirror.example.com'), trustedProxies: LB })), 'https://mirror.example.com');
  });

  test('keeps a publicUrl path prefix and port', () => {
    assert.equal(publicBase(request({}), options({ publicUrl: new URL('https://example.com:8443/registry') })), 'https://example.com:8443/registry');
  });

  test('never uses the Host header (CVE-2025-63761: a realm built from Host leaks credentials)', () => {
    const req = request({ headers: { host: 'attacker.example' } });
    const base = publicBase(req, options());
    assert.equal(base, 'http://192.0.2.10:5000');
    assert.ok(!base.includes('attacker'));
  });

  test('ignores X-Forwarded-* from a client that is not a trusted proxy', () => {
    const req = request({ headers: FORWARDED, remoteAddress: '198.51.100.23' });
    assert.equal(publicBase(req, options({ trustedProxies: LB })), 'http://192.0.2.10:5000');
    assert.equal(publicBase(req, options({ trustedProxies: NONE })), 'http://192.0.2.10:5000');
  });

  test('uses X-Forwarded-Proto/Host from a trusted proxy', () => {
    const req = request({ headers: FORWARDED, remoteAddress: '10.1.2.3' });
    assert.equal(publicBase(req, options({ trustedProxies: LB })), 'https://registry.example.com');
  });

  test('a trusted proxy reached over a dual-stack socket (v4-mapped address) is still trusted', () => {
    const req = request({ headers: FORWARDED, remoteAddress: '::ffff:10.1.2.3' });
    assert.equal(publicBase(req, options({ trustedProxies: LB })), 'https://registry.example.com');
  });

  test('an IPv6 trusted proxy', () => {
    const req = request({ headers: { ...FORWARDED, 'x-forwarded-proto': 'http' }, remoteAddress: 'fd12::7' });
    assert.equal(publicBase(req, options({ trustedProxies: LB })), 'http://registry.example.com');
  });

  test('forwarded host with a port, and the first of comma-separated values', () => {
    const req = request({
      headers: { 'x-forwarded-proto': 'https, http', 'x-forwarded-host': 'registry.example.com:8443, inner.lb' },
      remoteAddress: '10.0.0.9',
    });
    assert.equal(publicBase(req, options({ trustedProxies: LB })), 'https://registry.example.com:8443');
  });

  test('an unknown or missing X-Forwarded-Proto means https', () => {
    const trusted = options({ trustedProxies: LB });
    assert.equal(
      publicBase(request({ headers: { 'x-forwarded-host': 'r.example', 'x-forwarded-proto': 'javascript' }, remoteAddress: '10.0.0.9' }), trusted),
      'https://r.example',
    );
    assert.equal(publicBase(request({ headers: { 'x-forwarded-host': 'r.example' }, remoteAddress: '10.0.0.9' }), trusted), 'https://r.example');
  });

  test('a forwarded host that is not syntactically host[:port] is ignored', () => {
    for (const host of [
      'evil.example/path',
      'user@evil.example',
      'evil.example:443@good.example',
      'evil.example"><script>',
      'evil.example:port',
      'evil.example:123456',
      'evil.example\r\nx: y',
      'evil example',
      '-evil.example',
      'https://evil.example',
      '',
    ]) {
      const req = request({ headers: { 'x-forwarded-proto': 'https', 'x-forwarded-host': host }, remoteAddress: '10.0.0.9' });
      assert.equal(publicBase(req, options({ trustedProxies: LB })), 'http://192.0.2.10:5000', JSON.stringify(host));
    }
  });

  test('a bracketed IPv6 forwarded host is accepted', () => {
    const req = request({ headers: { 'x-forwarded-proto': 'https', 'x-forwarded-host': '[2001:db8::1]:8443' }, remoteAddress: '10.0.0.9' });
    assert.equal(publicBase(req, options({ trustedProxies: LB })), 'https://[2001:db8::1]:8443');
  });

  test('a trusted proxy without X-Forwarded-Host falls back to the local address, not Host', () => {
    const req = request({ headers: { host: 'evil.example', 'x-forwarded-proto': 'https' }, remoteAddress: '10.0.0.9' });
    assert.equal(publicBase(req, options({ trustedProxies: LB })), 'http://192.0.2.10:5000');
  });

  describe('local address fallback', () => {
    test('IPv4, http and https', () => {
      assert.equal(publicBase(request({ localAddress: '127.0.0.1', localPort: 5000 }), options()), 'http://127.0.0.1:5000');
      assert.equal(publicBase(request({ localAddress: '127.0.0.1', localPort: 5443 }), options({ tls: true })), 'https://127.0.0.1:5443');
    });
    test('IPv6 is bracketed', () => {
      assert.equal(publicBase(request({ localAddress: '::1', localPort: 5000 }), options()), 'http://[::1]:5000');
      assert.equal(publicBase(request({ localAddress: '2001:db8::10', localPort: 443 }), options({ tls: true })), 'https://[2001:db8::10]:443');
    });
    test('a v4-mapped address is written as IPv4', () => {
      assert.equal(publicBase(request({ localAddress: '::ffff:192.0.2.10', localPort: 5000 }), options()), 'http://192.0.2.10:5000');
    });
    test('the result is a URL a client can use', () => {
      for (const localAddress of ['127.0.0.1', '::1', '::ffff:10.0.0.1', 'fe80::1']) {
        const base = publicBase(request({ localAddress, localPort: 5000 }), options());
        assert.equal(new URL(base).port, '5000', base);
      }
    });
  });
});

describe('isTrustedProxy', () => {
  test('matches addresses and subnets of the list, v4-mapped included', () => {
    assert.equal(isTrustedProxy(request({ remoteAddress: '10.255.0.1' }), LB), true);
    assert.equal(isTrustedProxy(request({ remoteAddress: '::ffff:10.255.0.1' }), LB), true);
    assert.equal(isTrustedProxy(request({ remoteAddress: '11.0.0.1' }), LB), false);
    assert.equal(isTrustedProxy(request({ remoteAddress: '2001:db8::1' }), LB), false);
  });
  test('a socket without a remote address (already closed) is not trusted', () => {
    const req = { headers: {}, socket: {} } as unknown as IncomingMessage;
    assert.equal(isTrustedProxy(req, proxies('0.0.0.0/0')), false);
  });
});

describe('clientAddress', () => {
  test('is the socket peer for a direct client, whatever X-Forwarded-For says', () => {
    const req = request({ headers: { 'x-forwarded-for': '203.0.113.9' }, remoteAddress: '198.51.100.23' });
    assert.equal(clientAddress(req, LB), '198.51.100.23');
  });
  test("is X-Forwarded-For's first entry when a trusted proxy sent it", () => {
    const req = request({ headers: { 'x-forwarded-for': '203.0.113.9, 10.0.0.2' }, remoteAddress: '10.0.0.3' });
    assert.equal(clientAddress(req, LB), '203.0.113.9');
  });
  test('an IPv6 forwarded client', () => {
    const req = request({ headers: { 'x-forwarded-for': '2001:db8::42' }, remoteAddress: '10.0.0.3' });
    assert.equal(clientAddress(req, LB), '2001:db8::42');
  });
  test('falls back to the proxy address when X-Forwarded-For is not an IP', () => {
    for (const forwarded of ['unknown', 'attacker"; drop', '']) {
      const req = request({ headers: { 'x-forwarded-for': forwarded }, remoteAddress: '10.0.0.3' });
      assert.equal(clientAddress(req, LB), '10.0.0.3', JSON.stringify(forwarded));
    }
    assert.equal(clientAddress(request({ remoteAddress: '10.0.0.3' }), LB), '10.0.0.3');
  });
});
