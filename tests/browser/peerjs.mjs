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

import { Failure, launch, newPage, pcSummary, relayedVideo, run, serveStatic, sleep, waitFor } from './harness.mjs';

function usage(msg) {
  process.stderr.write(`${msg}\nusage: node peerjs.mjs [--timeout-ms N] CONFIG_JSON\n`);
  process.exit(2);
}

const argv = process.argv.slice(2);
let timeoutMs = 60000;
const positional = [];
for (let i = 0; i < argv.length; i++) {
  if (argv[i] === '--timeout-ms') timeoutMs = Number(argv[++i]);
  else if (argv[i] === '-h' || argv[i] === '--help') usage('Two peerjs pages connect in peerjs mode.');
  else positional.push(argv[i]);
}
if (positional.length !== 1) usage(`expected 1 argument, got ${positional.length}`);
if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) usage('--timeout-ms needs a positive number');
let config;
try {
  config = JSON.parse(positional[0]);
} catch (e) {
  usage(`CONFIG_JSON is not JSON: ${e.message}`);
}
for (const k of ['host', 'port', 'caller', 'callee']) if (!config[k]) usage(`CONFIG_JSON lacks ${k}`);

const PC = 'window.pj && window.pj.call && window.pj.call.peerConnection';

run('peerjs-pages', timeoutMs, async (ctx) => {
  const server = await serveStatic({
    '/peerjs.html': 'pages/peerjs.html',
    '/peerjs-client.js': 'pages/peerjs-client.js',
    '/peerjs.min.js': 'node_modules/peerjs/dist/peerjs.min.js',
  });
  try {
    await launch(ctx);
    const roles = ['callee', 'caller'];
    const pages = {};
    for (const role of roles) {
      ctx.phase = `opening the ${role} page`;
      const page = await newPage(ctx, role);
      const r = await page.goto(`${server.origin}/peerjs.html`, { waitUntil: 'load', timeout: 15000 });
      if (!r || !r.ok()) throw new Failure(`GET ${server.origin}/peerjs.html answered ${r ? r.status() : 'nothing'}`);
      const ok = await page.evaluate(() => typeof window.Peer === 'function' && typeof window.startPeer === 'function');
      if (!ok) throw new Failure(`${role}: peerjs or the page script did not load`);
      pages[role] = page;
    }
    const remaining = () => Math.max(1000, timeoutMs - (Date.now() - ctx.started) - 1000);
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
    await waitFor(ctx.phase, remaining(), async () => {
      const seen = await Promise.all(roles.map((r) => state(pages[r])));
      for (const s of seen) if (s.errors.length) throw new Failure(`a page reported errors: ${JSON.stringify(seen)}`);
      return { done: seen.every((s) => s.streams > 0 && s.connOpen && s.data.length > 0), seen };
    });
    ctx.phase = 'waiting for inbound video over a relay candidate pair on both pages (getStats)';
    const stats = await waitFor(ctx.phase, remaining(), async () => {
      const seen = await Promise.all(roles.map((r) => pages[r].evaluate(pcSummary, PC)));
      return { done: seen.every(relayedVideo), seen };
    }, { intervalMs: 500 });
    const media = await Promise.all(roles.map((r) => state(pages[r])));
    const result = { pages: Object.fromEntries(roles.map((r, i) => [r, { ...media[i], stats: stats[i] }])) };

    // Round 2 (optional): the static legacy key, data only.
    if (config.staticKey) {
      for (const role of roles) await register(role, config.staticKey);
      ctx.phase = 'static key: the caller opens a data connection';
      await pages.caller.evaluate((dst) => window.callPeer(dst, false), config.callee.id);
      ctx.phase = 'static key: waiting for data messages on both pages';
      const seen = await waitFor(ctx.phase, remaining(), async () => {
        const s = await Promise.all(roles.map((r) => state(pages[r])));
        for (const x of s) if (x.errors.length) throw new Failure(`a page reported errors: ${JSON.stringify(s)}`);
        return { done: s.every((x) => x.connOpen && x.data.length > 0), seen: s };
      });
      result.staticKey = Object.fromEntries(roles.map((r, i) => [r, seen[i]]));
    }
    return result;
  } finally {
    await Promise.race([server.close(), sleep(2000)]);
  }
});
