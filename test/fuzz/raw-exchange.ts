// One raw request on its own TCP connection: exactly the bytes given, sent the way the case says
// (all at once, a byte at a time, cut short), and every answer read back with a small HTTP/1.1
// response parser, so that an answer is known complete without trusting the server to close.
import { connect, type Socket } from 'node:net';
import type { RawMode } from './hostile-requests.ts';

export interface ParsedResponse {
  status: number;
  /** Header names lower-cased, every value kept. */
  headers: Array<[string, string]>;
  bodyBytes: number;
  /** The first bytes of the body, for error codes and reports. */
  bodyHead: Buffer;
}

export type ExchangeOutcome =
  /** Every awaited answer arrived. */
  | 'complete'
  /** docxy closed the connection first (with or without an answer). */
  | 'closed'
  /** The client left, as the case said. */
  | 'aborted'
  /** Nothing ended it before the deadline. */
  | 'hang'
  /** No connection: docxy is not listening (it exited?). */
  | 'refused';

export interface ExchangeResult {
  outcome: ExchangeOutcome;
  responses: ParsedResponse[];
  /** Set when the bytes that came back are not HTTP/1.1. */
  protocolError?: string;
  /** Bytes received, and the first of them (for a hang's report). */
  received: number;
  firstBytes: string;
  ms: number;
}

export interface ExchangeOptions {
  host: string;
  port: number;
  data: string;
  methods: readonly string[];
  mode: RawMode;
  deadlineMs: number;
  /** After the awaited answers, keep reading this long for answers nobody asked for. */
  lingerMs?: number;
}

const BODY_HEAD_BYTES = 2_048;
const MAX_HEAD_BYTES = 64 * 1024;

export function rawExchange(options: ExchangeOptions): Promise<ExchangeResult> {
  const started = performance.now();
  const bytes = Buffer.from(options.data, 'latin1');
  const reader = new ResponseReader(options.methods);
  let received = 0;
  let firstBytes: Buffer = Buffer.alloc(0);
  return new Promise((resolve) => {
    const socket: Socket = connect({ host: options.host, port: options.port });
    socket.setNoDelay(true);
    const timers: NodeJS.Timeout[] = [];
    let connected = false;
    let settled = false;
    let lingering = false;
    const settle = (outcome: ExchangeOutcome) => {
      if (settled) return;
      settled = true;
      for (const timer of timers) clearTimeout(timer);
      if (outcome === 'aborted' && options.mode.kind === 'abort' && options.mode.reset) socket.resetAndDestroy();
      else socket.destroy();
      resolve({
        outcome,
        responses: reader.responses,
        ...(reader.error ? { protocolError: reader.error } : {}),
        received,
        firstBytes: firstBytes.toString('latin1'),
        ms: Math.round(performance.now() - started),
      });
    };
    const later = (ms: number, action: () => void) => timers.push(setTimeout(action, ms));
    later(options.deadlineMs, () => settle(options.mode.kind === 'hold' ? 'aborted' : 'hang'));

    socket.on('connect', () => {
      connected = true;
      send(socket, bytes, options.mode, later, () => settle('aborted'));
    });
    socket.on('data', (chunk: Buffer) => {
      received += chunk.length;
      if (firstBytes.length < 512) firstBytes = Buffer.concat([firstBytes, chunk]).subarray(0, 512);
      if (options.mode.kind === 'abort' && options.mode.when === 'first-byte') {
        const mode = options.mode;
        later(mode.delayMs, () => settle('aborted'));
      }
      reader.push(chunk);
      if (reader.error) settle('closed');
      else if (options.mode.kind !== 'abort' && reader.responses.length >= options.methods.length && !lingering) {
        lingering = true;
        later(options.lingerMs ?? 0, () => settle('complete'));
      }
    });
    socket.on('end', () => {
      reader.end();
      settle(reader.responses.length >= options.methods.length ? 'complete' : 'closed');
    });
    socket.on('error', (error: Error & { code?: string }) => {
      reader.end();
      settle(connected || error.code !== 'ECONNREFUSED' ? 'closed' : 'refused');
    });
    socket.on('close', () => settle(connected ? 'closed' : 'refused'));
  });
}

/** Writes the request as the mode says; `leave` ends the exchange as the client's own choice. */
function send(socket: Socket, bytes: Buffer, mode: RawMode, later: (ms: number, action: () => void) => void, leave: () => void): void {
  switch (mode.kind) {
    case 'complete':
    case 'stall':
      socket.write(bytes);
      return;
    case 'hold':
      socket.pause();
      socket.write(bytes);
      later(mode.ms, leave);
      return;
    case 'abort':
      if (mode.when === 'sent') socket.write(bytes, () => later(mode.delayMs, leave));
      else socket.write(bytes);
      return;
    case 'trickle': {
      let offset = 0;
      const step = () => {
        if (offset >= bytes.length || socket.destroyed) return;
        socket.write(bytes.subarray(offset, offset + 1));
        offset++;
        later(mode.intervalMs, step);
      };
      step();
    }
  }
}

/**
 * An incremental HTTP/1.1 response parser: status line, headers, and a body framed by
 * Content-Length, chunked encoding or the end of the connection. 1xx answers are skipped; a HEAD,
 * 204 or 304 answer has no body. Bodies are counted, not kept (beyond their first bytes).
 */
export class ResponseReader {
  readonly responses: ParsedResponse[] = [];
  error?: string;
  private readonly methods: readonly string[];
  private buffer: Buffer = Buffer.alloc(0);
  private state: 'head' | 'length' | 'chunk-size' | 'chunk-data' | 'trailer' | 'until-close' | 'stopped' = 'head';
  private remaining = 0;
  private current?: ParsedResponse;

  constructor(methods: readonly string[]) {
    this.methods = methods;
  }

  push(chunk: Buffer): void {
    if (this.state === 'stopped') return;
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    while (this.step()) {
      // each step consumes input or changes state
    }
  }

  /** The connection ended: an answer delimited by the close is complete now. */
  end(): void {
    if (this.state === 'until-close' && this.current) this.complete();
    this.state = 'stopped';
  }

  private step(): boolean {
    switch (this.state) {
      case 'head':
        return this.readHead();
      case 'length': {
        if (this.buffer.length === 0) return false;
        const take = Math.min(this.remaining, this.buffer.length);
        this.body(this.buffer.subarray(0, take));
        this.buffer = this.buffer.subarray(take);
        this.remaining -= take;
        if (this.remaining === 0) this.complete();
        return true;
      }
      case 'chunk-size': {
        const eol = this.buffer.indexOf('\r\n');
        if (eol < 0) return this.limit(this.buffer.length, 'chunk size line too long');
        const line = this.buffer.subarray(0, eol).toString('latin1').split(';')[0]!.trim();
        this.buffer = this.buffer.subarray(eol + 2);
        if (!/^[0-9a-fA-F]{1,15}$/.test(line)) return this.fail(`bad chunk size ${JSON.stringify(line.slice(0, 40))}`);
        this.remaining = Number.parseInt(line, 16);
        this.state = this.remaining === 0 ? 'trailer' : 'chunk-data';
        return true;
      }
      case 'chunk-data': {
        if (this.remaining > 0) {
          if (this.buffer.length === 0) return false;
          const take = Math.min(this.remaining, this.buffer.length);
          this.body(this.buffer.subarray(0, take));
          this.buffer = this.buffer.subarray(take);
          this.remaining -= take;
          return true;
        }
        if (this.buffer.length < 2) return false;
        if (this.buffer[0] !== 0x0d || this.buffer[1] !== 0x0a) return this.fail('chunk not followed by CRLF');
        this.buffer = this.buffer.subarray(2);
        this.state = 'chunk-size';
        return true;
      }
      case 'trailer': {
        const eol = this.buffer.indexOf('\r\n');
        if (eol < 0) return this.limit(this.buffer.length, 'trailer too long');
        this.buffer = this.buffer.subarray(eol + 2);
        if (eol === 0) this.complete();
        return true;
      }
      case 'until-close':
        if (this.buffer.length === 0) return false;
        this.body(this.buffer);
        this.buffer = Buffer.alloc(0);
        return false;
      case 'stopped':
        return false;
    }
  }

  private readHead(): boolean {
    if (this.buffer.length === 0) return false;
    const end = this.buffer.indexOf('\r\n\r\n');
    if (end < 0) {
      if (this.buffer.length >= 5 && !this.buffer.subarray(0, 5).equals(Buffer.from('HTTP/'))) {
        return this.fail(`not an HTTP response: ${JSON.stringify(this.buffer.subarray(0, 60).toString('latin1'))}`);
      }
      return this.limit(this.buffer.length, 'response head larger than 64 KiB');
    }
    const lines = this.buffer.subarray(0, end).toString('latin1').split('\r\n');
    this.buffer = this.buffer.subarray(end + 4);
    const status = /^HTTP\/1\.[01] (\d{3})(?: |$)/.exec(lines[0]!);
    if (!status) return this.fail(`bad status line ${JSON.stringify(lines[0]!.slice(0, 80))}`);
    const headers: Array<[string, string]> = [];
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(':');
      if (colon <= 0) return this.fail(`bad header line ${JSON.stringify(line.slice(0, 80))}`);
      headers.push([line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim()]);
    }
    const code = Number(status[1]);
    if (code >= 100 && code < 200 && code !== 101) return true; // interim: the real answer follows
    this.current = { status: code, headers, bodyBytes: 0, bodyHead: Buffer.alloc(0) };
    const method = this.methods[this.responses.length] ?? 'GET';
    const header = (name: string) => headers.filter(([n]) => n === name).map(([, v]) => v);
    const transferEncoding = header('transfer-encoding').join(',').toLowerCase();
    const lengths = header('content-length');
    if (method === 'HEAD' || code === 204 || code === 304) {
      this.complete();
    } else if (code === 101) {
      this.complete();
      this.state = 'stopped';
    } else if (transferEncoding !== '') {
      if (!/(^|,)\s*chunked\s*$/.test(transferEncoding)) return this.fail(`unexpected transfer-encoding ${transferEncoding}`);
      this.state = 'chunk-size';
    } else if (lengths.length > 0) {
      if (new Set(lengths).size !== 1 || !/^\d{1,15}$/.test(lengths[0]!)) return this.fail(`bad content-length ${JSON.stringify(lengths)}`);
      this.remaining = Number(lengths[0]);
      if (this.remaining === 0) this.complete();
      else this.state = 'length';
    } else {
      this.state = 'until-close';
    }
    return true;
  }

  private body(bytes: Buffer): void {
    const current = this.current!;
    current.bodyBytes += bytes.length;
    if (current.bodyHead.length < BODY_HEAD_BYTES) {
      current.bodyHead = Buffer.concat([current.bodyHead, bytes.subarray(0, BODY_HEAD_BYTES - current.bodyHead.length)]);
    }
  }

  private complete(): void {
    if (this.current) this.responses.push(this.current);
    this.current = undefined;
    this.state = 'head';
  }

  private limit(length: number, message: string): boolean {
    return length > MAX_HEAD_BYTES ? this.fail(message) : false;
  }

  private fail(message: string): boolean {
    this.error = message;
    this.state = 'stopped';
    return false;
  }
}
