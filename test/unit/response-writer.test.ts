import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { BufferBody, type RegistryResponse } from '../../src/core/registry.ts';
import type { RequestLog } from '../../src/http/context.ts';
import { sendProxyResponse } from '../../src/http/response-writer.ts';
import { http } from '../helpers/http-client.ts';

/** What the server's next request is answered with; the log and the `sent` counts it reported. */
let answer: () => RegistryResponse = () => ({ status: 204, headers: {}, source: 'cache' });
let outcome: { log: RequestLog; sent: number; writes: number; error?: unknown } | undefined;
const server = createServer((req, res) => {
  const log: RequestLog = { bytes: 0 };
  const seen = { log, sent: 0, writes: 0 };
  outcome = seen;
  const write = res.write.bind(res) as ServerResponse['write'];
  res.write = ((...args: Parameters<ServerResponse['write']>) => {
    seen.writes++;
    return write(...args);
  }) as ServerResponse['write'];
  const response = answer();
  sendProxyResponse(res, { ...response, sent: (bytes) => (seen.sent += bytes) }, log).catch((error: unknown) => {
    Object.assign(seen, { error });
  });
});
let port = 0;
before(async () => {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  port = (server.address() as AddressInfo).port;
});
after(() => server.close());

const fetchRaw = (method: 'GET' | 'HEAD') => http(`http://127.0.0.1:${port}/v2/x/manifests/1`, { method });

describe('sendProxyResponse', () => {
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, layers: [] }));

  test('a body whole in memory goes out in one end(), counted like a streamed one', async () => {
    answer = () => ({ status: 200, headers: { 'content-type': 'application/json', 'content-length': String(manifest.length) }, body: new BufferBody(manifest), source: 'cache', cache: 'hit' });
    const got = await fetchRaw('GET');
    assert.equal(got.status, 200);
    assert.deepEqual(got.body, manifest);
    assert.equal(outcome!.writes, 0, 'no stream writes: the content is handed to end()');
    assert.equal(outcome!.log.bytes, manifest.length);
    assert.equal(outcome!.sent, manifest.length);
    assert.equal(outcome!.log.cache, 'hit');
  });

  test('a streamed body arrives the same, through the pipeline', async () => {
    answer = () => ({ status: 200, headers: { 'content-length': String(manifest.length) }, body: Readable.from([manifest.subarray(0, 5), manifest.subarray(5)]), source: 'upstream' });
    const got = await fetchRaw('GET');
    assert.deepEqual(got.body, manifest);
    assert.ok(outcome!.writes >= 1);
    assert.equal(outcome!.log.bytes, manifest.length);
    assert.equal(outcome!.sent, manifest.length);
  });

  test('HEAD sends the headers of an in-memory body, and no byte of it', async () => {
    answer = () => ({ status: 200, headers: { 'content-length': String(manifest.length) }, body: new BufferBody(manifest), source: 'cache' });
    const got = await fetchRaw('HEAD');
    assert.equal(got.status, 200);
    assert.equal(got.headers['content-length'], String(manifest.length));
    assert.equal(got.body.length, 0);
    assert.equal(outcome!.sent, 0);
  });

  test('a BufferBody still streams for whoever reads it as a Readable', async () => {
    const chunks: Buffer[] = [];
    for await (const chunk of new BufferBody(manifest)) chunks.push(chunk as Buffer);
    assert.deepEqual(Buffer.concat(chunks), manifest);
  });
});
