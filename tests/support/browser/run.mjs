// Drives Debian's headless Chromium (/usr/bin/chromium) with playwright-core for jacker-gate's
// browser test. Never downloads a browser.
//
//   node run.mjs SCENARIO.json   →   one JSON document on stdout
//
// SCENARIO: {
//   "host_rules": "MAP *.example.test 127.0.0.1",   // --host-resolver-rules
//   "timeout_ms": 20000,                             // per step
//   "steps": [ { "goto": URL, "block": [URL prefixes to abort], "screenshot": PATH } ]
// }
// For each step it reports: the final `url`, the last `status`, the page's `body` text, the
// main-frame `chain` of navigations (each {url, status, location}), the URLs it `blocked`, the
// `error` of the navigation if it failed (e.g. a blocked redirect), and the context's `cookies`.
// All steps share one browser context (one cookie jar), like one user in one window.
import { readFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const scenario = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const timeout = scenario.timeout_ms || 20000;
const args = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-dev-shm-usage',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-quic',
  '--no-first-run',
  '--no-proxy-server',
];
if (scenario.host_rules) args.push(`--host-resolver-rules=${scenario.host_rules}`);

const browser = await chromium.launch({
  executablePath: scenario.executable || '/usr/bin/chromium',
  headless: true,
  args,
  timeout,
});
const out = { version: browser.version(), steps: [] };
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: false });
  const page = await context.newPage();
  page.setDefaultTimeout(timeout);
  let block = [];
  let blocked = [];
  let chain = [];
  await context.route('**/*', async (route) => {
    const url = route.request().url();
    if (block.some((prefix) => url.startsWith(prefix))) {
      blocked.push(url);
      await route.abort('blockedbyclient');
    } else {
      await route.continue();
    }
  });
  page.on('response', (response) => {
    const request = response.request();
    if (request.isNavigationRequest() && request.frame() === page.mainFrame()) {
      chain.push({ url: response.url(), status: response.status(), location: response.headers().location || null });
    }
  });
  for (const step of scenario.steps) {
    block = step.block || [];
    blocked = [];
    chain = [];
    const result = { goto: step.goto };
    try {
      const response = await page.goto(step.goto, { waitUntil: 'load', timeout });
      result.status = response ? response.status() : null;
    } catch (err) {
      result.error = String(err.message || err).split('\n')[0];
    }
    result.url = page.url();
    result.chain = chain;
    result.blocked = blocked;
    try {
      result.body = await page.evaluate(() => (document.body ? document.body.innerText : ''));
    } catch (err) {
      result.body = null;
    }
    result.cookies = await context.cookies();
    if (step.screenshot) await page.screenshot({ path: step.screenshot, fullPage: true });
    out.steps.push(result);
  }
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(out));
