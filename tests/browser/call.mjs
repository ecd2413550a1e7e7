#!/usr/bin/env node
// Two Duet join pages call each other in Debian's chromium, through Duet's signaling hub and only through its TURN
// relay (issue 4, "Show it", browser test 1).
//
//   node call.mjs [--timeout-ms N] HTTP_ADDR HOST_JOIN_URL GUEST_JOIN_URL
//
// HTTP_ADDR is the daemon's HTTP listener (`127.0.0.1:PORT` or `http://127.0.0.1:PORT`, the `http` of its ready
// line); the join URLs are the bookings' `join_url`s (or bare link tokens). The pages are loaded from HTTP_ADDR
// (the path of each join URL, so a `public_url` naming another host still works) with `?autojoin=1&relay=1`: they
// join at once and use relay-only ICE. Passes when both `duetCall.state === 'connected'` and, on BOTH pages,
// `duetCall.pc.getStats()` shows inbound-rtp video bytes and a selected candidate pair with a relay candidate.
// Prints one JSON line on stdout ({"ok":true|false,…}); exits 0 on success, 1 on failure (message on stderr),
// 2 on bad usage. A hard deadline (default 60 s) means it never hangs.
//
// Run it inside tests/browser/run-in-netns.sh together with the daemon (see tests/browser.rs).

import { Failure, launch, newPage, pcSummary, relayedVideo, run, waitFor } from './harness.mjs';

function usage(msg) {
  process.stderr.write(`${msg}\nusage: node call.mjs [--timeout-ms N] HTTP_ADDR HOST_JOIN_URL GUEST_JOIN_URL\n`);
  process.exit(2);
}

const argv = process.argv.slice(2);
let timeoutMs = 60000;
const positional = [];
for (let i = 0; i < argv.length; i++) {
  if (argv[i] === '--timeout-ms') timeoutMs = Number(argv[++i]);
  else if (argv[i] === '-h' || argv[i] === '--help') usage('Two Duet join pages call each other through the relay.');
  else positional.push(argv[i]);
}
if (positional.length !== 3) usage(`expected 3 arguments, got ${positional.length}`);
if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) usage('--timeout-ms needs a positive number');
const [httpArg, ...joins] = positional;
const origin = new URL(/^https?:\/\//.test(httpArg) ? httpArg : `http://${httpArg}`).origin;
const pageUrls = joins.map((j) => {
  const path = /^https?:\/\//.test(j) ? new URL(j).pathname : `/j/${encodeURIComponent(j)}`;
  if (!/^\/j\/[^/]+$/.test(path)) usage(`not a join URL: ${j}`);
  return `${origin}${path}?autojoin=1&relay=1`;
});

run('duet-join-pages', timeoutMs, async (ctx) => {
  ctx.phase = 'checking the daemon';
  const res = await fetch(`${origin}/duet.js`).catch((e) => {
    throw new Failure(`the daemon does not answer at ${origin}: ${e.cause ? e.cause.message : e.message}`);
  });
  if (!res.ok) throw new Failure(`GET ${origin}/duet.js answered ${res.status}`);

  await launch(ctx);
  const labels = ['host', 'guest'];
  const pages = [];
  for (const [i, label] of labels.entries()) {
    ctx.phase = `opening the ${label} page`;
    const page = await newPage(ctx, label);
    const r = await page.goto(pageUrls[i], { waitUntil: 'load', timeout: 15000 });
    if (!r || !r.ok()) throw new Failure(`GET ${pageUrls[i]} answered ${r ? r.status() : 'nothing'}`);
    pages.push(page);
  }
  const remaining = () => Math.max(1000, timeoutMs - (Date.now() - ctx.started) - 1000);

  ctx.phase = "waiting for duetCall.state === 'connected' on both pages";
  await waitFor(ctx.phase, remaining(), async () => {
    const seen = await Promise.all(pages.map((p) => p.evaluate(() => ({
      state: window.duetCall ? window.duetCall.state : null,
      status: document.getElementById('status').textContent,
    }))));
    for (const s of seen) if (s.state === 'ended') throw new Failure(`a page ended the call: ${JSON.stringify(seen)}`);
    return { done: seen.every((s) => s.state === 'connected'), seen };
  });

  ctx.phase = 'waiting for inbound video over a relay candidate pair on both pages (getStats)';
  const stats = await waitFor(ctx.phase, remaining(), async () => {
    const seen = await Promise.all(pages.map((p) => p.evaluate(pcSummary, 'window.duetCall && window.duetCall.pc')));
    return { done: seen.every(relayedVideo), seen };
  }, { intervalMs: 500 });

  return { http: origin, pages: Object.fromEntries(labels.map((l, i) => [l, stats[i]])) };
});
