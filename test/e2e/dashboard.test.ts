// The dashboard in a real browser: Debian's headless Chromium, driven by playwright-core, opens
// the page of a running docxy (the real CLI process) after scripted pulls through it from a fake
// Docker-Hub-like upstream (which sends Docker Hub's rate-limit headers), and checks the numbers
// shown, at a laptop's and a phone's size. Screenshots go to test/artifacts/ (not committed).
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chromium, type Browser, type Page } from 'playwright-core';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';
import { pullAs as pull, startPullUpstream, type PullUpstream } from '../helpers/scripted-pulls.ts';
import { REPO_ROOT, startDocxy, type Docxy } from './harness/docxy.ts';
import { findExecutable, e2eGate } from './harness/tools.ts';

const TOOLS = ['chromium'];
const ARTIFACTS = join(REPO_ROOT, 'test', 'artifacts');
/** As root, without a sandbox; no background traffic (this machine's network is closed). */
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

/** The phone in dark mode: both color schemes get a screenshot. */
const VIEWPORTS: Array<{ name: string; width: number; height: number; mobile: boolean; colorScheme: 'light' | 'dark' }> = [
  { name: 'laptop', width: 1366, height: 800, mobile: false, colorScheme: 'light' },
  { name: 'phone', width: 390, height: 844, mobile: true, colorScheme: 'dark' },
];

const text = (page: Page, testId: string) => page.getByTestId(testId).first().textContent();

describe('dashboard in a real browser', { ...e2eGate(TOOLS), timeout: 120_000 }, () => {
  let hub: PullUpstream;
  let docxy: Docxy;
  let browser: Browser;

  before(async () => {
    hub = await startPullUpstream();
    docxy = await startDocxy({ upstreams: { 'docker.io': { url: hub.upstream.url } }, egress: LOOPBACK_EGRESS, trustedProxies: ['127.0.0.1'] });
    // 4 + 3 misses, then 4 hits: 4 / 11 answered from the cache.
    await pull(docxy.url, hub.app, '10.1.2.3');
    await pull(docxy.url, hub.tool, '2001:db8:aa:bb::5');
    await pull(docxy.url, hub.app, '10.1.2.77');
    await mkdir(ARTIFACTS, { recursive: true });
    browser = await chromium.launch({ executablePath: findExecutable('chromium')!, args: CHROMIUM_ARGS, headless: true });
  });
  after(async () => {
    await browser?.close();
    await docxy?.stop();
    await hub?.upstream.close();
  });

  for (const viewport of VIEWPORTS) {
    test(`${viewport.name} (${viewport.width}x${viewport.height}): the numbers after the pulls, live updates, no overflow, no console errors`, async () => {
      const context = await browser.newContext({ viewport: { width: viewport.width, height: viewport.height }, isMobile: viewport.mobile, hasTouch: viewport.mobile, colorScheme: viewport.colorScheme });
      const page = await context.newPage();
      const problems: string[] = [];
      page.on('console', (message) => {
        if (message.type() === 'error' || message.type() === 'warning') problems.push(`${message.type()}: ${message.text()}`);
      });
      page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
      page.on('requestfailed', (request) => problems.push(`request failed: ${request.url()}`));
      try {
        await page.goto(`${docxy.url}/`);
        await page.getByTestId('pulls-total').filter({ hasText: /^\d+$/ }).waitFor();
        const before = Number(await text(page, 'pulls-total'));
        assert.ok(before >= 3, `pulls shown: ${before}`);
        if (viewport.name === 'laptop') {
          assert.equal(before, 3);
          assert.equal(await text(page, 'hit-ratio-hour'), '36.4%');
          assert.equal(await text(page, 'hit-ratio-day'), '36.4%');
          const rows = page.locator('#pulls tr');
          assert.equal(await rows.count(), 3);
          assert.deepEqual(await page.locator('#pulls td.image').allTextContents(), ['docker.io/library/app:1', 'docker.io/team/tool:2', 'docker.io/library/app:1']);
          assert.deepEqual(await page.locator('#pulls td.client').allTextContents(), ['10.1.2.0', '2001:db8:aa::/48', '10.1.2.0']);
          assert.deepEqual(await page.locator('#pulls .badge').allTextContents(), ['hit', 'miss', 'miss']);
          assert.deepEqual(await page.locator('#top .image').allTextContents(), ['docker.io/library/app:1', 'docker.io/team/tool:2']);
          assert.deepEqual(await page.locator('#top .count').allTextContents(), ['2', '1']);
          // The day's chart and another client's snippets are a click away.
          await page.getByRole('button', { name: '24 h' }).click();
          assert.equal(await page.getByRole('button', { name: '24 h' }).getAttribute('aria-pressed'), 'true');
          // One point per 15 minutes with pulls in it (the pulls may straddle a boundary).
          assert.ok((await page.locator('#chart-ratio circle').count()) >= 1);
          await page.getByRole('button', { name: 'containerd' }).click();
          assert.match(await page.locator('#snippets').innerText(), /hosts\.toml[\s\S]*capabilities = \["pull", "resolve"\]/);
          await page.getByRole('button', { name: 'docker', exact: true }).click();
        }
        assert.equal(await text(page, 'quota-remaining'), '99 / 100');
        assert.equal(await text(page, 'reachable'), 'reachable');
        assert.match(await page.locator('#snippets').innerText(), /registry-mirrors/);

        // A pull while the page is open shows up without a reload (server-sent events).
        await pull(docxy.url, hub.tool, viewport.name === 'laptop' ? '10.9.9.9' : '10.8.8.8');
        await page.getByTestId('pulls-total').filter({ hasText: String(before + 1) }).waitFor({ timeout: 10_000 });
        assert.match((await page.locator('#pulls td.client').first().textContent()) ?? '', /^10\.[89]\.[89]\.0$/);
        assert.equal(await page.locator('#live').textContent(), 'live');

        await page.screenshot({ path: join(ARTIFACTS, `dashboard-${viewport.name}.png`), fullPage: true });
        // A string, run in the page (the tests are type-checked without the DOM's types).
        const widths = await page.evaluate<{ page: number; body: number; viewport: number }>(
          '({ page: document.documentElement.scrollWidth, body: document.body.scrollWidth, viewport: window.innerWidth })',
        );
        assert.ok(widths.page <= widths.viewport && widths.body <= widths.viewport, `horizontal overflow: ${JSON.stringify(widths)}`);
        assert.deepEqual(problems, []);
      } finally {
        await context.close();
      }
    });
  }
});
