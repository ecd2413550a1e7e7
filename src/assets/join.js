// The join page's script (join.html), served as /join.js so the page's CSP can say script-src 'self'.
(() => {
  'use strict';
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  // The host agenda's join page (/agenda/{secret}/call/{booking_id}) joins with the host secret instead of a link.
  const agenda = location.pathname.match(/^\/agenda\/([^/]+)\/call\/([^/]+)$/);
  const joinOptions = agenda ? { url: '/agenda/' + agenda[1] + '/join/' + agenda[2] } : {};
  const token = agenda ? agenda[1] : decodeURIComponent(location.pathname.split('/').filter(Boolean).pop() || '');
  const relayOnly = params.get('relay') === '1';
  const debug = params.get('debug') === '1';
  const autojoin = params.get('autojoin') === '1';
  const FINAL_TEXT = {
    link_invalid_or_revoked: 'This meeting link is not valid. It may have been mistyped or revoked; ask the organiser for a new one.',
    join_window_closed: 'This meeting has ended. The link can no longer be used.',
    booking_cancelled: 'This meeting was cancelled.',
  };
  const REJOIN_LABEL = { hangup: 'Rejoin', replaced: 'Use this tab instead', expired: 'Rejoin', error: 'Reconnect', full: 'Try again' };
  const AUTO_PREVIEW_S = 15 * 60; // before an opening this close, turn the preview on by itself

  let stream = null;   // local camera/microphone (shared with the call)
  let call = null;
  let joinResp = null; // last successful POST /v1/join
  let armed = autojoin; // join as soon as the meeting opens
  let finalState = false;
  let openTicker = null;
  let bannerTicker = null;
  let meter = null;
  let known = { audio: false, video: false }; // device kinds present (enumerateDevices)
  let slowTimer = null;

  // ---- small helpers ----
  function status(text, state) {
    if ($('status').textContent !== text) $('status').textContent = text;
    $('status').dataset.state = state || '';
    $('dot').dataset.state = state || '';
  }
  function announce(text) { $('announce').textContent = ''; setTimeout(() => { $('announce').textContent = text; }, 50); }
  function notice(text) { $('notice').textContent = text || ''; $('notice').hidden = !text; }
  function pref(k, v) {
    try { if (v === undefined) return localStorage.getItem('duet.' + k); localStorage.setItem('duet.' + k, v); } catch (_) { /* private mode */ }
    return null;
  }
  function fmt(ms) { // 1:02:05 or 4:07; days for long waits
    const s = Math.max(0, Math.ceil(ms / 1000)), d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
    const ss = String(s % 60).padStart(2, '0');
    if (d) return `${d} day${d === 1 ? '' : 's'} ${h}:${String(m).padStart(2, '0')}:${ss}`;
    return h ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
  }
  function clock(date) {
    if (!date || isNaN(date)) return null;
    return date.toDateString() === new Date().toDateString()
      ? date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
      : date.toLocaleString([], { dateStyle: 'medium', timeStyle: 'short' });
  }
  function h(tag, attrs, ...kids) { // DOM builder: text via textContent only
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v != null) { if (k === 'class') el.className = v; else el.setAttribute(k, v); }
    for (const k of kids.flat()) if (k != null) el.append(k instanceof Node ? k : String(k));
    return el;
  }

  // ---- local media ----
  function track(kind) { return stream ? stream.getTracks().find((t) => t.kind === kind && t.readyState === 'live') : null; }

  async function ensureMedia() {
    if (stream && stream.getTracks().some((t) => t.readyState === 'live')) return stream;
    $('preview').disabled = true;
    const { stream: s, error } = await Duet.getMedia({ audio: pref('mic') || true, video: pref('cam') || true });
    $('preview').disabled = false;
    stream = s;
    if (!s) {
      const denied = error && (error.name === 'NotAllowedError' || error.name === 'SecurityError');
      notice(denied ? 'Camera and microphone access was blocked. Allow it in the browser (address bar) and reload, or join to see and hear the other participant only.'
        : 'No camera or microphone is available. You can still see and hear the other participant.');
    } else {
      if (!s.getAudioTracks().length) notice('No microphone is available: the other participant will not hear you.');
      else if (!s.getVideoTracks().length) notice('No camera is available: the other participant will hear you but not see you.');
      else notice('');
    }
    showLocal();
    await refreshDevices();
    showLocal();
    startMeter();
    return stream;
  }

  function stopMedia() {
    if (stream) stream.getTracks().forEach((t) => t.stop());
    stream = null;
    showLocal();
    stopMeter();
  }

  function showLocal() {
    const v = track('video');
    $('preview').hidden = !!stream;
    $('local').srcObject = v ? new MediaStream([v]) : null;
    const camOn = !!(v && v.enabled);
    $('self').classList.toggle('nocam', !camOn);
    $('camoff').textContent = !stream ? 'Camera and microphone are off' : v || known.video ? 'Camera is off' : 'No camera';
    const a = track('audio');
    $('selfCaption').textContent = 'You' + (!stream ? '' : a ? (a.enabled ? '' : ' · mic muted') : ' · no microphone');
    for (const [id, kind] of [['mic', 'audio'], ['cam', 'video']]) {
      const t = track(kind);
      // Without a track the button can still turn a device on, once the page may use devices (call or preview).
      $(id).disabled = !t && !(stream && known[kind]);
      $(id).setAttribute('aria-pressed', String(!t || !t.enabled));
    }
  }

  async function refreshDevices() {
    const list = await Duet.listDevices().catch(() => ({ audioinput: [], videoinput: [], audiooutput: [] }));
    known = { audio: list.audioinput.length > 0, video: list.videoinput.length > 0 };
    const fill = (sel, devices, current, none) => {
      sel.replaceChildren(...(devices.length ? devices.map((d) => h('option', { value: d.deviceId }, d.label)) : [h('option', { value: '' }, none)]));
      sel.disabled = !devices.length || !stream;
      if (current && devices.some((d) => d.deviceId === current)) sel.value = current;
    };
    const cur = (kind) => { const t = track(kind); return t && t.getSettings ? t.getSettings().deviceId : null; };
    fill($('micSel'), list.audioinput, cur('audio'), 'No microphone found');
    fill($('camSel'), list.videoinput, cur('video'), 'No camera found');
    const canSink = typeof HTMLMediaElement !== 'undefined' && 'setSinkId' in HTMLMediaElement.prototype;
    $('spkField').hidden = !canSink || !list.audiooutput.length;
    if (canSink) fill($('spkSel'), list.audiooutput, $('remote').sinkId || pref('spk'), 'Default speaker');
    $('spkSel').disabled = !list.audiooutput.length;
  }

  async function switchDevice(kind, deviceId) {
    const old = track(kind);
    if (old && old.getSettings && old.getSettings().deviceId === deviceId) return;
    const sel = $(kind === 'audio' ? 'micSel' : 'camSel');
    sel.disabled = true;
    try {
      let t;
      try { t = await Duet.getTrack(kind, deviceId); } catch (e) {
        if (!old || e.name !== 'NotReadableError') throw e;
        old.stop(); // some devices cannot be opened twice: release the old one first
        t = await Duet.getTrack(kind, deviceId);
      }
      t.enabled = old ? old.enabled : true;
      if (!stream) stream = new MediaStream();
      if (call && call.state !== 'ended') {
        if (!call.localStream) call.localStream = stream;
        await call.replaceTrack(kind, t); // swaps the track in `stream` too, without renegotiation
      } else {
        if (old) stream.removeTrack(old);
        stream.addTrack(t);
      }
      if (old && old !== t) old.stop();
      pref(kind === 'audio' ? 'mic' : 'cam', deviceId);
      if (track('audio') && track('video')) notice('');
      showLocal();
      if (kind === 'audio') startMeter();
      announce(`${kind === 'audio' ? 'Microphone' : 'Camera'} switched.`);
    } catch (e) {
      notice(`Could not switch the ${kind === 'audio' ? 'microphone' : 'camera'} (${e && e.name}).`);
    } finally {
      sel.disabled = false;
      await refreshDevices();
      showLocal();
    }
  }

  function toggle(kind) {
    const t = track(kind);
    // No track of that kind yet (refused, unplugged, or joined without it): turn the selected device on.
    if (!t) return switchDevice(kind, $(kind === 'audio' ? 'micSel' : 'camSel').value || '');
    t.enabled = !t.enabled;
    showLocal();
  }

  function startMeter() {
    stopMeter();
    const a = track('audio');
    const AC = window.AudioContext || window.webkitAudioContext;
    if (!a || !AC) return;
    try {
      const ctx = new AC();
      const src = ctx.createMediaStreamSource(new MediaStream([a]));
      const an = ctx.createAnalyser();
      an.fftSize = 512;
      src.connect(an);
      const buf = new Uint8Array(an.fftSize);
      const timer = setInterval(() => {
        an.getByteTimeDomainData(buf);
        let sum = 0;
        for (const v of buf) sum += (v - 128) * (v - 128);
        const rms = Math.sqrt(sum / buf.length) / 128;
        $('level').style.width = Math.min(100, Math.round(rms * 300)) + '%';
      }, 120);
      meter = { ctx, timer };
    } catch (_) { /* no meter */ }
  }
  function stopMeter() {
    if (!meter) return;
    clearInterval(meter.timer);
    meter.ctx.close().catch(() => {});
    meter = null;
    $('level').style.width = '0';
  }

  // ---- the meeting link ----
  function showMeeting(j) {
    if (j.booking && j.booking.title) { $('title').textContent = j.booking.title; document.title = j.booking.title + ' · Duet'; }
    const p = j.participant || {};
    const role = j.role || p.role;
    const w = j.window || {};
    const ends = clock(new Date(w.hard_end_at));
    $('who').textContent = [p.display_name ? `Joining as ${p.display_name}` + (role ? ` (${role})` : '') : null,
      ends ? `open until ${ends}` : null].filter(Boolean).join(' · ');
  }

  function showFinal(text) {
    finalState = true;
    $('who').textContent = '';
    clearInterval(openTicker);
    $('countdown').hidden = true;
    $('join').hidden = true;
    $('hangup').hidden = true;
    $('devices').hidden = true;
    $('devicesBtn').hidden = true;
    $('banner').hidden = true;
    clearInterval(bannerTicker);
    stopMedia();
    ['mic', 'cam'].forEach((id) => { $(id).hidden = true; });
    $('stage').hidden = true;
    status(text, 'ended');
  }

  /** POST /v1/join. Resolves to the response, or null after showing why not (countdown, final message, error). */
  async function checkLink() {
    clearInterval(openTicker);
    $('countdown').hidden = true;
    if (!token) { showFinal(FINAL_TEXT.link_invalid_or_revoked); return null; }
    status('Checking your meeting link…', 'busy');
    $('join').disabled = true;
    try {
      joinResp = await Duet.join(token, joinOptions);
    } catch (e) {
      joinResp = null;
      if (e.tooEarly) { waitUntilOpen(e); return null; }
      if (FINAL_TEXT[e.code]) { showFinal(FINAL_TEXT[e.code]); return null; }
      $('join').textContent = 'Try again';
      $('join').disabled = false;
      status(e.status ? `Could not check the meeting link (${e.message}).` : 'Could not reach the server. Check your connection and try again.', 'error');
      return null;
    }
    if (joinResp.kind === 'external_link') {
      // No Duet room: the meeting runs at the booking's https URL (checked by the server and by Duet.join).
      status('Opening your meeting…', 'busy');
      location.assign(joinResp.external_url);
      return null;
    }
    showMeeting(joinResp);
    $('join').textContent = 'Join';
    $('join').disabled = false;
    return joinResp;
  }

  // 403 join_too_early: count down to the opening (retry_after is the server's clock, so it wins), then check again.
  function waitUntilOpen(err) {
    const opens = err.opens_at ? new Date(err.opens_at) : null;
    const secs = err.retry_after != null ? err.retry_after : opens && !isNaN(opens) ? (opens - Date.now()) / 1000 : 10;
    const target = Date.now() + Math.max(1, secs) * 1000;
    const when = clock(opens) || 'soon';
    const say = () => status(armed ? `This meeting opens at ${when}. You will be connected automatically.`
      : `This meeting opens at ${when}. You can check your camera and microphone while you wait.`, 'early');
    say();
    $('join').textContent = armed ? 'Joining when it opens' : 'Join when it opens';
    $('join').disabled = armed;
    $('countdown').hidden = false;
    const tick = () => {
      const left = target - Date.now();
      $('countdown').textContent = 'Opens in ' + fmt(left);
      if (left <= 0) { clearInterval(openTicker); opened(); }
    };
    clearInterval(openTicker);
    openTicker = setInterval(tick, 1000);
    tick();
    waitUntilOpen.say = say;
    if (secs <= AUTO_PREVIEW_S && !stream) ensureMedia();
  }

  async function opened() {
    const j = await checkLink();
    if (!j) return;
    if (armed) return enter();
    status('The meeting is open. Join when you are ready.', 'waiting');
  }

  // ---- the call ----
  async function enter() {
    if (finalState) return;
    $('join').disabled = true;
    if (!joinResp) {
      if (!(await checkLink())) { // too early: join automatically at the opening
        if (!$('countdown').hidden) { armed = true; $('join').textContent = 'Joining when it opens'; $('join').disabled = true; waitUntilOpen.say && waitUntilOpen.say(); }
        return;
      }
    }
    await ensureMedia();
    if (meter) meter.ctx.resume().catch(() => {});
    document.body.classList.remove('prejoin');
    $('join').hidden = true;
    $('hangup').hidden = false;
    $('hangup').disabled = false;
    setDevicesOpen(false);
    const j = joinResp;
    joinResp = null; // a later rejoin asks for a fresh session
    call = window.duetCall = new Duet.Call({
      join: j, localStream: stream, relayOnly, joinOptions, onStatus, onRemoteStream, onEnded, onWindow,
    });
    $('hangup').focus(); // keep keyboard focus on the controls (Join is gone)
    // Joined in the last five minutes: the hub's T-5 warning is already past, so warn from the window we know.
    const end = Date.parse((j.window || {}).hard_end_at || '');
    const left = Math.round((end - Date.now()) / 1000);
    if (left > 0 && left <= 300) onWindow({ event: 'closing', closes_at: j.window.hard_end_at, in_s: left });
  }

  function onStatus(state, text, detail) {
    clearTimeout(slowTimer);
    if (state === 'negotiating') {
      slowTimer = setTimeout(() => {
        if (call && call.state === 'negotiating') {
          status('Still connecting to the other participant… Some networks block video calls; if this goes on, try another network.', 'negotiating');
        }
      }, 20000);
    }
    if (detail && detail.attempt) {
      const secs = Math.round((detail.retry_in_ms || 0) / 1000);
      text += ` (attempt ${detail.attempt}${secs ? `, next in ${secs} s` : ''})`;
    }
    status(text, state);
    $('placeholder').textContent = state === 'waiting' ? 'Waiting for the other participant to join…'
      : state === 'reconnecting' ? 'Reconnecting…' : state === 'connected' ? 'The other participant’s camera is off.' : 'Connecting…';
  }

  function onRemoteStream(s) {
    const v = $('remote');
    if (v.srcObject !== s) v.srcObject = s;
    remoteLive();
    $('play').hidden = true;
    if (!s) return;
    const sink = pref('spk');
    if (sink && v.setSinkId) v.setSinkId(sink).catch(() => {});
    v.play().catch((e) => { if (e && e.name === 'NotAllowedError') $('play').hidden = false; }); // autoplay blocked: one click starts it
  }

  // The stage shows the remote video once it has frames; the placeholder (status) until then.
  function remoteLive() {
    const v = $('remote');
    const s = v.srcObject;
    const live = !!s && s.getVideoTracks().some((t) => t.readyState === 'live') && v.videoWidth > 0;
    $('stage').classList.toggle('live', live);
  }

  function onWindow(w) {
    const end = Date.now() + Math.max(0, Number(w.in_s) || 0) * 1000;
    const mins = Math.max(1, Math.round((Number(w.in_s) || 0) / 60));
    const at = clock(new Date(w.closes_at));
    $('bannerText').textContent = `This meeting ends in ${mins} minute${mins === 1 ? '' : 's'}${at ? ` (at ${at})` : ''}. The call will be disconnected then.`;
    $('banner').classList.toggle('urgent', mins <= 1);
    $('banner').hidden = false;
    clearInterval(bannerTicker);
    const tick = () => { $('bannerClock').textContent = fmt(end - Date.now()) + ' left'; };
    bannerTicker = setInterval(tick, 1000);
    tick();
  }

  function onEnded(reason, text) {
    call = null;
    stream = null; // the library stopped our tracks
    stopMeter();
    showLocal();
    refreshDevices();
    $('stage').classList.remove('live');
    clearInterval(bannerTicker);
    $('banner').hidden = true;
    $('hangup').hidden = true;
    if (REJOIN_LABEL[reason]) {
      status(text, 'ended');
      document.body.classList.add('prejoin');
      setDevicesOpen(true);
      $('join').textContent = REJOIN_LABEL[reason];
      $('join').hidden = false;
      $('join').disabled = false;
      $('join').focus();
    } else {
      showFinal(text);
    }
  }

  function setDevicesOpen(open) {
    $('devices').hidden = !open;
    $('devicesBtn').setAttribute('aria-expanded', String(open));
  }

  // ---- diagnostics (?debug=1) ----
  const hhmmss = (t) => new Date(t).toLocaleTimeString([], { hour12: false });
  function candText(c) {
    if (!c) return '–';
    const via = c.type === 'relay' && c.relayProtocol ? ` via ${c.relayProtocol}` : '';
    return `${c.type} ${c.address || '?'}:${c.port} ${c.protocol}${via}`;
  }
  const num = (v, unit) => (v == null ? '–' : v + (unit || ''));
  function mediaRow(label, m, dir) {
    if (!m) return h('tr', null, h('th', { scope: 'row' }, label), h('td', { colspan: 4 }, '–'));
    const loss = dir === 'in' ? `${m.packetsLost} (${m.lossPct}%)` : m.remoteLost != null ? `${m.remoteLost} (${num(m.fractionLostPct, '%')})` : '–';
    const extra = [m.width ? `${m.width}×${m.height}${m.fps ? '@' + m.fps : ''}` : null,
      dir === 'in' && m.jitter_ms != null ? `jitter ${m.jitter_ms} ms` : null,
      dir === 'out' && m.rtt_ms != null ? `rtt ${m.rtt_ms} ms` : null].filter(Boolean).join(', ') || '–';
    return h('tr', null, h('th', { scope: 'row' }, label), h('td', { class: 'n' }, num(m.kbps)),
      h('td', { class: 'n' }, dir === 'in' ? m.packetsReceived : m.packetsSent), h('td', { class: 'n' }, loss), h('td', null, extra));
  }
  let lastDiag = null;
  async function renderDiag() {
    const body = $('diagBody');
    if (!call) {
      if (!lastDiag) body.replaceChildren(h('p', null, 'Not in a call yet. Join to see connection details.'));
      return;
    }
    const d = await call.getDiagnostics();
    lastDiag = d;
    const pcs = d.pc || {};
    const state = (v, good, bad) => h('span', { class: good.includes(v) ? 'good' : bad.includes(v) ? 'bad' : null }, v == null ? '–' : v);
    const states = h('dl', null,
      h('dt', null, 'Call'), h('dd', null, d.state, ` · ${d.initiator ? 'host (offers)' : 'guest (answers)'}`, d.relayOnly ? ' · relay only' : ''),
      h('dt', null, 'Signaling'), h('dd', null, state(d.signaling.state, ['open'], ['reconnecting', 'closed']),
        d.signaling.rtt_ms != null ? ` · rtt ${d.signaling.rtt_ms} ms` : '', ` · session ${num(d.session)} · reconnects ${d.reconnects}`),
      h('dt', null, 'ICE'), h('dd', null, state(pcs.ice, ['connected', 'completed'], ['failed', 'disconnected']),
        ` · gathering ${num(pcs.gathering)} · restarts ${d.iceRestarts}`),
      h('dt', null, 'DTLS'), h('dd', null, state(pcs.dtls, ['connected'], ['failed', 'closed'])),
      h('dt', null, 'Peer connection'), h('dd', null, state(pcs.connection, ['connected'], ['failed', 'disconnected']),
        pcs.signaling ? ` · ${pcs.signaling}` : '', pcs.age_s != null ? ` · ${pcs.age_s} s old` : ''),
      h('dt', null, 'ICE servers'), h('dd', { class: 'mono' }, d.iceServers.join(' ') || '–'));
    const types = ['host', 'srflx', 'prflx', 'relay'];
    const cands = h('table', { id: 'diagCands' }, h('caption', null, 'Local candidates gathered'),
      h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'type'), ...['udp', 'tcp', 'tls'].map((p) => h('th', { scope: 'col', class: 'n' }, p)))),
      h('tbody', null, types.map((t) => h('tr', { 'data-type': t }, h('th', { scope: 'row' }, t),
        ...['udp', 'tcp', 'tls'].map((p) => h('td', { class: 'n' }, d.localCounts[t][p]))))));
    const remoteCounts = {};
    for (const c of d.remote) remoteCounts[c.type] = (remoteCounts[c.type] || 0) + 1;
    const remoteLine = h('p', { class: 'mono' }, 'Remote candidates: ', Object.entries(remoteCounts).map(([t, n]) => `${t} ${n}`).join(', ') || 'none yet');
    const relayList = d.local.filter((c) => c.type === 'relay');
    const relays = relayList.length ? h('p', { class: 'mono' }, 'Relay: ', relayList.map(candText).join('; ')) : null;
    const p = d.pair;
    const pair = h('dl', { id: 'diagPair' },
      h('dt', null, 'Local'), h('dd', { class: 'mono', 'data-type': p && p.local ? p.local.type : '' }, p ? candText(p.local) : 'no pair selected yet'),
      h('dt', null, 'Remote'), h('dd', { class: 'mono', 'data-type': p && p.remote ? p.remote.type : '' }, p ? candText(p.remote) : '–'),
      h('dt', null, 'State'), h('dd', null, p ? p.state : '–'),
      h('dt', null, 'Round trip'), h('dd', null, p ? num(p.rtt_ms, ' ms') : '–'),
      h('dt', null, 'Send estimate'), h('dd', null, p ? num(p.availableOutgoingKbps, ' kbit/s') : '–'));
    const media = h('table', null, h('caption', null, 'Media'),
      h('thead', null, h('tr', null, h('th', { scope: 'col' }, ''), h('th', { scope: 'col', class: 'n' }, 'kbit/s'),
        h('th', { scope: 'col', class: 'n' }, 'packets'), h('th', { scope: 'col', class: 'n' }, 'lost'), h('th', { scope: 'col' }, 'details'))),
      h('tbody', null, mediaRow('audio in', d.media.audio.in, 'in'), mediaRow('audio out', d.media.audio.out, 'out'),
        mediaRow('video in', d.media.video.in, 'in'), mediaRow('video out', d.media.video.out, 'out')));
    const hints = d.hints.length ? [h('h3', null, 'Findings'), h('ul', { id: 'diagHints' }, d.hints.map((t) => h('li', { class: 'bad' }, t)))] : [];
    const errs = d.errors.slice(-8).reverse();
    const errors = [h('h3', null, 'Last errors'), errs.length ? h('ul', { id: 'diagErrors', class: 'mono' }, errs.map((e) => h('li', null,
      `${hhmmss(e.t)} ${e.kind}`,
      e.kind === 'ice' ? ` icecandidateerror ${e.errorCode} ${e.url || ''} ${e.errorText || ''}${e.address ? ` (${e.address}:${e.port})` : ''}`
        : ` ${[e.code, e.name, e.message].filter((x) => x != null && x !== '').join(' ')}`))) : h('p', null, 'none')];
    const events = d.log.slice(-6).reverse();
    const log = [h('h3', null, 'Recent events'), h('ul', { class: 'mono' }, events.length ? events.map((e) => h('li', null,
      `${hhmmss(e.t)} ${e.kind}${e.state ? ' ' + e.state : ''}${e.code ? ' ' + e.code : ''}${e.reason ? ' ' + e.reason : ''}${e.by ? ' by ' + e.by : ''}${e.attempt ? ' #' + e.attempt : ''}${e.why ? ' (' + e.why + ')' : ''}`)) : h('li', null, 'none'))];
    body.replaceChildren(...[h('h3', null, 'States'), states, cands, remoteLine, relays, h('h3', null, 'Selected candidate pair'), pair, media,
      ...hints, ...errors, ...log].filter(Boolean));
    const diag = $('diag');
    diag.dataset.session = d.session == null ? '' : String(d.session);
    diag.dataset.relayCandidates = String(relayList.length);
    diag.dataset.pairLocal = p && p.local ? p.local.type : '';
    diag.dataset.pairRemote = p && p.remote ? p.remote.type : '';
  }
  async function copyDiag() {
    const report = JSON.stringify({ page: location.origin + '/j/…', ua: navigator.userAgent, diagnostics: lastDiag }, null, 2);
    try { await navigator.clipboard.writeText(report); $('diagNote').textContent = 'Report copied to the clipboard.'; } catch (_) {
      const ta = h('textarea', { rows: 8, 'aria-label': 'Diagnostics report', readonly: '' });
      ta.value = report;
      ta.style.width = '100%';
      $('diagReport').replaceChildren(ta); // outside #diagBody, which is redrawn every second
      ta.select();
      $('diagNote').textContent = 'Copy the selected report below.';
    }
  }

  // ---- wiring ----
  $('join').addEventListener('click', () => enter());
  $('hangup').addEventListener('click', () => call && call.hangup());
  $('mic').addEventListener('click', () => { toggle('audio'); if (meter) meter.ctx.resume().catch(() => {}); });
  $('cam').addEventListener('click', () => toggle('video'));
  $('devicesBtn').addEventListener('click', () => setDevicesOpen($('devices').hidden));
  $('preview').addEventListener('click', () => ensureMedia());
  $('micSel').addEventListener('change', (e) => switchDevice('audio', e.target.value));
  $('camSel').addEventListener('change', (e) => switchDevice('video', e.target.value));
  $('spkSel').addEventListener('change', (e) => {
    pref('spk', e.target.value);
    if ($('remote').setSinkId) $('remote').setSinkId(e.target.value).catch(() => notice('Could not switch the speaker.'));
  });
  $('remote').addEventListener('playing', () => { $('play').hidden = true; });
  for (const ev of ['loadeddata', 'resize', 'emptied']) $('remote').addEventListener(ev, remoteLive);
  $('play').addEventListener('click', () => { $('remote').play().then(() => { $('play').hidden = true; }).catch(() => {}); });
  if (navigator.mediaDevices && navigator.mediaDevices.addEventListener) {
    navigator.mediaDevices.addEventListener('devicechange', () => { if (stream) refreshDevices(); });
  }
  window.addEventListener('offline', () => { if (call) status('You are offline. The call will reconnect when the network is back.', 'reconnecting'); });
  window.addEventListener('pagehide', () => call && call.hangup());
  if (debug) {
    document.body.classList.add('debug');
    $('diag').hidden = false;
    $('copyDiag').addEventListener('click', copyDiag);
    setInterval(() => { renderDiag().catch((e) => console.warn('diag', e && e.stack)); }, 1000);
    renderDiag();
  }

  showLocal();
  (async () => {
    const j = await checkLink();
    if (!j) return;
    if (autojoin) return enter();
    status('The meeting is open. Check your camera and microphone, then join.', 'waiting');
    await ensureMedia();
  })();
})();
