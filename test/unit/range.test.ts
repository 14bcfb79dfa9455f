// Range parsing for blobs served from the cache: one `bytes=` range against a known size.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseRange, rangeNotSatisfiable } from '../../src/core/range.ts';

test('a range within the content is served as asked; an end past it is clamped', () => {
  assert.deepEqual(parseRange('bytes=0-99', 1000), { start: 0, end: 99 });
  assert.deepEqual(parseRange('bytes=500-', 1000), { start: 500, end: 999 });
  assert.deepEqual(parseRange('bytes=900-5000', 1000), { start: 900, end: 999 });
  assert.deepEqual(parseRange(' bytes=1-1 ', 1000), { start: 1, end: 1 }, 'surrounding spaces are ignored');
});

test('a suffix range is the last bytes, at most the whole content', () => {
  assert.deepEqual(parseRange('bytes=-100', 1000), { start: 900, end: 999 });
  assert.deepEqual(parseRange('bytes=-5000', 1000), { start: 0, end: 999 });
  assert.equal(parseRange('bytes=-0', 1000), 'unsatisfiable');
});

test('a range that starts beyond the content, or ends before it starts, cannot be satisfied', () => {
  assert.equal(parseRange('bytes=1000-', 1000), 'unsatisfiable');
  assert.equal(parseRange('bytes=1000-1001', 1000), 'unsatisfiable');
  assert.equal(parseRange('bytes=10-5', 1000), 'unsatisfiable');
  assert.equal(parseRange('bytes=0-', 0), 'unsatisfiable', 'nothing of empty content');
});

test('no range, a malformed one, or several: the whole content (undefined)', () => {
  for (const header of [undefined, '', 'bytes=-', 'bytes=a-b', 'items=0-1', 'bytes=0-1,5-6', 'bytes 0-1']) {
    assert.equal(parseRange(header, 1000), undefined, String(header));
  }
});

test('of repeated Range headers, the first counts', () => {
  assert.deepEqual(parseRange(['bytes=0-9', 'bytes=10-19'], 1000), { start: 0, end: 9 });
});

test('the 416 names the content size', () => {
  const error = rangeNotSatisfiable(1000);
  assert.equal(error.code, 'RANGE_INVALID');
  assert.equal(error.status, 416);
  assert.deepEqual(error.headers, { 'content-range': 'bytes */1000' });
});
