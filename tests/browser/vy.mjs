#!/usr/bin/env node
// Two simple-peer pages (simple-peer from npm, Virtual Y client logic: pages/vy-client.js) call each other through
// Duet's `vy` signaling mode and only through its TURN relay (issue 4, "Show it", browser test 2).
//
//   node vy.mjs [--timeout-ms N] CONFIG_JSON
//
// CONFIG_JSON: {"ws": "ws://127.0.0.1:PORT", "path": "/", "meetingId": "<booking external_id>",
//               "instructor": {"iceServers": [...]}, "customer": {"iceServers": [...]}}
// (the ICE servers of the booking's host and guest, from POST /v1/join). The customer connects first, then the
// instructor, as in the Virtual Y flow. Passes when both pages are connected, received a remote stream, each got
// the other's data-channel message, and getStats() shows inbound video over a relay candidate pair on both.
// Prints one JSON line on stdout ({"ok":true|false,…}); exits 0 on success, 1 on failure, 2 on bad usage. A hard
// deadline (default 60 s) means it never hangs. Run it inside tests/browser/run-in-netns.sh with the daemon (see
// tests/browser_modes.rs).

import {
  Failure, launch, openClientPages, parseConfigArgs, remaining, run, waitFor, waitRelayedVideo, withStaticServer,
} from './harness.mjs';

const { timeoutMs, config } = parseConfigArgs('vy.mjs', 'Two simple-peer pages call each other in vy mode.',
  ['ws', 'meetingId', 'instructor', 'customer']);

const PC = 'window.vy && window.vy.peer && window.vy.peer._pc';

const ROUTES = {
  '/vy.html': 'pages/vy.html',
  '/vy-client.js': 'pages/vy-client.js',
  '/simplepeer.min.js': 'node_modules/simple-peer/simplepeer.min.js',
};

run('vy-simple-peer', timeoutMs, (ctx) => withStaticServer(ROUTES, async (server) => {
  await launch(ctx);
  const roles = ['customer', 'instructor'];
  const pages = await openClientPages(ctx, roles, `${server.origin}/vy.html`,
    () => typeof window.SimplePeer === 'function' && typeof window.startVy === 'function', 'simple-peer or the page script');
  const path = config.path || '/';
  const url = (isInstructor) => `${config.ws}${path}?meetingId=${config.meetingId}&isInstructorRole=${isInstructor}`;

  for (const role of roles) {
    ctx.phase = `connecting the ${role} to the hub`;
    const isInstructor = role === 'instructor';
    await pages[role].evaluate((cfg) => window.startVy(cfg),
      { url: url(isInstructor), isInstructor, iceServers: config[role].iceServers });
    await waitFor(ctx.phase, Math.min(10000, remaining(ctx)), async () => {
      const seen = await pages[role].evaluate(() => ({ opens: window.vy.opens, closes: window.vy.closes }));
      if (seen.closes.length) throw new Failure(`${role}: the hub closed the socket: ${JSON.stringify(seen)}`);
      return { done: seen.opens > 0, seen };
    });
  }

  const state = (p) => p.evaluate(() => {
    const s = window.vy;
    return { opens: s.opens, closes: s.closes, ready: s.ready, frames: s.frames, badFrames: s.badFrames,
      signalsOut: s.signalsOut, signalsIn: s.signalsIn, peers: s.peers, connected: s.connected,
      streams: s.streams, data: s.data, errors: s.errors };
  });

  ctx.phase = 'waiting for both simple-peer peers to connect, stream and exchange data';
  await waitFor(ctx.phase, remaining(ctx), async () => {
    const seen = await Promise.all(roles.map((r) => state(pages[r])));
    for (const s of seen) if (s.badFrames.length) throw new Failure(`a non-JSON frame reached a page: ${JSON.stringify(seen)}`);
    return { done: seen.every((s) => s.connected && s.streams > 0 && s.data.length > 0), seen };
  });

  const stats = await waitRelayedVideo(ctx, roles.map((r) => pages[r]), PC);

  const final = await Promise.all(roles.map((r) => state(pages[r])));
  return {
    pages: Object.fromEntries(roles.map((r, i) => [r, { ...final[i], stats: stats[i] }])),
  };
}));
