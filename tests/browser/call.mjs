#!/usr/bin/env node
// Two Duet join pages call each other in Debian's chromium, through Duet's signaling hub and only through its TURN
// relay (issue 4, "Show it", browser test 1).
//
//   node call.mjs [--timeout-ms N] [--guest-http GUEST_HTTP_ADDR] HTTP_ADDR HOST_JOIN_URL GUEST_JOIN_URL
//
// HTTP_ADDR is the daemon's HTTP listener (`127.0.0.1:PORT` or `http://127.0.0.1:PORT`, the `http` of its ready
// line); the join URLs are the bookings' `join_url`s (or bare link tokens). The pages are loaded from HTTP_ADDR
// (the path of each join URL, so a `public_url` naming another host still works), the guest's from GUEST_HTTP_ADDR
// when given (cluster mode: another node, tests/browser_cluster.rs), with `?autojoin=1&relay=1`: they
// join at once and use relay-only ICE. Passes when both `duetCall.state === 'connected'` and, on BOTH pages,
// `duetCall.pc.getStats()` shows inbound-rtp video bytes and a selected candidate pair with a relay candidate, and
// both pages were served with a Content-Security-Policy that reported no violation (cspReport). Then both pages hang
// up, which sends their call summaries to the daemon.
// Prints one JSON line on stdout ({"ok":true|false,…}); exits 0 on success, 1 on failure (message on stderr),
// 2 on bad usage. A hard deadline (default 60 s) means it never hangs.
//
// Run it inside tests/browser/run-in-netns.sh together with the daemon (see tests/browser.rs).

import { checkDaemon, cspReport, daemonOrigin, joinPath, launch, openPage, parseArgs, run, waitConnected, waitRelayedVideo }
  from './harness.mjs';

const { timeoutMs, options, positional, usage } = parseArgs({
  usageLine: 'node call.mjs [--timeout-ms N] [--guest-http GUEST_HTTP_ADDR] HTTP_ADDR HOST_JOIN_URL GUEST_JOIN_URL',
  help: 'Two Duet join pages call each other through the relay.',
  count: 3,
  options: { 'guest-http': '' },
});
const [httpArg, ...joins] = positional;
const origin = daemonOrigin(httpArg);
const guestOrigin = options['guest-http'] ? daemonOrigin(options['guest-http']) : origin;
const origins = [origin, guestOrigin];
const pageUrls = joins.map((j, i) => `${origins[i]}${joinPath(j, usage)}?autojoin=1&relay=1`);

run('duet-join-pages', timeoutMs, async (ctx) => {
  for (const o of new Set(origins)) await checkDaemon(ctx, o);
  await launch(ctx);
  const labels = ['host', 'guest'];
  const pages = [];
  for (const [i, label] of labels.entries()) pages.push(await openPage(ctx, label, pageUrls[i]));

  await waitConnected(ctx, pages);
  const stats = await waitRelayedVideo(ctx, pages, 'window.duetCall && window.duetCall.pc');
  const csp = await cspReport(ctx);
  // Hang up on both pages: each sends its call summary (POST /v1/join/{link}/report, sendBeacon); tests/browser.rs
  // reads it back from the call report.
  for (const p of pages) await p.evaluate(() => window.duetCall.refreshSummary());
  for (const p of pages) await p.evaluate(() => window.duetCall.hangup());
  await new Promise((r) => setTimeout(r, 1000));
  return { http: origin, guest_http: guestOrigin, csp, pages: Object.fromEntries(labels.map((l, i) => [l, stats[i]])) };
});
