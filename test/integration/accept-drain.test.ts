// A burst of clients arriving while docxy's event loop is busy (a fill at line rate on two busy
// cores: turns of 15-40 ms) is taken in at once. libuv accepts one connection per turn of the
// loop: fifty clients of a pull storm were taken in one by one over ~0.5-1 s, each answered only
// then, though the kernel had completed every connection at once (src/http/accept-drain.ts).
//
// The clients are a child process (their connects and timings must not wait on the loop under
// test); the loop is made busy by turns of a fixed length that the test counts.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { drainAcceptQueue } from '../../src/http/accept-drain.ts';
import { nativeAddon } from '../../src/native.ts';
import { startDocxy, type RunningDocxy } from '../helpers/docxy-app.ts';
import { startFakeRegistry, type FakeRegistry } from '../helpers/fake-registry.ts';
import { generateTlsFixtures, type TlsFixtures } from '../helpers/tls-keys.ts';

/**
 * A child that opens `count` connections at once to 127.0.0.1:`port` (`tls`: TLS ones) and
 * sends each a GET of `path` (HTTP/1.1, Connection: close). It prints one JSON line once every
 * connection has been answered (or `hold`: once every connection is open, then it keeps them
 * until its stdin closes): the time all were connected and each one's first answer byte
 * (Date.now()), and the status lines.
 */
const CLIENT = `
const net = require('node:net');
const tls = require('node:tls');
const [port, count, path, flags] = process.argv.slice(1);
const hold = flags.includes('hold');
const sockets = [];
let connected = 0, answered = 0, allConnectedAt = 0;
const firstBytes = [], statuses = [];
for (let i = 0; i < Number(count); i++) {
  const socket = flags.includes('tls')
    ? tls.connect({ port: Number(port), host: '127.0.0.1', rejectUnauthorized: false })
    : net.connect(Number(port), '127.0.0.1');
  sockets.push(socket);
  socket.on('error', () => {});
  socket.once(flags.includes('tls') ? 'secureConnect' : 'connect', () => {
    if (!hold) socket.write('GET ' + path + ' HTTP/1.1\\r\\nHost: test\\r\\nConnection: close\\r\\n\\r\\n');
    if (++connected === Number(count)) {
      allConnectedAt = Date.now();
      if (hold) process.stdout.write(JSON.stringify({ allConnectedAt }) + '\\n');
    }
  });
  socket.once('data', (chunk) => {
    firstBytes.push(Date.now());
    statuses.push(chunk.toString('latin1').split('\\r\\n')[0]);
    if (++answered === Number(count)) process.stdout.write(JSON.stringify({ allConnectedAt, firstBytes, statuses }) + '\\n');
  });
}
process.stdin.on('end', () => { for (const s of sockets) s.destroy(); process.exit(0); });
process.stdin.resume();
`;

interface ClientReport {
  allConnectedAt: number;
  firstBytes?: number[];
  statuses?: string[];
}

function startClients(port: number, count: number, path: string, flags: Array<'hold' | 'tls'> = []) {
  const child = spawn(process.execPath, ['-e', CLIENT, String(port), String(count), path, flags.join(',') || '-'], { stdio: ['pipe', 'pipe', 'inherit'] });
  const report = new Promise<ClientReport>((resolve, reject) => {
    let text = '';
    child.stdout.on('data', (chunk: Buffer) => {
      text += chunk.toString();
      const line = text.split('\n')[0];
      if (text.includes('\n') && line) resolve(JSON.parse(line) as ClientReport);
    });
    child.once('exit', (code) => reject(new Error(`the client process exited (${code}) before it reported`)));
  });
  report.catch(() => undefined);
  return { child, report, stop: () => child.stdin.end() };
}

/**
 * Blocks this process (the loop under test too) until the kernel holds `count` connections in
 * the accept queue of the socket listening on 127.0.0.1:`port` (Linux: a listening socket's
 * rx_queue in /proc/net/tcp), at most 10 s.
 */
function waitForAcceptQueue(port: number, count: number): void {
  const local = `0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  const deadline = Date.now() + 10_000;
  for (;;) {
    const listening = readFileSync('/proc/net/tcp', 'utf8')
      .split('\n')
      .map((line) => line.trim().split(/\s+/))
      .find((fields) => fields[1] === local && fields[3] === '0A');
    const queued = listening ? Number.parseInt(listening[4]!.split(':')[1]!, 16) : 0;
    if (queued >= count) return;
    assert.ok(Date.now() < deadline, `only ${queued} of ${count} connections queued after 10 s`);
  }
}

/**
 * Keeps this process's event loop busy: turns of `turnMs` of work (a busy wait) one after the
 * other, as a fill keeps docxy's, each timestamped, until stopped.
 */
function busyLoop(turnMs: number) {
  const turns: number[] = [];
  let stopped = false;
  const turn = () => {
    if (stopped) return;
    turns.push(Date.now());
    const until = performance.now() + turnMs;
    while (performance.now() < until);
    setImmediate(turn);
  };
  setImmediate(turn);
  return {
    /** Turns that began in (from, to]. */
    between: (from: number, to: number) => turns.filter((t) => t > from && t <= to).length,
    stop: () => {
      stopped = true;
    },
  };
}

/** `server` with its accept queue drained, listening on 127.0.0.1 (a free port). */
async function listenDraining<S extends Server | HttpsServer>(server: S): Promise<S> {
  drainAcceptQueue(server);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return server;
}

function stop(server: Server | HttpsServer): void {
  server.closeAllConnections();
  server.close();
}

/** Gives the loop turns until `count()` is above 0 (at most 1000). */
async function untilAny(count: () => number): Promise<void> {
  for (let turns = 0; count() === 0 && turns < 1000; turns++) await new Promise((resolve) => setImmediate(resolve));
}

const CLIENTS = 40;
const TURN_MS = 20;

describe('a burst of connections on a busy event loop', { skip: nativeAddon() ? false : 'no native addon (npm run build:native)' }, () => {
  let upstream: FakeRegistry;
  let docxy: RunningDocxy;
  before(async () => {
    upstream = await startFakeRegistry({ auth: 'none' });
    docxy = await startDocxy({ upstreams: { 'docker.io': { url: upstream.url } } });
  });
  after(async () => {
    await docxy?.close();
    await upstream?.close();
  });

  test('docxy answers every one within a few turns of its loop, not one connection per turn', async () => {
    const port = Number(new URL(docxy.url).port);
    const clients = startClients(port, CLIENTS, '/health');
    let busy: ReturnType<typeof busyLoop> | undefined;
    try {
      // Every client connected (and its request sent) while the loop could take none in.
      waitForAcceptQueue(port, CLIENTS);
      const from = Date.now();
      busy = busyLoop(TURN_MS);
      const report = await clients.report;
      busy.stop();
      assert.deepEqual(new Set(report.statuses), new Set(['HTTP/1.1 200 OK']));
      const turns = busy.between(from, Math.max(...report.firstBytes!));
      // One connection per turn takes at least CLIENTS turns; taken in together, they are read
      // and answered within the next few.
      assert.ok(turns < 10, `the last of ${CLIENTS} queued connections was answered after ${turns} busy turns of ${TURN_MS} ms`);
    } finally {
      busy?.stop();
      clients.stop();
    }
  });
});

describe('drainAcceptQueue on a bare server', { skip: nativeAddon() ? false : 'no native addon (npm run build:native)' }, () => {
  let server: Server;
  before(async () => {
    server = await listenDraining(createServer((_req, res) => res.end('ok')));
  });
  after(() => stop(server));

  test('connections taken from the queue are the server’s own: counted, with their address, and close() waits for them', async () => {
    const port = (server.address() as AddressInfo).port;
    const seen: string[] = [];
    server.on('connection', (socket) => seen.push(`${socket.remoteAddress}`));
    // All five connect while the loop is blocked: one turn takes in one (libuv) and the rest (here).
    const clients = startClients(port, 5, '/', ['hold']);
    try {
      waitForAcceptQueue(port, 5);
      await untilAny(() => seen.length);
      // libuv's one and the four drained with it come in the same 'connection' dispatch.
      assert.equal(seen.length, 5, 'all five taken in by the same turn of the loop');
      await clients.report;
      assert.deepEqual(new Set(seen), new Set(['127.0.0.1']));
      const count = await new Promise<number>((resolve, reject) => server.getConnections((error, n) => (error ? reject(error) : resolve(n))));
      assert.equal(count, 5, 'every connection counted as the server’s');
      let closed = false;
      const closing = new Promise<void>((resolve) => server.close(() => resolve()));
      void closing.then(() => (closed = true));
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.equal(closed, false, 'close() waits for the open connections');
      clients.stop();
      await closing;
    } finally {
      clients.stop();
    }
  });
});

describe('drainAcceptQueue on a TLS server', { skip: nativeAddon() ? false : 'no native addon (npm run build:native)' }, () => {
  let fixtures: TlsFixtures;
  let server: HttpsServer;
  before(async () => {
    fixtures = generateTlsFixtures();
    const pair = fixtures.pairs['sec1-ec'];
    server = await listenDraining(createHttpsServer({ key: readFileSync(pair.keyPath), cert: pair.cert }, (_req, res) => res.end('ok')));
  });
  after(() => {
    stop(server);
    fixtures.remove();
  });

  test('connections taken from the queue are handed to TLS, then HTTP', async () => {
    const port = (server.address() as AddressInfo).port;
    let connections = 0;
    server.on('connection', () => connections++);
    const clients = startClients(port, 5, '/', ['tls']);
    try {
      waitForAcceptQueue(port, 5);
      await untilAny(() => connections);
      assert.equal(connections, 5, 'all five taken in by the same turn of the loop');
      const report = await clients.report;
      assert.deepEqual(report.statuses, Array.from({ length: 5 }, () => 'HTTP/1.1 200 OK'));
    } finally {
      clients.stop();
    }
  });
});
