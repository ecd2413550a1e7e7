#!/usr/bin/env node
// Two pages using the peerjs client from npm (pages/peerjs-client.js) connect through Duet's `peerjs` signaling mode
// and only through its TURN relay (issue 4, "Show it", browser test 3).
//
//   node peerjs.mjs [--timeout-ms N] CONFIG_JSON
//
// CONFIG_JSON: {"host": "127.0.0.1", "port": PORT, "path": "/",
//               "caller": {"id": "…", "key": "<session token or 'peerjs'>", "iceServers": [...]},
//               "callee": {"id": "…", "key": "…", "iceServers": [...]},
//               "staticKey": "peerjs"}   (optional: a second, data-only round with the static legacy key)
// The caller calls the callee with its camera (`peer.call`) and opens a data connection (`peer.connect`); the callee
// answers with its camera. Passes when both pages received the remote stream and the other's data message, and
// getStats() of both media connections shows inbound video over a relay candidate pair. With `staticKey`, both
// pages then register again under the static key and exchange data messages only.
// Prints one JSON line on stdout ({"ok":true|false,…}); exits 0 on success, 1 on failure, 2 on bad usage. A hard
// deadline (default 60 s) means it never hangs. Run it inside tests/browser/run-in-netns.sh with the daemon (see
// tests/browser_modes.rs).

import {
  Failure, launch, openClientPages, parseConfigArgs, remaining, run, waitFor, waitRelayedVideo, withStaticServer,
} from './harness.mjs';

const { timeoutMs, config } = parseConfigArgs('peerjs.mjs', 'Two peerjs pages connect in peerjs mode.',
  ['host', 'port', 'caller', 'callee']);

const PC = 'window.pj && window.pj.call && window.pj.call.peerConnection';

const ROUTES = {
  '/peerjs.html': 'pages/peerjs.html',
  '/peerjs-client.js': 'pages/peerjs-client.js',
  '/peerjs.min.js': 'node_modules/peerjs/dist/peerjs.min.js',
};

run('peerjs-pages', timeoutMs, (ctx) => withStaticServer(ROUTES, async (server) => {
  await launch(ctx);
  const roles = ['callee', 'caller'];
  const pages = await openClientPages(ctx, roles, `${server.origin}/peerjs.html`,
    () => typeof window.Peer === 'function' && typeof window.startPeer === 'function', 'peerjs or the page script');
  const path = config.path || '/';
  const register = async (role, key) => {
    ctx.phase = `registering the ${role} (${config[role].id}) with the hub`;
    const opts = { id: config[role].id, host: config.host, port: config.port, path, key,
      iceServers: config[role].iceServers };
    const id = await Promise.race([
      pages[role].evaluate((o) => window.startPeer(o), opts).catch((e) => {
        throw new Failure(`${role}: ${e.message}`);
      }),
      new Promise((_, rej) => setTimeout(() => rej(new Failure(`${role}: no OPEN within 10 s`)), 10000)),
    ]);
    if (id !== config[role].id) throw new Failure(`${role}: registered as ${id}, not ${config[role].id}`);
  };
  const state = (p) => p.evaluate(() => {
    const s = window.pj;
    return { open: s.open, errors: s.errors, disconnected: s.disconnected, streams: s.streams,
      connOpen: s.connOpen, data: s.data };
  });

  // Round 1: media and data with the configured keys (session tokens: scoped to the booking).
  for (const role of roles) await register(role, config[role].key);
  ctx.phase = 'the caller calls the callee (media and data)';
  await pages.caller.evaluate((dst) => window.callPeer(dst, true), config.callee.id);
  ctx.phase = 'waiting for remote streams and data messages on both pages';
  await waitFor(ctx.phase, remaining(ctx), async () => {
    const seen = await Promise.all(roles.map((r) => state(pages[r])));
    for (const s of seen) if (s.errors.length) throw new Failure(`a page reported errors: ${JSON.stringify(seen)}`);
    return { done: seen.every((s) => s.streams > 0 && s.connOpen && s.data.length > 0), seen };
  });
  const stats = await waitRelayedVideo(ctx, roles.map((r) => pages[r]), PC);
  const media = await Promise.all(roles.map((r) => state(pages[r])));
  const result = { pages: Object.fromEntries(roles.map((r, i) => [r, { ...media[i], stats: stats[i] }])) };

  // Round 2 (optional): the static legacy key, data only.
  if (config.staticKey) {
    for (const role of roles) await register(role, config.staticKey);
    ctx.phase = 'static key: the caller opens a data connection';
    await pages.caller.evaluate((dst) => window.callPeer(dst, false), config.callee.id);
    ctx.phase = 'static key: waiting for data messages on both pages';
    const seen = await waitFor(ctx.phase, remaining(ctx), async () => {
      const s = await Promise.all(roles.map((r) => state(pages[r])));
      for (const x of s) if (x.errors.length) throw new Failure(`a page reported errors: ${JSON.stringify(s)}`);
      return { done: s.every((x) => x.connOpen && x.data.length > 0), seen: s };
    });
    result.staticKey = Object.fromEntries(roles.map((r, i) => [r, seen[i]]));
  }
  return result;
}));
