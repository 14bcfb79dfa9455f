// One bad-input run against one docxy: sends the cases, checks every answer, and counts. docxy
// is watched for the whole run: an exit is a crash, reported with the requests that were in
// flight, and docxy is started again so that one crash does not hide the next.
import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, request } from 'undici';
import type { DocxyChild, DocxyExit } from './docxy-child.ts';
import { describeRequest, type Violation } from './fuzz-report.ts';
import { CATEGORIES, type Category, type ClientCase, type FuzzCase, type RawCase } from './hostile-requests.ts';
import { rawExchange } from './raw-exchange.ts';

export interface FuzzRunOptions {
  /** Starts docxy: once at first, and again after each crash. */
  launch: () => Promise<DocxyChild>;
  /** A request that has not ended after this long is a hang. */
  deadlineMs: number;
  /** The same for slow clients, which docxy's request timeouts must cut off. */
  slowDeadlineMs: number;
  maxRestarts: number;
}

const CLIENT_CONNECTIONS = 8;
const CRASH_NOTICE_MS = 500;

export class FuzzRun {
  sent = 0;
  hangs = 0;
  crashes = 0;
  refused = 0;
  readonly byCategory: Partial<Record<Category, number>> = Object.fromEntries(CATEGORIES.map((c) => [c, 0]));
  readonly statuses: Record<string, number> = {};
  readonly fiveXX: Record<string, number> = {};
  readonly unanswered: Record<string, number> = {};
  readonly violations: Violation[] = [];
  private readonly options: FuzzRunOptions;
  private current: DocxyChild;
  /** Valid requests go through a real HTTP client, with its connection pool. */
  private client = new Agent({ connections: CLIENT_CONNECTIONS });
  private readonly inFlight = new Map<number, FuzzCase>();
  /** Cases in flight when docxy exited: what they saw is the crash, which is reported once. */
  private readonly cutByCrash = new Set<number>();
  private restarts = 0;
  private restarting: Promise<void> | undefined;
  private stopping = false;
  /** docxy crashed more often than it may be restarted: nothing more is sent. */
  private gone = false;

  private constructor(options: FuzzRunOptions, docxy: DocxyChild) {
    this.options = options;
    this.current = docxy;
    this.supervise(docxy);
  }

  static async start(options: FuzzRunOptions): Promise<FuzzRun> {
    return new FuzzRun(options, await options.launch());
  }

  /** The docxy process now (another one after a crash). */
  get docxy(): DocxyChild {
    return this.current;
  }

  violation(violation: Violation, fuzzCase?: FuzzCase): void {
    if (fuzzCase && this.cutByCrash.has(fuzzCase.id)) return;
    this.violations.push(violation);
  }

  /** Runs the cases `concurrency` at a time until they run out, the time is up, or docxy is gone for good. */
  async pool(cases: Iterator<FuzzCase>, concurrency: number, until: number): Promise<void> {
    const worker = async () => {
      for (;;) {
        if (this.gone || Date.now() >= until) return;
        const next = cases.next();
        if (next.done) return;
        await this.restarting;
        await this.execute(next.value);
      }
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
  }

  /** Sends one case and checks what came back; true when it got the answer it had to get. */
  async execute(fuzzCase: FuzzCase): Promise<boolean> {
    if (fuzzCase.id >= 0) {
      this.sent++;
      this.byCategory[fuzzCase.category] = (this.byCategory[fuzzCase.category] ?? 0) + 1;
      this.inFlight.set(fuzzCase.id, fuzzCase);
    }
    try {
      return fuzzCase.transport === 'raw' ? await this.executeRaw(fuzzCase) : await this.executeClient(fuzzCase);
    } finally {
      this.inFlight.delete(fuzzCase.id);
    }
  }

  /** Ends the run: the client's connections are closed; docxy itself is stopped by stopDocxy. */
  async closeClient(): Promise<void> {
    await this.client.close();
  }

  async stopDocxy(): Promise<void> {
    this.stopping = true;
    await this.restarting;
    await this.current.stop();
  }

  private supervise(child: DocxyChild): void {
    child.onExit((exit) => {
      if (this.stopping) return;
      this.crashed(exit, child.stderr(30));
      if (this.restarts >= this.options.maxRestarts) {
        this.gone = true;
        return;
      }
      this.restarts++;
      this.restarting = this.restart();
    });
  }

  private crashed(exit: DocxyExit, stderr: string): void {
    this.crashes++;
    for (const id of this.inFlight.keys()) this.cutByCrash.add(id);
    const suspects = [...this.inFlight.values()].slice(0, 8).map((c) => `  #${c.id} ${c.category}/${c.kind}: ${describeRequest(c)}`);
    this.violation({
      rule: 'crash',
      detail: `docxy exited (${exit.code ?? exit.signal}) with ${this.inFlight.size} requests in flight, among them:\n${suspects.join('\n')}\nits stderr:\n${stderr}`,
    });
  }

  private async restart(): Promise<void> {
    try {
      const next = await this.options.launch();
      this.current = next;
      this.supervise(next);
      // Pooled connections went to the process that is gone.
      const stale = this.client;
      this.client = new Agent({ connections: CLIENT_CONNECTIONS });
      await stale.destroy();
    } catch (error) {
      this.violation({ rule: 'crash', detail: `docxy did not start again: ${(error as Error).message}` });
      this.gone = true;
    } finally {
      this.restarting = undefined;
    }
  }

  private async executeRaw(fuzzCase: RawCase): Promise<boolean> {
    const url = new URL(this.current.url);
    const result = await rawExchange({
      host: url.hostname,
      port: Number(url.port),
      data: fuzzCase.data,
      methods: fuzzCase.methods,
      mode: fuzzCase.mode,
      deadlineMs: fuzzCase.category === 'slow' ? this.options.slowDeadlineMs : this.options.deadlineMs,
      ...(fuzzCase.lingerMs ? { lingerMs: fuzzCase.lingerMs } : {}),
    });
    const where = `#${fuzzCase.id} ${fuzzCase.category}/${fuzzCase.kind}`;
    const report = (rule: Violation['rule'], detail: string) => this.violation({ rule, detail: `${where}: ${detail}`, request: describeRequest(fuzzCase) }, fuzzCase);
    for (const response of result.responses) this.checkAnswer(fuzzCase, response.status, response.headers, response.bodyHead);
    if (result.responses.length === 0) {
      const ended = result.outcome === 'complete' || result.outcome === 'closed' ? 'closed-without-answer' : result.outcome;
      this.count(fuzzCase, ended);
      if (ended === 'closed-without-answer') this.unanswered[fuzzCase.kind] = (this.unanswered[fuzzCase.kind] ?? 0) + 1;
    }
    if (result.outcome === 'refused') this.refused++;
    if (result.outcome === 'hang') {
      this.hangs++;
      const got = result.received > 0 ? `${result.received} bytes back, starting ${JSON.stringify(result.firstBytes.slice(0, 120))}` : 'nothing back';
      report('hang', `${fuzzCase.mode.kind}: not ended after ${result.ms} ms, ${got}`);
    }
    if (result.protocolError) report('bad-response', result.protocolError);
    if (result.responses.length > fuzzCase.methods.length) {
      report('extra-answer', `${result.responses.length} answers (${result.responses.map((r) => r.status).join(', ')}) to ${fuzzCase.methods.length} request(s)`);
    }
    const first = result.responses[0];
    if (first && fuzzCase.expect && !fuzzCase.expect.includes(first.status)) {
      report('unexpected-status', `${first.status} where ${fuzzCase.expect.join('/')} was due; body ${JSON.stringify(first.bodyHead.toString('utf8').slice(0, 200))}`);
      return false;
    }
    return true;
  }

  private async executeClient(fuzzCase: ClientCase): Promise<boolean> {
    const started = performance.now();
    const crashesBefore = this.crashes;
    const where = `#${fuzzCase.id} ${fuzzCase.kind}: ${fuzzCase.method} ${fuzzCase.path}`;
    const fail = (detail: string) => {
      this.violation({ rule: 'valid-failed', detail: `${where}: ${detail}` }, fuzzCase);
      return false;
    };
    try {
      const response = await request(`${this.current.url}${fuzzCase.path}`, {
        dispatcher: this.client,
        method: fuzzCase.method,
        headers: fuzzCase.headers,
        signal: AbortSignal.timeout(this.options.deadlineMs),
      });
      const body = Buffer.from(await response.body.arrayBuffer());
      const headers = Object.entries(response.headers).flatMap(([name, value]): Array<[string, string]> =>
        value === undefined ? [] : (Array.isArray(value) ? value : [value]).map((v) => [name, v]),
      );
      this.checkAnswer(fuzzCase, response.statusCode, headers, body);
      if (response.statusCode !== fuzzCase.expectStatus) return fail(`${response.statusCode} instead of ${fuzzCase.expectStatus}: ${body.toString('utf8').slice(0, 300)}`);
      const digest = `sha256:${createHash('sha256').update(body).digest('hex')}`;
      if (fuzzCase.expectDigest && digest !== fuzzCase.expectDigest) return fail(`body ${digest} (${body.length} bytes) instead of ${fuzzCase.expectDigest}`);
      return true;
    } catch (error) {
      const err = error as Error & { code?: string };
      if (err.name === 'TimeoutError' || err.code === 'UND_ERR_HEADERS_TIMEOUT' || err.code === 'UND_ERR_BODY_TIMEOUT') {
        this.hangs++;
        this.count(fuzzCase, 'hang');
        this.violation({ rule: 'hang', detail: `${where}: not answered after ${Math.round(performance.now() - started)} ms` }, fuzzCase);
        return false;
      }
      // A connection docxy's exit broke: the exit is noticed a moment after its sockets close.
      await sleep(CRASH_NOTICE_MS);
      if (err.code === 'ECONNREFUSED' || this.crashes > crashesBefore) {
        this.refused++;
        this.count(fuzzCase, 'refused');
        return false;
      }
      this.count(fuzzCase, 'closed-without-answer');
      return fail(`${err.code ?? err.name}: ${err.message}`);
    }
  }

  /** The checks every answer gets, whatever was asked. */
  private checkAnswer(fuzzCase: FuzzCase, status: number, headers: Array<[string, string]>, bodyHead: Buffer): void {
    this.count(fuzzCase, String(status));
    const where = `#${fuzzCase.id} ${fuzzCase.category}/${fuzzCase.kind}`;
    const request = describeRequest(fuzzCase);
    if (status >= 500) {
      this.fiveXX[status] = (this.fiveXX[status] ?? 0) + 1;
      this.violation({ rule: '5xx', detail: `${where}: ${status} ${JSON.stringify(bodyHead.toString('utf8').slice(0, 300))}`, request }, fuzzCase);
    }
    // Token realms come from publicUrl or the address the client connected to, never from
    // what the client sent (Host, X-Forwarded-*): CVE-2025-63761.
    const realmBase = `${this.current.url}/auth/`;
    for (const [name, value] of headers) {
      if (name === 'x-fuzz-injected') this.violation({ rule: 'header-injection', detail: `${where}: the answer has an injected header`, request }, fuzzCase);
      if (name !== 'www-authenticate') continue;
      for (const match of value.matchAll(/realm="([^"]*)"/gi)) {
        if (!match[1]!.startsWith(realmBase)) this.violation({ rule: 'realm', detail: `${where}: realm ${JSON.stringify(match[1])} is not docxy's own ${realmBase}`, request }, fuzzCase);
      }
    }
  }

  /** Counts how a request of the run ended (requests outside it, warm-up and final checks, are not counted). */
  private count(fuzzCase: FuzzCase, key: string): void {
    if (fuzzCase.id >= 0) this.statuses[key] = (this.statuses[key] ?? 0) + 1;
  }
}
