import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type ServerResponse } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { Readable } from 'node:stream';
import { after, before, describe, mock, test } from 'node:test';
import { BufferBody, type RegistryResponse } from '../../src/core/registry.ts';
import type { RequestLog } from '../../src/http/context.ts';
import { sendProxyResponse } from '../../src/http/response-writer.ts';
import { http } from '../helpers/http-client.ts';

/** What the server's next request is answered with; the log and the `sent` counts it reported. */
let answer: () => RegistryResponse = () => ({ status: 204, headers: {}, source: 'cache' });
let outcome: { log: RequestLog; sent: number; writes: number; socketWrites: number; error?: unknown } | undefined;
const server = createServer((req, res) => {
  const log: RequestLog = { bytes: 0 };
  const seen = { log, sent: 0, writes: 0, socketWrites: 0 };
  outcome = seen;
  // The socket's own writes (a writev of many chunks is one), from here on.
  const socket = res.socket as unknown as { _write: (...args: unknown[]) => void; _writev: (...args: unknown[]) => void };
  for (const method of ['_write', '_writev'] as const) {
    const original = Object.getPrototypeOf(socket)[method] as (...args: unknown[]) => void;
    socket[method] = (...args: unknown[]) => {
      seen.socketWrites++;
      return original.apply(socket, args);
    };
  }
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

  test('chunks that arrive in one turn of the event loop go to the socket in one write', async () => {
    // A fill's 64 KiB chunks come several per turn: one syscall each cost ~50% more CPU per byte
    // than one writev of them all (fifty followers of a fill: 50 writes per upstream chunk).
    const chunks = Array.from({ length: 8 }, (_, i) => Buffer.alloc(64 * 1024, i));
    const whole = Buffer.concat(chunks);
    answer = () => ({ status: 200, headers: { 'content-length': String(whole.length) }, body: Readable.from(chunks), source: 'cache', batchWrites: true });
    const got = await fetchRaw('GET');
    assert.deepEqual(got.body, whole);
    assert.equal(outcome!.writes, 8, 'each chunk written to the response');
    assert.equal(outcome!.socketWrites, 1, 'and all of them, with the headers, in one write of the socket');
  });

  test('chunks that trickle in over several turns go out together, a batch at most 1 MiB', async (t) => {
    // A fill from a 200 MiB/s line gives its followers ~64-110 KiB per turn of the event loop:
    // written each turn, fifty followers made ~29,500 socket writes of one 64 MiB blob.
    const chunks = Array.from({ length: 24 }, (_, i) => Buffer.alloc(64 * 1024, i));
    const whole = Buffer.concat(chunks);
    const body = new Readable({ read() {} });
    answer = () => ({ status: 200, headers: { 'content-length': String(whole.length) }, body, source: 'cache', batchWrites: true });
    const got = fetchRaw('GET');
    // One chunk per turn (a few turns per millisecond): the batch is full long before it is 5 ms
    // old. The batch's timer is the test's: on a busy CI machine 24 turns took more than 5 ms.
    mock.timers.enable({ apis: ['setTimeout'] });
    t.after(() => mock.timers.reset());
    for (const chunk of chunks) {
      await new Promise((resolve) => setImmediate(resolve));
      body.push(chunk);
    }
    body.push(null);
    mock.timers.tick(5); // what a batch left waits for at most
    const answered = await got;
    assert.deepEqual(answered.body, whole);
    assert.equal(outcome!.writes, 24);
    // 1.5 MiB: one full batch of 1 MiB, then the rest (with the headers, in a write of their own or the first).
    assert.ok(outcome!.socketWrites <= 3, `${outcome!.socketWrites} socket writes for 24 chunks`);
  });

  test('a batch waits a few milliseconds at most: a lone chunk still goes out', async () => {
    const body = new Readable({ read() {} });
    answer = () => ({ status: 200, headers: { 'content-length': String(2 * 64 * 1024) }, body, source: 'cache', batchWrites: true });
    body.push(Buffer.alloc(64 * 1024, 7)); // the second half never comes
    const client = connect(port, '127.0.0.1');
    let received = 0;
    client.on('data', (data: Buffer) => (received += data.length));
    client.write('GET /v2/x/blobs/y HTTP/1.1\r\nHost: x\r\n\r\n');
    try {
      const deadline = Date.now() + 2_000;
      while (received <= 64 * 1024 && Date.now() < deadline) await sleep(5);
      assert.ok(received > 64 * 1024, `headers and the first chunk arrived (${received} bytes)`);
    } finally {
      client.destroy();
      body.destroy();
    }
  });

  for (const batchWrites of [true, false]) {
  test(`a client that stops reading stops the body: what waits for it stays bounded (batchWrites: ${batchWrites})`, async () => {
    let given = 0;
    const body = new Readable({
      read() {
        given += 64 * 1024;
        this.push(Buffer.alloc(64 * 1024, 1));
      },
    });
    answer = () => ({ status: 200, headers: { 'content-length': String(1024 * 2 ** 20) }, body, source: 'cache', batchWrites });
    const client = connect(port, '127.0.0.1');
    client.write('GET /v2/x/blobs/y HTTP/1.1\r\nHost: x\r\n\r\n');
    client.pause(); // never reads
    try {
      let before = -1;
      for (let i = 0; i < 100 && given !== before; i++) {
        before = given;
        await sleep(50);
      }
      assert.equal(given, before, 'the body was paused');
      // The kernel's buffers of both ends (a few MiB on loopback) and at most one batch here.
      assert.ok(given < 32 * 2 ** 20, `${(given / 2 ** 20).toFixed(1)} MiB taken from the body`);
    } finally {
      client.destroy();
      body.destroy();
    }
  });
  }

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
