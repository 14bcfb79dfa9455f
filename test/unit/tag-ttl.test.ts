// How long a tag's digest is trusted: the first matching rule, else the upstream's TTL, else the cache's.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { tagTtlMs } from '../../src/core/tag-ttl.ts';
import { globToRegExp } from '../../src/oci/repository-glob.ts';

test('* matches within one path segment, ** across segments', () => {
  assert.ok(globToRegExp('library/*').test('library/nginx'));
  assert.ok(!globToRegExp('library/*').test('library/nginx/extra'));
  assert.ok(!globToRegExp('library/*').test('other/nginx'));
  assert.ok(globToRegExp('team/**').test('team/a/b/c'));
  assert.ok(globToRegExp('**/base').test('org/images/base'));
  assert.ok(globToRegExp('*/ttl-*').test('alice/ttl-hidden'));
  assert.ok(!globToRegExp('*/ttl-*').test('alice/hidden'));
});

test('the rest of a glob is literal: dots and regex characters match only themselves', () => {
  assert.ok(globToRegExp('my.app').test('my.app'));
  assert.ok(!globToRegExp('my.app').test('myxapp'));
  assert.ok(globToRegExp('a+b/(c)').test('a+b/(c)'));
  assert.ok(!globToRegExp('nginx').test('nginx-extra'), 'anchored at both ends');
});

test('the first rule matching upstream and repository decides; a rule without upstream matches every one', () => {
  const config = {
    tagTtlSeconds: 600,
    tagTtlRules: [
      { upstream: 'docker.io', repository: 'library/*', seconds: 3600 },
      { repository: 'library/**', seconds: 60 },
      { repository: '**', seconds: 5 },
    ],
  };
  const hub = { name: 'docker.io' };
  const ghcr = { name: 'ghcr.io' };
  assert.equal(tagTtlMs(config, hub, 'library/nginx'), 3_600_000);
  assert.equal(tagTtlMs(config, ghcr, 'library/nginx'), 60_000, 'the first rule is for docker.io only');
  assert.equal(tagTtlMs(config, hub, 'library/a/b'), 60_000);
  assert.equal(tagTtlMs(config, hub, 'owner/app'), 5_000);
});

test('without a matching rule: the upstream\'s own TTL, else the cache\'s', () => {
  const config = { tagTtlSeconds: 600, tagTtlRules: [{ repository: 'library/*', seconds: 3600 }] };
  assert.equal(tagTtlMs(config, { name: 'ghcr.io', tagTtlSeconds: 30 }, 'owner/app'), 30_000);
  assert.equal(tagTtlMs(config, { name: 'ghcr.io' }, 'owner/app'), 600_000);
  assert.equal(tagTtlMs(config, { name: 'ghcr.io', tagTtlSeconds: 30 }, 'library/app'), 3_600_000, 'rules win over the upstream\'s TTL');
  assert.equal(tagTtlMs(config, { name: 'ghcr.io', tagTtlSeconds: 0 }, 'owner/app'), 0, 'zero: always revalidate');
});
