// Shared pieces of Duet's real-browser tests: Debian's chromium driven by playwright-core (which never downloads a
// browser of its own), a hard deadline, WebRTC stats checks, and a tiny static server for test pages built on npm
// clients (simple-peer, peerjs) that the daemon itself does not serve.
//
// Every scenario (call.mjs: `native` now; `vy` with simple-peer and `peerjs` with the peerjs client later) runs
// inside a network namespace of its own with only `lo` (tests/browser/run-in-netns.sh), so every ICE candidate is
// on loopback, and asks for relay-only ICE, so media must cross Duet's TURN relay.

import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { dirname, extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';

export const HERE = dirname(fileURLToPath(import.meta.url));
export const CHROMIUM = process.env.DUET_CHROMIUM || '/usr/bin/chromium';

/** Chromium flags: headless on a closed machine, fake camera and microphone, loopback ICE. */
export const CHROMIUM_ARGS = [
  '--no-sandbox', // root in CI
  '--disable-gpu',
  '--disable-quic',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-default-apps',
  '--disable-extensions',
  '--no-first-run',
  '--no-default-browser-check',
  '--use-fake-device-for-media-stream', // synthetic camera (moving pattern) and microphone (beeps)
  '--use-fake-ui-for-media-stream', // grant getUserMedia without a prompt
  '--autoplay-policy=no-user-gesture-required', // ?autojoin=1 has no click; let the remote <video> play
  // Without it Chromium enumerates no loopback network, and in a namespace with only `lo` it gathers no candidate
  // at all, not even a relay one (the TURN server is reached from a local socket on some network).
  '--allow-loopback-in-peer-connection',
  // No name lookups leave the browser (there is nothing to ask in the namespace anyway), but the loopback names and
  // literals must stay resolvable: without the EXCLUDEs `MAP *` also swallows 127.0.0.1 and the pages never load.
  '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1, EXCLUDE [::1]',
];

/** Fails the run with `message` (one line on stderr, exit code 1). */
export class Failure extends Error {}

/**
 * The command line of a scenario: `[--timeout-ms N] [--NAME VALUE]... ARG...` with exactly `count` positional
 * arguments. On bad usage, or `-h`/`--help` (message `help`), prints the message and `usage: <usageLine>` on stderr
 * and exits 2. `options` maps the further option names (without `--`) to their defaults.
 * Returns { timeoutMs, options, positional, usage }, where usage(msg) exits the same way.
 */
export function parseArgs({ usageLine, help, count, timeoutMs = 60000, options = {} }) {
  const usage = (msg) => {
    process.stderr.write(`${msg}\nusage: ${usageLine}\n`);
    process.exit(2);
  };
  const argv = process.argv.slice(2);
  const opts = { ...options };
  const positional = [];
  for (let i = 0; i < argv.length; i++) {
    const name = argv[i].startsWith('--') ? argv[i].slice(2) : null;
    if (argv[i] === '--timeout-ms') timeoutMs = Number(argv[++i]);
    else if (name && Object.hasOwn(opts, name)) opts[name] = argv[++i];
    else if (argv[i] === '-h' || argv[i] === '--help') usage(help);
    else positional.push(argv[i]);
  }
  if (positional.length !== count) usage(`expected ${count} argument${count === 1 ? '' : 's'}, got ${positional.length}`);
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) usage('--timeout-ms needs a positive number');
  return { timeoutMs, options: opts, positional, usage };
}

/**
 * The command line of the npm-client scenarios, `node <script> [--timeout-ms N] CONFIG_JSON` (see parseArgs); exits 2
 * if CONFIG_JSON is not JSON or lacks one of the `required` keys. Returns { timeoutMs, config }.
 */
export function parseConfigArgs(script, help, required) {
  const { timeoutMs, positional, usage } = parseArgs({ usageLine: `node ${script} [--timeout-ms N] CONFIG_JSON`, help, count: 1 });
  let config;
  try {
    config = JSON.parse(positional[0]);
  } catch (e) {
    usage(`CONFIG_JSON is not JSON: ${e.message}`);
  }
  for (const k of required) if (!config[k]) usage(`CONFIG_JSON lacks ${k}`);
  return { timeoutMs, config };
}

/** The origin of the daemon's HTTP listener given as `127.0.0.1:PORT` or `http://127.0.0.1:PORT`. */
export function daemonOrigin(httpArg) {
  return new URL(/^https?:\/\//.test(httpArg) ? httpArg : `http://${httpArg}`).origin;
}

/** The path `/j/<token>` of a join URL or a bare link token; exits through `usage` if it is neither. */
export function joinPath(joinUrl, usage) {
  const path = /^https?:\/\//.test(joinUrl) ? new URL(joinUrl).pathname : `/j/${encodeURIComponent(joinUrl)}`;
  if (!/^\/j\/[^/]+$/.test(path)) usage(`not a join URL: ${joinUrl}`);
  return path;
}

/**
 * Runs `body(ctx)` with a hard deadline: whatever happens (a hung page, a browser that never starts), the process
 * prints one JSON line with ok:false and exits non-zero within `timeoutMs` (plus a few seconds to close the browser).
 * On success prints the JSON line `{"ok":true,…result}` on stdout and exits 0.
 */
export async function run(name, timeoutMs, body) {
  const started = Date.now();
  const ctx = { browser: null, pages: [], log: [], started, timeoutMs };
  const finish = async (ok, extra) => {
    const line = JSON.stringify({ ok, test: name, elapsed_ms: Date.now() - started, ...extra });
    if (ok) process.stdout.write(line + '\n');
    else {
      process.stdout.write(line + '\n');
      if (ctx.log.length) process.stderr.write('--- browser log (last 60 lines) ---\n' + ctx.log.slice(-60).join('\n') + '\n');
    }
    const closing = ctx.browser ? ctx.browser.close().catch(() => {}) : Promise.resolve();
    await Promise.race([closing, sleep(5000)]);
    process.exit(ok ? 0 : 1);
  };
  const deadline = setTimeout(async () => {
    const states = await describePages(ctx).catch(() => null);
    process.stderr.write(`FAIL ${name}: timed out after ${timeoutMs} ms (${ctx.phase || 'starting'})\n`);
    await finish(false, { error: `timed out after ${timeoutMs} ms`, phase: ctx.phase || 'starting', pages: states });
  }, timeoutMs);
  try {
    const result = await body(ctx);
    clearTimeout(deadline);
    await finish(true, result);
  } catch (e) {
    clearTimeout(deadline);
    const message = e instanceof Failure ? e.message : (e && e.stack) || String(e);
    const states = await describePages(ctx).catch(() => null);
    process.stderr.write(`FAIL ${name}: ${message}\n`);
    await finish(false, { error: e && e.message ? e.message : String(e), phase: ctx.phase, pages: states });
  }
}

async function describePages(ctx) {
  const out = {};
  for (const { label, page } of ctx.pages) {
    out[label] = await Promise.race([
      page.evaluate(() => ({
        url: location.pathname,
        state: window.duetCall ? window.duetCall.state : null,
        status: document.getElementById('status') ? document.getElementById('status').textContent : null,
        pc: window.duetCall && window.duetCall.pc
          ? { connection: window.duetCall.pc.connectionState, ice: window.duetCall.pc.iceConnectionState,
            gathering: window.duetCall.pc.iceGatheringState, signaling: window.duetCall.pc.signalingState }
          : null,
      })),
      sleep(2000).then(() => 'page did not answer'),
    ]).catch((e) => 'evaluate failed: ' + (e && e.message));
  }
  return out;
}

/** Launches Debian's chromium (playwright gives it a fresh temporary --user-data-dir and removes it on close). */
export async function launch(ctx, extraArgs = []) {
  if (!existsSync(CHROMIUM)) throw new Failure(`${CHROMIUM} not found: apt-get install chromium`);
  const { chromium } = await import('playwright-core');
  ctx.phase = 'launching chromium';
  ctx.browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [...CHROMIUM_ARGS, ...extraArgs],
    timeout: 30000,
  });
  return ctx.browser;
}

/**
 * A page in a browser context of its own (separate storage, as two people on two machines), logging to ctx.log;
 * `contextOptions` go to playwright's newContext (e.g. `timezoneId`).
 */
export async function newPage(ctx, label, contextOptions = {}) {
  const context = await ctx.browser.newContext({ permissions: ['camera', 'microphone'], ...contextOptions });
  // Every Content-Security-Policy violation the page reports (see cspReport); init scripts are not subject to the CSP.
  await context.addInitScript(() => {
    window.__cspViolations = [];
    document.addEventListener('securitypolicyviolation', (e) => window.__cspViolations.push({
      directive: e.violatedDirective, blocked: e.blockedURI, source: e.sourceFile, line: e.lineNumber, sample: e.sample,
    }));
  });
  const page = await context.newPage();
  const entry = { label, page, policy: null, cspConsole: [] };
  const t = () => ((Date.now() - ctx.started) / 1000).toFixed(1).padStart(5);
  page.on('console', (m) => {
    const where = m.location() && m.location().url ? ` (${m.location().url.replace(/\?.*/, '')})` : '';
    ctx.log.push(`${t()} [${label}] console.${m.type()}: ${m.text()}${where}`);
    if (/Content Security Policy/i.test(m.text())) entry.cspConsole.push(m.text());
  });
  page.on('response', (r) => {
    if (r.request().isNavigationRequest() && r.frame() === page.mainFrame()) {
      entry.policy = r.headers()['content-security-policy'] || null;
    }
  });
  page.on('pageerror', (e) => ctx.log.push(`${t()} [${label}] pageerror: ${e.message}`));
  page.on('requestfailed', (r) => ctx.log.push(`${t()} [${label}] requestfailed: ${r.url()} ${r.failure() && r.failure().errorText}`));
  page.on('crash', () => ctx.log.push(`${t()} [${label}] page crashed`));
  ctx.pages.push(entry);
  return page;
}

/**
 * The Content-Security-Policy of every page (newPage) and what it blocked: `securitypolicyviolation` events and
 * console errors naming the policy. Fails unless every page was served with a policy and none was violated; resolves
 * to { policy, violations: 0 } for the result line.
 */
export async function cspReport(ctx) {
  ctx.phase = 'collecting Content-Security-Policy violations';
  const problems = [];
  let policy = null;
  for (const { label, page, policy: p, cspConsole } of ctx.pages) {
    if (!p) problems.push(`${label}: the page was served without a Content-Security-Policy`);
    policy = policy || p;
    const events = await page.evaluate(() => window.__cspViolations || []);
    for (const v of events) problems.push(`${label}: securitypolicyviolation ${JSON.stringify(v)}`);
    for (const text of cspConsole) problems.push(`${label}: console: ${text}`);
  }
  if (problems.length) throw new Failure(`Content-Security-Policy: ${problems.join('; ')}`);
  return { policy, violations: 0 };
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** What is left of the run's deadline, less a second for the report (1 s at least). */
export const remaining = (ctx) => Math.max(1000, ctx.timeoutMs - (Date.now() - ctx.started) - 1000);

/** Fails unless the daemon at `origin` answers GET /duet.js. */
export async function checkDaemon(ctx, origin) {
  ctx.phase = 'checking the daemon';
  const res = await fetch(`${origin}/duet.js`).catch((e) => {
    throw new Failure(`the daemon does not answer at ${origin}: ${e.cause ? e.cause.message : e.message}`);
  });
  if (!res.ok) throw new Failure(`GET ${origin}/duet.js answered ${res.status}`);
}

/** A new page (see newPage) showing `url`, sized `viewport` if given; fails unless the load answers 2xx. */
export async function openPage(ctx, label, url, { viewport } = {}) {
  ctx.phase = `opening the ${label} page`;
  const page = await newPage(ctx, label);
  if (viewport) await page.setViewportSize(viewport);
  const r = await page.goto(url, { waitUntil: 'load', timeout: 15000 });
  if (!r || !r.ok()) throw new Failure(`GET ${url} answered ${r ? r.status() : 'nothing'}`);
  return page;
}

/**
 * npm-client scenarios: opens `url` once per role, in order (see openPage), and fails unless the in-page function
 * `loaded` holds on each (`what` names what did not load). Resolves to { role: page }.
 */
export async function openClientPages(ctx, roles, url, loaded, what) {
  const pages = {};
  for (const role of roles) {
    const page = await openPage(ctx, role, url);
    if (!(await page.evaluate(loaded))) throw new Failure(`${role}: ${what} did not load`);
    pages[role] = page;
  }
  return pages;
}

/** Duet join pages: each page's duetCall state and session and its status line; fails once a page ended the call. */
export async function duetStates(pages) {
  const seen = await Promise.all(pages.map((p) => p.evaluate(() => ({
    state: window.duetCall ? window.duetCall.state : null,
    session: window.duetCall ? window.duetCall.session : null,
    status: document.getElementById('status').textContent,
  }))));
  for (const s of seen) if (s.state === 'ended') throw new Failure(`a page ended the call: ${JSON.stringify(seen)}`);
  return seen;
}

/** Duet join pages: waits (until the deadline) for duetCall.state === 'connected' on all; resolves to duetStates. */
export async function waitConnected(ctx, pages) {
  ctx.phase = "waiting for duetCall.state === 'connected' on both pages";
  return waitFor(ctx.phase, remaining(ctx), async () => {
    const seen = await duetStates(pages);
    return { done: seen.every((s) => s.state === 'connected'), seen };
  });
}

/**
 * Polls `check()` every `intervalMs` until it returns `{ done: true, seen }` (resolves to `seen`) or `ms` pass
 * (Failure naming `what` and the last `seen`).
 */
export async function waitFor(what, ms, check, { intervalMs = 250 } = {}) {
  const end = Date.now() + ms;
  for (;;) {
    const { done, seen } = await check();
    if (done) return seen;
    if (Date.now() > end) throw new Failure(`${what}: not reached within ${ms} ms; last seen ${JSON.stringify(seen)}`);
    await sleep(intervalMs);
  }
}

/**
 * In-page function: a summary of an RTCPeerConnection's stats. Pass it to page.evaluate with an expression naming
 * the peer connection, e.g. `page.evaluate(pcSummary, 'window.duetCall && window.duetCall.pc')` (only property paths
 * joined by `&&`: it is walked, not evaluated, so it works under a CSP without 'unsafe-eval').
 * Returns { connection, inbound:{video,audio}, outbound:{video,audio} (bytes), pair:{state, local, remote} } where
 * local/remote are {type, protocol, relayProtocol, address, port, url} (`url`: the STUN or TURN server a local
 * candidate was gathered from, else null), or null without a peer connection.
 */
export async function pcSummary(pcExpr) {
  // eslint-disable-next-line no-new-func
  // Walk the property path of the last `&&` operand (no eval: the join page's CSP forbids it).
  const path = pcExpr.split('&&').pop().trim().replace(/^window\./, '').split('.');
  const pc = path.reduce((o, k) => (o == null ? o : o[k]), window);
  if (!pc) return null;
  const stats = await pc.getStats();
  const byId = new Map();
  stats.forEach((s) => byId.set(s.id, s));
  const out = { connection: pc.connectionState, inbound: { video: 0, audio: 0 }, outbound: { video: 0, audio: 0 },
    frames_decoded: 0, pair: null };
  let pairId = null;
  stats.forEach((s) => {
    const kind = s.kind || s.mediaType;
    if (s.type === 'inbound-rtp' && kind in out.inbound) out.inbound[kind] += s.bytesReceived || 0;
    if (s.type === 'inbound-rtp' && kind === 'video') out.frames_decoded += s.framesDecoded || 0;
    if (s.type === 'outbound-rtp' && kind in out.outbound) out.outbound[kind] += s.bytesSent || 0;
    if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
  });
  if (!pairId) { // older or other browsers: the nominated succeeded pair, or one flagged `selected`
    stats.forEach((s) => {
      if (s.type === 'candidate-pair' && (s.selected || (s.nominated && s.state === 'succeeded'))) pairId = pairId || s.id;
    });
  }
  const pair = pairId && byId.get(pairId);
  if (pair) {
    const cand = (id) => {
      const c = byId.get(id);
      return c ? { type: c.candidateType, protocol: c.protocol, relayProtocol: c.relayProtocol || null,
        address: c.address || c.ip || null, port: c.port, url: c.url || null } : null;
    };
    out.pair = { state: pair.state, local: cand(pair.localCandidateId), remote: cand(pair.remoteCandidateId),
      bytes_sent: pair.bytesSent || 0, bytes_received: pair.bytesReceived || 0,
      rtt_ms: pair.currentRoundTripTime != null ? Math.round(pair.currentRoundTripTime * 1000) : null };
  }
  return out;
}

/** Whether a pcSummary shows inbound video and a selected pair through a relay candidate on either end. */
export function relayedVideo(s) {
  return !!(s && s.inbound.video > 0 && s.pair && s.pair.local && s.pair.remote &&
    (s.pair.local.type === 'relay' || s.pair.remote.type === 'relay'));
}

/**
 * Waits (until the deadline) for inbound video over a relay candidate pair on every page, the pcSummary of the peer
 * connection `pcExpr` names (polled every 500 ms); resolves to the summaries.
 */
export async function waitRelayedVideo(ctx, pages, pcExpr,
  phase = 'waiting for inbound video over a relay candidate pair on both pages (getStats)') {
  ctx.phase = phase;
  return waitFor(ctx.phase, remaining(ctx), async () => {
    const seen = await Promise.all(pages.map((p) => p.evaluate(pcSummary, pcExpr)));
    return { done: seen.every(relayedVideo), seen };
  }, { intervalMs: 500 });
}

const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8', '.map': 'application/json', '.json': 'application/json' };

/**
 * A static HTTP server on 127.0.0.1 (port 0) for pages of the npm-client scenarios: `routes` maps URL paths to files
 * (absolute, or relative to this folder), e.g. { '/simplepeer.min.js': 'node_modules/simple-peer/simplepeer.min.js',
 * '/vy.html': 'pages/vy.html' }. Resolves to { origin, close() }.
 */
export async function serveStatic(routes) {
  const server = createServer(async (req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    const file = routes[path];
    if (!file) { res.writeHead(404).end('not found'); return; }
    try {
      const body = await readFile(normalize(file.startsWith('/') ? file : join(HERE, file)));
      res.writeHead(200, { 'content-type': TYPES[extname(file)] || 'application/octet-stream', 'cache-control': 'no-store' });
      res.end(body);
    } catch (e) {
      res.writeHead(500).end(String(e));
    }
  });
  await new Promise((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return { origin: `http://127.0.0.1:${port}`, close: () => new Promise((r) => server.close(r)) };
}

/** Runs `body(server)` with a serveStatic(routes) server, which is closed afterwards (2 s at most). */
export async function withStaticServer(routes, body) {
  const server = await serveStatic(routes);
  try {
    return await body(server);
  } finally {
    await Promise.race([server.close(), sleep(2000)]);
  }
}
