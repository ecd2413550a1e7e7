#!/usr/bin/env node
// Browser test 2 (issue 4): the join page's `?debug=1` diagnostics panel, plus the call page's recovery paths.
//
//   node debug.mjs [--timeout-ms N] [--screenshot PATH] HTTP_ADDR HOST_JOIN_URL GUEST_JOIN_URL
//
// The host page is opened with `?debug=1&autojoin=1&relay=1`, the guest page with `?autojoin=1&relay=1` (as in
// call.mjs). Passes when, after both reach duetCall.state === 'connected':
//  1. the host's diagnostics panel (#diag) shows a relay candidate in its "Local candidates gathered" table, a
//     selected candidate pair with a relay candidate (#diagPair), and an inbound video bitrate;
//     a screenshot of the host page goes to PATH (default /tmp/duet-debug.png), the guest's to PATH-guest.png;
//  2. the guest mutes its microphone (#mic: aria-pressed, track.enabled) and swaps its camera track with
//     duetCall.replaceTrack: no offer and no renegotiation request is signalled, and the host keeps decoding video;
//  3. the guest asks for an ICE restart (duetCall.restartIce): the host re-offers with new ICE credentials and both
//     stay connected;
//  4. the host's signaling WebSocket is closed under it: it reconnects, the hub forms a new session, both pages
//     build a fresh peer connection and are connected again with inbound video over the relay
//     (screenshot PATH-reconnected.png);
//  5. no page printed SDP or a token to the console.
// Prints one JSON line on stdout ({"ok":true|false,…}); exits 0 on success, 1 on failure, 2 on bad usage.
// Run it inside tests/browser/run-in-netns.sh together with the daemon (see tests/browser.rs).

import {
  Failure, checkDaemon, cspReport, daemonOrigin, duetStates, joinPath, launch, openPage, parseArgs, pcSummary, remaining, run,
  waitConnected, waitFor, waitRelayedVideo,
} from './harness.mjs';

const { timeoutMs, options, positional, usage } = parseArgs({
  usageLine: 'node debug.mjs [--timeout-ms N] [--screenshot PATH] HTTP_ADDR HOST_JOIN_URL GUEST_JOIN_URL',
  help: 'The join page diagnostics panel and recovery paths.',
  count: 3,
  timeoutMs: 90000,
  options: { screenshot: '/tmp/duet-debug.png' },
});
const shot = options.screenshot;
if (!shot) usage('--screenshot needs a path');
const [httpArg, ...joins] = positional;
const origin = daemonOrigin(httpArg);
const paths = joins.map((j) => joinPath(j, usage));
const linkTokens = paths.map((p) => decodeURIComponent(p.slice(3)));
const pageUrls = [`${origin}${paths[0]}?debug=1&autojoin=1&relay=1`, `${origin}${paths[1]}?autojoin=1&relay=1`];
const sibling = (suffix) => shot.replace(/(\.png)?$/i, `-${suffix}.png`);

/** In-page: what the diagnostics panel shows. */
function readPanel() {
  const diag = document.getElementById('diag');
  const cands = {};
  for (const row of document.querySelectorAll('#diagCands tbody tr')) {
    cands[row.dataset.type] = [...row.querySelectorAll('td')].map((td) => Number(td.textContent));
  }
  const pair = document.getElementById('diagPair');
  const videoIn = [...document.querySelectorAll('#diag tbody tr')].find((r) => r.querySelector('th') && r.querySelector('th').textContent === 'video in');
  return {
    visible: !!diag && !diag.hidden && diag.getBoundingClientRect().height > 0,
    relayCandidates: diag ? Number(diag.dataset.relayCandidates || 0) : 0,
    session: diag ? diag.dataset.session : null,
    pairLocal: diag ? diag.dataset.pairLocal : null,
    pairRemote: diag ? diag.dataset.pairRemote : null,
    cands,
    pairText: pair ? pair.textContent : null,
    videoInKbps: videoIn ? Number(videoIn.querySelectorAll('td')[0].textContent) : NaN,
    status: document.getElementById('status').textContent,
  };
}

run('duet-debug-panel', timeoutMs, async (ctx) => {
  await checkDaemon(ctx, origin);
  await launch(ctx);
  const labels = ['host', 'guest'];
  const viewports = [{ width: 1400, height: 1000 }, { width: 1000, height: 760 }];
  const pages = [];
  for (const [i, label] of labels.entries()) pages.push(await openPage(ctx, label, pageUrls[i], { viewport: viewports[i] }));
  const [host, guest] = pages;
  const bothConnected = () => duetStates(pages);

  const first = await waitConnected(ctx, pages);

  // 1. The diagnostics panel.
  ctx.phase = 'waiting for the diagnostics panel to show a relay candidate, a relay pair and inbound video';
  const panel = await waitFor(ctx.phase, remaining(ctx), async () => {
    const seen = await host.evaluate(readPanel);
    const done = seen.visible && seen.relayCandidates > 0 && seen.cands.relay && seen.cands.relay.some((n) => n > 0) &&
      (seen.pairLocal === 'relay' || seen.pairRemote === 'relay') && /relay/.test(seen.pairText || '') && seen.videoInKbps > 0;
    return { done, seen };
  }, { intervalMs: 500 });
  const guestHasPanel = await guest.evaluate(() => !document.getElementById('diag').hidden);
  if (guestHasPanel) throw new Failure('the diagnostics panel shows without ?debug=1');
  ctx.phase = 'taking screenshots';
  await host.screenshot({ path: shot, fullPage: true });
  await guest.screenshot({ path: sibling('guest'), fullPage: true });

  // 2. Mute, and a camera switch without renegotiation.
  ctx.phase = 'muting the guest microphone';
  await guest.click('#mic');
  const muted = await guest.evaluate(() => ({
    pressed: document.getElementById('mic').getAttribute('aria-pressed'),
    enabled: window.duetCall.localStream.getAudioTracks().map((t) => t.enabled),
  }));
  if (muted.pressed !== 'true' || muted.enabled.some((e) => e)) throw new Failure(`mute did not work: ${JSON.stringify(muted)}`);
  await guest.click('#mic');

  ctx.phase = 'swapping the guest camera track with replaceTrack';
  const framesBefore = (await host.evaluate(pcSummary, 'window.duetCall.pc')).frames_decoded;
  const swap = await guest.evaluate(async () => {
    const call = window.duetCall;
    const sent = [];
    const orig = call._signal.bind(call);
    call._signal = (d) => { sent.push(d.type || Object.keys(d).join(',')); return orig(d); };
    const pc = call.pc;
    const old = call.localStream.getVideoTracks()[0];
    const fresh = await Duet.getTrack('video');
    await call.replaceTrack('video', fresh);
    old.stop();
    await new Promise((r) => setTimeout(r, 1500));
    call._signal = orig;
    const sender = pc.getSenders().find((s) => s.track && s.track.kind === 'video');
    return { samePc: pc === call.pc, senderHasNew: !!sender && sender.track === fresh, signalled: sent.filter((t) => t !== 'candidate'),
      inStream: call.localStream.getVideoTracks().map((t) => t === fresh), signalingState: pc.signalingState };
  });
  if (!swap.samePc || !swap.senderHasNew || swap.signalled.length || swap.signalingState !== 'stable') {
    throw new Failure(`replaceTrack renegotiated or did not take: ${JSON.stringify(swap)}`);
  }
  await waitFor('the host decoding video after the camera swap', remaining(ctx), async () => {
    const s = await host.evaluate(pcSummary, 'window.duetCall.pc');
    return { done: s.frames_decoded > framesBefore + 5, seen: { framesBefore, now: s.frames_decoded } };
  }, { intervalMs: 500 });

  // 3. ICE restart asked for by the guest (the host offers with iceRestart).
  ctx.phase = 'ICE restart requested by the guest';
  const ufrag = () => host.evaluate(() => {
    const d = window.duetCall.pc.localDescription;
    const m = d && /a=ice-ufrag:(\S+)/.exec(d.sdp);
    return m ? m[1] : null;
  });
  const ufragBefore = await ufrag();
  await guest.evaluate(() => window.duetCall.restartIce());
  await waitFor(ctx.phase + ': new ICE credentials on the host, both connected', remaining(ctx), async () => {
    const u = await ufrag();
    const seen = await bothConnected();
    return { done: u && u !== ufragBefore && seen.every((s) => s.state === 'connected'), seen: { u, ufragBefore, seen } };
  }, { intervalMs: 300 });

  // 4. Signaling socket lost: reconnect, new session, fresh peer connections.
  ctx.phase = 'dropping the host signaling socket';
  const sessionBefore = first[0].session;
  await host.evaluate(() => { window.__oldPc = window.duetCall.pc; window.duetCall.ws.close(); });
  ctx.phase = 'waiting for a new session and a connected fresh peer connection on both pages';
  const after = await waitFor(ctx.phase, remaining(ctx), async () => {
    const seen = await bothConnected();
    const fresh = await host.evaluate(() => window.duetCall.pc && window.duetCall.pc !== window.__oldPc);
    return { done: fresh && seen.every((s) => s.state === 'connected' && s.session > sessionBefore && s.session === seen[0].session), seen };
  }, { intervalMs: 300 });
  const stats = await waitRelayedVideo(ctx, pages, 'window.duetCall && window.duetCall.pc',
    'waiting for inbound video over a relay pair after the reconnection');
  const reconnects = await host.evaluate(() => window.duetCall.reconnects);
  if (reconnects < 1) throw new Failure(`the host did not count its reconnection (${reconnects})`);
  await waitFor('the panel catching up', remaining(ctx), async () => {
    const seen = await host.evaluate(readPanel);
    return { done: seen.session === String(after[0].session) && seen.pairLocal === 'relay' && seen.videoInKbps > 0, seen };
  }, { intervalMs: 500 });
  await host.screenshot({ path: sibling('reconnected'), fullPage: true });

  // 5. Nothing secret on the console.
  ctx.phase = 'checking the console';
  // (harness lines end with the message's source location)
  const texts = ctx.log.map((l) => l.replace(/ \(https?:\/\/[^ ]*\)$/, ''));
  const leaks = texts.filter((l) => /v=0|a=ice-ufrag|a=fingerprint|candidate:\d/.test(l) || linkTokens.some((t) => l.includes(t)));
  if (leaks.length) throw new Failure(`a page logged SDP, a candidate or a token: ${leaks.slice(0, 3).join(' | ')}`);

  // 6. The join page's Content-Security-Policy held through all of it (diagnostics panel, swaps, reconnection).
  const csp = await cspReport(ctx);

  return {
    http: origin,
    csp,
    panel,
    swap,
    sessions: { before: sessionBefore, after: after[0].session },
    reconnects,
    screenshots: [shot, sibling('guest'), sibling('reconnected')],
    pages: Object.fromEntries(labels.map((l, i) => [l, stats[i]])),
  };
});
