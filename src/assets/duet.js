/*
 * duet.js: browser client for the Duet daemon (booking join + native v1 signaling + WebRTC).
 * Plain ES2020, no dependencies, nothing fetched; defines the global `Duet`. Never logs SDP, candidates or tokens.
 *
 * ---- Public API -------------------------------------------------------------------------------------------------
 *
 * Duet.version                          2
 *
 * Duet.join(linkToken, opts?) -> Promise<JoinResponse>
 *     POST /v1/join/{linkToken}. Resolves to the server's join response ({session_token, signal_url, ice_servers,
 *     role, participant, booking, window, expires_at}) plus `link_token`. opts.base: API URL prefix (default same
 *     origin); opts.url: the whole join URL instead (the host agenda's `/agenda/{secret}/join/{booking_id}`, which
 *     answers the same JSON); opts.fetch: fetch override. Rejects with a Duet.JoinError.
 *
 * Duet.JoinError  (Error)
 *     .status       HTTP status, 0 = network error
 *     .code         join_too_early | join_window_closed | booking_cancelled | link_invalid_or_revoked | network |
 *                   bad_response | http_NNN
 *     .opens_at     RFC 3339 (join_too_early only)     .retry_after  seconds, from the body or Retry-After
 *     .tooEarly     code === 'join_too_early'         .final        true when retrying the same link cannot help
 *
 * Duet.getMedia({audio, video}) -> Promise<{stream, error}>
 *     getUserMedia with fallbacks: audio+video, then audio only, then video only. `audio` / `video` may be true,
 *     false or a deviceId. Resolves with stream = null (and the last error) when nothing is available; never rejects.
 * Duet.getTrack(kind, deviceId) -> Promise<MediaStreamTrack>    one new 'audio' | 'video' track from that device.
 * Duet.listDevices() -> Promise<{audioinput:[], videoinput:[], audiooutput:[]}>   each {deviceId, label};
 *     labels are empty until the page has camera/microphone permission.
 *
 * new Duet.Call(opts)   one participant's side of a meeting; connects at once.
 *   opts.join            a JoinResponse (required)
 *   opts.localStream     MediaStream to send (optional: receive-only without it)
 *   opts.relayOnly       iceTransportPolicy 'relay' (force media through the TURN relay)
 *   opts.linkToken       to re-join for a fresh session token (default join.link_token)
 *   opts.joinOptions     passed to Duet.join when re-joining
 *   opts.maxRetries      signaling reconnect attempts before giving up (default 40, about 10 minutes)
 *   opts.onStatus(state, text, detail)   opts.onRemoteStream(stream|null)   opts.onEnded(reason, text)
 *   opts.onWindow({event:'closing', closes_at, in_s} | {event:'changed', window, sequence})   opts.onError({…})
 *
 *   call.state        idle | connecting | waiting | negotiating | connected | reconnecting | ended
 *   call.pc           current RTCPeerConnection (null while alone)         call.ws  current WebSocket
 *   call.session      current pairing number (from `ready`)                call.initiator  true for the host
 *   call.signalingState  connecting | open | reconnecting | closed         call.remoteStream / call.localStream
 *   call.endReason    hangup | ended | cancelled | replaced | full | expired | invalid | error
 *   call.reconnects   signaling reconnections     call.iceRestarts  ICE restarts asked for     call.log  last 50 events
 *   call.errors       last 20 errors: {t, kind:'ice'|'signaling'|'negotiation', …}; ICE server errors
 *                     are {kind:'ice', errorCode, errorText, url, address, port} (401 = TURN auth refused,
 *                     701 = STUN/TURN server unreachable)
 *   call.on(event, fn) / call.off(event, fn)   events: status(state, text, detail), remote(stream|null),
 *                                    ended(reason, text), window({…}), error({…}), session(n, peer)
 *   call.hangup()                    leave (tells the hub), close everything, stop local tracks
 *   call.setEnabled(kind, on)        mute / unmute ('audio') or camera off / on ('video') via track.enabled
 *   call.replaceTrack(kind, track) -> Promise   switch device: RTCRtpSender.replaceTrack (no renegotiation) when
 *                                    a sender exists; otherwise adds the track and renegotiates
 *   call.restartIce()                ask for an ICE restart now (the host offers with iceRestart:true)
 *   call.extend(minutes) -> Promise<{end_at, window, sequence, extended_s, remaining_s}>   the host adds minutes
 *                                    to the meeting (POST /v1/join/{link}/extend); rejects with a JoinError
 *                                    (403 host_only, 409 slot_unavailable / booking_not_modifiable, 422
 *                                    extension_limit with remaining_s). Both sides then get window 'changed'.
 *   call.window                      the booking's window (RFC 3339 instants), updated by 'changed' frames
 *   call.getDiagnostics() -> Promise<Diagnostics>   getStats() digest: candidates by type and transport, the
 *                                    selected pair, bitrates (kbit/s since the previous call), loss, RTT, states,
 *                                    errors, hints. See `getDiagnostics` below for the shape.
 *   call.refreshSummary() -> Promise   refreshes call.summary from getStats() now (also runs every 5 s while connected)
 *   call.summary      the call's own summary for the server (refreshed from getStats() every 5 s while connected):
 *                     {candidate_pair:{local_type, remote_type, protocol, relay_protocol?}, round_trip_time_ms,
 *                     packet_loss, inbound_bitrate_bps, outbound_bitrate_bps, user_agent_family}. When the call
 *                     ends (hang-up, page closed, room closed) it is sent with navigator.sendBeacon to
 *                     POST /v1/join/{linkToken}/report (the link is the capability), once.
 *
 * Duet.STATE_TEXT, Duet.END_TEXT   default human texts (the page may show its own).
 *
 * ---- Wire ---------------------------------------------------------------------------------------------------------
 * Signals are simple-peer's shapes, wrapped as {"type":"signal","session":N,"data":…}:
 *   {type:"offer"|"answer", sdp}, {type:"candidate", candidate:{candidate, sdpMLineIndex, sdpMid}},
 *   {type:"renegotiate", renegotiate:true} (non-initiator asks for an offer; we also send it to ask for an ICE
 *   restart), {type:"transceiverRequest", transceiverRequest:{kind, init}} (honoured when we are the initiator).
 * Only the initiator (host) ever offers, as with simple-peer, so there is no glare.
 *
 * ---- Recovery -----------------------------------------------------------------------------------------------------
 * - WebSocket lost (or silent for 2.5 client ping intervals): reconnect with exponential backoff and jitter (0.5 s … 15 s,
 *   at once when the browser reports `online`). Close 4001, or a refused token before `welcome`, or a session token
 *   past expires_at: POST /v1/join again for a fresh one. 4003 ended, 4004 cancelled, 4008 replaced, 4009 full: end.
 * - The media path survives a signaling blip: the peer connection is kept until the hub pairs us again.
 * - Each `ready` (new session) builds a fresh RTCPeerConnection.
 * - ICE 'failed', or 'disconnected' for more than 4 s: the host offers with iceRestart:true (up to 3 times, then it
 *   reconnects its socket to make the hub form a new session); the guest asks the host with {renegotiate:true}.
 */
(function (global) {
  'use strict';

  /** Thrown by Duet.join when the server refuses the link (or cannot be reached: status 0). */
  class JoinError extends Error {
    constructor(status, body, retryAfterHeader) {
      body = body || {};
      super(body.message || body.error || 'HTTP ' + status);
      this.name = 'JoinError';
      this.status = status; // HTTP status; 0 = network error
      this.code = body.error || (status ? 'http_' + status : 'network');
      this.opens_at = body.opens_at || null; // RFC 3339, join_too_early only
      const ra = body.retry_after != null ? Number(body.retry_after)
        : retryAfterHeader != null ? Number(retryAfterHeader) : NaN;
      this.retry_after = Number.isFinite(ra) && ra >= 0 ? ra : null; // seconds
    }
    get tooEarly() { return this.code === 'join_too_early'; }
    get final() { return FINAL_JOIN_CODES.includes(this.code); }
  }
  const FINAL_JOIN_CODES = ['join_window_closed', 'booking_cancelled', 'link_invalid_or_revoked'];

  /** POSTs `payload` as JSON; resolves to the JSON answer (null when not JSON), throws a JoinError otherwise. */
  async function postJson(url, payload, opts) {
    const doFetch = opts.fetch || global.fetch.bind(global);
    let res;
    try {
      res = await doFetch(url, {
        method: 'POST', body: JSON.stringify(payload), cache: 'no-store', credentials: 'omit',
        headers: { 'Content-Type': 'application/json' },
      });
    } catch (e) {
      throw new JoinError(0, { message: 'Network error: ' + (e && e.message) });
    }
    let body = null;
    try { body = await res.json(); } catch (_) { /* non-JSON body */ }
    if (!res.ok) throw new JoinError(res.status, body, res.headers.get('Retry-After'));
    return body;
  }

  async function join(linkToken, opts = {}) {
    const url = opts.url || (opts.base || '') + '/v1/join/' + encodeURIComponent(linkToken);
    const body = await postJson(url, {}, opts);
    // An external-link booking (Zoom, Meet, Teams): no token, no room; the caller opens external_url.
    if (body && body.kind === 'external_link' && typeof body.external_url === 'string'
        && body.external_url.startsWith('https://')) {
      body.link_token = linkToken;
      return body;
    }
    if (!body || !body.session_token || !body.signal_url) {
      throw new JoinError(res.status, { error: 'bad_response', message: 'Malformed join response' });
    }
    body.link_token = linkToken;
    return body;
  }

  /** signal_url + ?token=…, upgraded to ws(s) as needed (wss when the page is https). */
  function signalUrl(base, token) {
    const u = new URL(base, global.location ? global.location.href : undefined);
    if (u.protocol === 'http:') u.protocol = 'ws:';
    if (u.protocol === 'https:') u.protocol = 'wss:';
    if (global.location && global.location.protocol === 'https:' && u.protocol === 'ws:') u.protocol = 'wss:';
    u.searchParams.set('token', token);
    return u.href;
  }

  // ---- local media ----

  function constraint(v) {
    if (v === false || v == null) return false;
    if (v === true || v === '') return true;
    return { deviceId: { exact: String(v) } };
  }

  async function getMedia(want = { audio: true, video: true }) {
    const md = global.navigator && global.navigator.mediaDevices;
    if (!md || !md.getUserMedia) return { stream: null, error: { name: 'NotSupportedError', message: 'No media devices API (needs https)' } };
    const audio = constraint(want.audio === undefined ? true : want.audio);
    const video = constraint(want.video === undefined ? true : want.video);
    const tries = [{ audio, video }];
    if (audio && video) tries.push({ audio }, { video });
    let error = null;
    for (const c of tries) {
      try { return { stream: await md.getUserMedia(c), error }; } catch (e) {
        error = { name: e && e.name, message: e && e.message };
        if (e && (e.name === 'NotAllowedError' || e.name === 'SecurityError')) break; // refused: don't ask again
        if (e && e.name === 'OverconstrainedError') { // a remembered device is gone: any device of that kind
          try { return { stream: await md.getUserMedia({ audio: !!c.audio, video: !!c.video }), error }; } catch (_) { /* next */ }
        }
      }
    }
    return { stream: null, error };
  }

  async function getTrack(kind, deviceId) {
    const c = { [kind]: deviceId ? { deviceId: { exact: deviceId } } : true };
    const s = await global.navigator.mediaDevices.getUserMedia(c);
    return s.getTracks().find((t) => t.kind === kind);
  }

  async function listDevices() {
    const out = { audioinput: [], videoinput: [], audiooutput: [] };
    const md = global.navigator && global.navigator.mediaDevices;
    if (!md || !md.enumerateDevices) return out;
    let n = { audioinput: 0, videoinput: 0, audiooutput: 0 };
    for (const d of await md.enumerateDevices()) {
      if (!out[d.kind] || !d.deviceId) continue;
      n[d.kind]++;
      const fallback = { audioinput: 'Microphone', videoinput: 'Camera', audiooutput: 'Speaker' }[d.kind] + ' ' + n[d.kind];
      out[d.kind].push({ deviceId: d.deviceId, groupId: d.groupId, label: d.label || fallback });
    }
    return out;
  }

  // ---- texts and codes ----

  const STATE_TEXT = {
    idle: 'Not connected.',
    connecting: 'Connecting…',
    waiting: 'Waiting for the other participant…',
    negotiating: 'Connecting to the other participant…',
    connected: 'Connected',
    reconnecting: 'Connection lost, reconnecting…',
  };
  const END_TEXT = {
    hangup: 'You left the meeting.',
    ended: 'The meeting has ended.',
    cancelled: 'This meeting was cancelled.',
    replaced: 'This meeting was opened in another tab or on another device, so this tab was disconnected.',
    full: 'This meeting already has two participants.',
    expired: 'Your session expired. Please rejoin.',
    invalid: 'This meeting link is not valid.',
    error: 'Lost the connection to the server.',
  };
  const CLOSE_REASON = { 4003: 'ended', 4004: 'cancelled', 4008: 'replaced', 4009: 'full' };
  const JOIN_REASON = { join_window_closed: 'ended', booking_cancelled: 'cancelled', link_invalid_or_revoked: 'invalid' };
  const ICE_DISCONNECTED_GRACE_MS = 4000;
  /** How often the call summary (call.summary) is refreshed from getStats() while a peer connection exists. */
  const SUMMARY_EVERY_MS = 5000;

  /** The browser family only (never the full user agent): chrome | edge | firefox | safari | other. */
  function uaFamily() {
    const ua = (global.navigator && global.navigator.userAgent) || '';
    if (/Edg\//.test(ua)) return 'edge';
    if (/Firefox\//.test(ua)) return 'firefox';
    if (/Chrom(e|ium)\//.test(ua)) return 'chrome';
    if (/Safari\//.test(ua)) return 'safari';
    return 'other';
  }
  const MAX_ICE_RESTARTS = 3;
  const PEER_GONE_GRACE_MS = 20000;
  const WELCOME_TIMEOUT_MS = 10000;

  /** Parses the fields of an ICE candidate line we need ("candidate:… 1 udp … typ relay raddr …"). */
  function parseCandidate(line) {
    const f = String(line || '').replace(/^a=/, '').split(/\s+/);
    if (f.length < 8) return null;
    const typ = f.indexOf('typ');
    return { protocol: (f[2] || '').toLowerCase(), address: f[4], port: Number(f[5]), type: typ > 0 ? f[typ + 1] : null };
  }

  class Call {
    constructor(opts) {
      if (!opts || !opts.join) throw new TypeError('Duet.Call: opts.join is required');
      this.join = opts.join;
      this.localStream = opts.localStream || null;
      this.relayOnly = !!opts.relayOnly;
      this.linkToken = opts.linkToken || opts.join.link_token || null;
      this.joinOptions = opts.joinOptions || {};
      this.maxRetries = opts.maxRetries != null ? opts.maxRetries : 40;
      this._handlers = {};
      for (const [ev, key] of [['status', 'onStatus'], ['remote', 'onRemoteStream'], ['ended', 'onEnded'],
        ['window', 'onWindow'], ['error', 'onError']]) if (typeof opts[key] === 'function') this.on(ev, opts[key]);
      this.state = 'idle';
      this.signalingState = 'connecting';
      this.pc = null;
      this.ws = null;
      this.session = null;
      this.peer = null;
      this.iceServers = opts.join.ice_servers || [];
      this.initiator = opts.join.role === 'host';
      this.window = opts.join.window || null;
      this.remoteStream = null;
      this.rtt = null;             // ms, signaling ping/pong
      this.endReason = null;
      this.errors = [];
      this.reconnects = 0;         // signaling reconnections that reached `welcome`
      this.iceRestarts = 0;        // total ICE restarts asked for
      this._partnerPresent = false;
      this._everWelcomed = false;
      this._welcomed = false;
      this._rejoined = false;
      this._retries = 0;
      this._timers = {};
      this._ops = Promise.resolve();
      this._pending = [];
      this._wantOffer = null;
      this._prevStats = null;
      this._statusText = null;
      this._onOnline = () => { if (this._timers.retry) { clearTimeout(this._timers.retry); this._timers.retry = null; this._connect(); } };
      if (global.addEventListener) global.addEventListener('online', this._onOnline);
      this.summary = null;
      this._summarySent = false;
      this._timers.summary = setInterval(() => { this.refreshSummary(); }, SUMMARY_EVERY_MS);
      this._connect();
    }

    // ---- public ----

    on(event, fn) { (this._handlers[event] = this._handlers[event] || []).push(fn); return this; }
    off(event, fn) { const h = this._handlers[event]; if (h) this._handlers[event] = h.filter((f) => f !== fn); return this; }

    hangup() {
      if (this.state === 'ended') return;
      this._send({ type: 'leave' });
      this._end('hangup');
    }

    setEnabled(kind, on) {
      if (!this.localStream) return;
      for (const t of this.localStream.getTracks()) if (t.kind === kind) t.enabled = !!on;
    }

    /** Puts `track` (or null) in place of the local track of `kind`; renegotiates only if no sender can take it. */
    async replaceTrack(kind, track) {
      if (!this.localStream) this.localStream = new MediaStream();
      const s = this.localStream;
      for (const old of s.getTracks()) if (old.kind === kind && old !== track) s.removeTrack(old);
      if (track && !s.getTracks().includes(track)) s.addTrack(track);
      const pc = this.pc;
      if (!pc || pc.signalingState === 'closed') return;
      const same = pc.getTransceivers().filter((t) => !t.stopped && t.direction !== 'stopped' && t.receiver.track.kind === kind);
      const tr = same.find((t) => t.sender.track) || same[0];
      if (tr) {
        await tr.sender.replaceTrack(track);
        if (track && !/send/.test(tr.direction)) { tr.direction = 'sendrecv'; this._negotiate(pc); }
      } else if (track) {
        pc.addTrack(track, s);
        this._negotiate(pc);
      }
    }

    async extend(minutes) {
      if (!this.linkToken) throw new JoinError(0, { error: 'no_link', message: 'No link token to extend with' });
      const o = this.joinOptions;
      const url = (o.base || '') + '/v1/join/' + encodeURIComponent(this.linkToken) + '/extend';
      const body = await postJson(url, { minutes }, o);
      if (body && body.window) this.window = body.window;
      this._note('extended', { minutes, end_at: body && body.end_at });
      return body;
    }

    restartIce() {
      const pc = this.pc;
      if (!pc) return;
      this.iceRestarts++;
      this._note('ice-restart', { by: 'user' });
      this._negotiate(pc, { iceRestart: true });
    }

    // ---- signaling socket ----

    _connect() {
      clearTimeout(this._timers.retry);
      this._timers.retry = null;
      if (this.state === 'ended') return;
      const exp = Date.parse(this.join.expires_at || '');
      if (this.linkToken && Number.isFinite(exp) && Date.now() > exp - 5000 && !this._rejoined) return this._rejoin();
      this.signalingState = this._everWelcomed ? 'reconnecting' : 'connecting';
      this._derive();
      let ws;
      try { ws = new WebSocket(signalUrl(this.join.signal_url, this.join.session_token)); } catch (e) {
        this._error('signaling', { message: 'Cannot open WebSocket: ' + (e && e.name) });
        return this._retry();
      }
      this.ws = ws;
      this._welcomed = false;
      ws.onmessage = (ev) => { if (ws === this.ws) this._onMessage(ev.data); };
      ws.onclose = (ev) => { if (ws === this.ws) this._onClose(ev); };
      clearTimeout(this._timers.welcome);
      this._timers.welcome = setTimeout(() => { if (ws === this.ws && !this._welcomed) this._dropSocket('no welcome from the server'); }, WELCOME_TIMEOUT_MS);
    }

    /** Abandons the current socket (it may be dead without knowing it) and reconnects. */
    _dropSocket(why) {
      const ws = this.ws;
      if (!ws) return;
      this.ws = null;
      try { ws.close(1000); } catch (_) { /* ignore */ }
      this._onClose({ code: 1006, reason: why, synthetic: true });
    }

    _send(obj) {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) { this.ws.send(JSON.stringify(obj)); return true; }
      return false;
    }

    _onMessage(raw) {
      let msg;
      try { msg = JSON.parse(raw); } catch (_) { return; }
      if (!msg || typeof msg !== 'object') return;
      this._lastHeard = Date.now();
      switch (msg.type) {
        case 'welcome': return this._onWelcome(msg);
        case 'ready': return this._onReady(msg);
        case 'signal': return this._onSignal(msg);
        case 'peer-left': return this._onPeerLeft(msg);
        case 'window':
          if (msg.event === 'closing') this._emit('window', { event: 'closing', closes_at: msg.closes_at, in_s: msg.in_s });
          // Rescheduled or extended: the new instants (the session token of the old sequence is refused on the next
          // reconnect with 4001, which re-joins for a fresh one).
          if (msg.event === 'changed' && msg.window && typeof msg.window === 'object') {
            this.window = msg.window;
            this._emit('window', { event: 'changed', window: msg.window, sequence: msg.sequence });
          }
          return;
        case 'ping': return void this._send({ type: 'pong', t: msg.t });
        case 'pong': if (typeof msg.t === 'number') this.rtt = Date.now() - msg.t; return;
        case 'error': return this._error('signaling', { code: msg.code, message: msg.message });
      }
    }

    _onWelcome(msg) {
      clearTimeout(this._timers.welcome);
      if (this._everWelcomed) { this.reconnects++; this._note('signaling-reconnected'); }
      this._welcomed = this._everWelcomed = true;
      this._retries = 0;
      this._rejoined = false;
      this.signalingState = 'open';
      this.you = msg.you || {};
      if (Array.isArray(msg.ice_servers)) this._setIceServers(msg.ice_servers);
      const i = msg.initiator;
      this.initiator = typeof i === 'boolean' ? i : i != null ? i === this.you.peer || i === this.you.role
        : (this.you.role || this.join.role) === 'host';
      if (msg.window) this.window = msg.window;
      // Keepalive through proxies that ignore WebSocket pings, and detection of a dead socket.
      const every = Math.min(15, Math.max(5, msg.ping_interval_s || 20)) * 1000;
      this._lastHeard = Date.now();
      clearInterval(this._timers.ping);
      this._timers.ping = setInterval(() => {
        if (Date.now() - this._lastHeard > 2.5 * every) return this._dropSocket('no answer to pings');
        this._send({ type: 'ping', t: Date.now() });
      }, every);
      // The hub forms a new session (`ready`) when the partner is there. Until then keep a working media path.
      this._partnerPresent = false;
      if (this.pc && !this._pcUp(this.pc)) this._closePeer();
      this._derive();
    }

    _onReady(msg) {
      this.session = msg.session;
      this.peer = msg.peer || null;
      this._partnerPresent = true;
      clearTimeout(this._timers.peerGone);
      this._emit('session', this.session, this.peer);
      this._newPeer();
    }

    _onPeerLeft(msg) {
      if (msg.session != null && msg.session !== this.session) return;
      this._partnerPresent = false;
      this._note('peer-left', { reason: msg.reason || null });
      // The partner may only have lost its signaling socket: keep a live media path for a while.
      if (msg.reason === 'left' || !this.pc || !this._pcUp(this.pc)) this._closePeer();
      else this._armPeerGone();
      this._derive(msg.reason === 'left' ? 'The other participant left. Waiting for them to come back…' : null);
    }

    _armPeerGone() {
      clearTimeout(this._timers.peerGone);
      this._timers.peerGone = setTimeout(() => {
        if (this._partnerPresent || !this.pc) return;
        if (this._pcUp(this.pc)) return this._armPeerGone();
        this._closePeer();
        this._derive();
      }, PEER_GONE_GRACE_MS);
    }

    _onClose(ev) {
      clearInterval(this._timers.ping);
      clearTimeout(this._timers.welcome);
      this.ws = null;
      if (this.state === 'ended') return;
      if (!ev.synthetic) this._note('signaling-closed', { code: ev.code });
      if (ev.code === 4001) return this._rejoin();
      if (CLOSE_REASON[ev.code]) return this._end(CLOSE_REASON[ev.code]);
      if (ev.code === 4029 || ev.code === 1009) this._error('signaling', { code: ev.code, message: ev.reason || 'closed by the server' });
      // A token refused before the upgrade (HTTP 401) looks like 1006 here: try a fresh one.
      if (!this._welcomed && !this._rejoined && this.linkToken && this._retries > 0) return this._rejoin();
      this._retry();
    }

    _retry() {
      if (this.state === 'ended') return;
      const end = Date.parse((this.window && (this.window.hard_end_at || this.window.closes_at)) || '');
      if (Number.isFinite(end) && Date.now() > end + 5000) return this._end('ended');
      if (++this._retries > this.maxRetries) return this._end('error');
      const base = Math.min(15000, 500 * 2 ** Math.min(this._retries - 1, 5));
      const delay = Math.round(base * (0.8 + Math.random() * 0.4));
      this.signalingState = 'reconnecting';
      this._derive(null, { attempt: this._retries, retry_in_ms: delay, online: global.navigator ? global.navigator.onLine !== false : true });
      clearTimeout(this._timers.retry);
      this._timers.retry = setTimeout(() => this._connect(), delay);
    }

    async _rejoin() {
      if (this._rejoined || !this.linkToken) return this._end('expired');
      this._rejoined = true;
      this.signalingState = 'reconnecting';
      this._derive('Refreshing your session…');
      try {
        const j = await join(this.linkToken, this.joinOptions);
        if (this.state === 'ended') return;
        this.join = j;
        if (j.window) this.window = j.window;
        if (Array.isArray(j.ice_servers)) this._setIceServers(j.ice_servers);
        this._connect();
      } catch (e) {
        if (this.state === 'ended') return;
        if (e && e.final) return this._end(JOIN_REASON[e.code] || 'expired');
        this._error('signaling', { message: 'Re-join failed: ' + (e && e.code) });
        this._rejoined = false;
        this._retry(); // network, server error or too early: later
      }
    }

    _setIceServers(servers) {
      this.iceServers = servers;
      const pc = this.pc;
      if (pc && pc.signalingState !== 'closed' && typeof pc.setConfiguration === 'function') {
        try { pc.setConfiguration({ ...pc.getConfiguration(), iceServers: servers }); } catch (_) { /* takes effect on the next pc */ }
      }
    }

    // ---- WebRTC ----

    _pcUp(pc) {
      return pc.connectionState ? pc.connectionState === 'connected' : /connected|completed/.test(pc.iceConnectionState);
    }

    _newPeer() {
      this._closePeer();
      const pc = new RTCPeerConnection({ iceServers: this.iceServers, iceTransportPolicy: this.relayOnly ? 'relay' : 'all' });
      this.pc = pc;
      this._pending = [];
      this._ops = Promise.resolve();
      this._wantOffer = null;
      this._offerAt = 0;
      this._restarts = 0;
      this._prevStats = null;
      this.gathered = []; // local candidates of this pc, from icecandidate events
      this.pcCreatedAt = Date.now();
      const kinds = new Set();
      if (this.localStream) {
        for (const t of this.localStream.getTracks()) { pc.addTrack(t, this.localStream); kinds.add(t.kind); }
      }
      if (this.initiator) { // still receive audio/video without a camera or microphone
        for (const k of ['audio', 'video']) if (!kinds.has(k)) pc.addTransceiver(k, { direction: 'recvonly' });
      }
      pc.onicecandidate = (ev) => {
        if (pc !== this.pc) return;
        if (!ev.candidate) { this.gatheringDoneAt = Date.now(); return; }
        const c = ev.candidate;
        const p = parseCandidate(c.candidate);
        if (p) {
          const type = c.type || p.type;
          const url = ev.url || c.url || null; // the STUN/TURN server that produced it
          const relayProtocol = type !== 'relay' ? null : c.relayProtocol
            || (url ? (/^turns:/i.test(url) ? 'tls' : /transport=tcp/i.test(url) ? 'tcp' : 'udp') : null);
          this.gathered.push({ ...p, type, relayProtocol, url });
        }
        this._signal({ type: 'candidate', candidate: { candidate: c.candidate, sdpMLineIndex: c.sdpMLineIndex, sdpMid: c.sdpMid } });
      };
      pc.onicecandidateerror = (ev) => {
        if (pc !== this.pc) return;
        this._error('ice', { errorCode: ev.errorCode, errorText: ev.errorText || '', url: ev.url || '',
          address: ev.address || null, port: ev.port || null });
      };
      pc.ontrack = (ev) => {
        if (pc !== this.pc) return;
        const tracks = this.remoteStream ? this.remoteStream.getTracks().filter((t) => t.kind !== ev.track.kind || t === ev.track) : [];
        if (!tracks.includes(ev.track)) tracks.push(ev.track);
        this.remoteStream = new MediaStream(tracks);
        this._emit('remote', this.remoteStream);
      };
      pc.onconnectionstatechange = () => this._onPcState(pc);
      pc.oniceconnectionstatechange = () => this._onIceState(pc);
      this._derive();
      if (this.initiator) this._negotiate(pc);
    }

    _closePeer() {
      const pc = this.pc;
      clearTimeout(this._timers.ice);
      clearTimeout(this._timers.peerGone);
      if (!pc) return;
      this.pc = null;
      this._pending = [];
      this._wantOffer = null;
      pc.onicecandidate = pc.onicecandidateerror = pc.ontrack = pc.onconnectionstatechange = pc.oniceconnectionstatechange = null;
      try { pc.close(); } catch (_) { /* already closed */ }
      if (this.remoteStream) { this.remoteStream = null; this._emit('remote', null); }
    }

    _onPcState(pc) {
      if (pc !== this.pc) return;
      const s = pc.connectionState;
      if (s === 'connected') {
        this._restarts = 0;
        clearTimeout(this._timers.ice);
        // A first summary soon after connecting, so a short call has one too.
        clearTimeout(this._timers.summaryFirst);
        this._timers.summaryFirst = setTimeout(() => { this.refreshSummary(); }, 1000);
      }
      if ((s === 'failed' || s === 'closed') && !this._partnerPresent) { this._closePeer(); return this._derive(); }
      if (s === 'failed' && !/failed/.test(pc.iceConnectionState)) this._recoverIce(pc); // DTLS or ICE gave up
      this._derive();
    }

    _onIceState(pc) {
      if (pc !== this.pc) return;
      const s = pc.iceConnectionState;
      this._note('ice-state', { state: s });
      clearTimeout(this._timers.ice);
      if (s === 'failed') this._recoverIce(pc);
      else if (s === 'disconnected') {
        this._timers.ice = setTimeout(() => {
          if (pc === this.pc && /disconnected|failed/.test(pc.iceConnectionState)) this._recoverIce(pc);
        }, ICE_DISCONNECTED_GRACE_MS);
      }
      this._derive();
    }

    /** ICE broke: the host restarts ICE (a few times, then forces a new session); the guest asks the host to. */
    _recoverIce(pc) {
      if (pc !== this.pc || !this._partnerPresent || this.signalingState !== 'open') return; // a new `ready` rebuilds
      clearTimeout(this._timers.ice);
      if (this._restarts >= MAX_ICE_RESTARTS) {
        if (this.initiator) { this._note('new-session', { why: 'ICE restarts did not help' }); this._dropSocket('forcing a new session'); }
        return;
      }
      this._restarts++;
      this.iceRestarts++;
      this._note('ice-restart', { attempt: this._restarts });
      this._negotiate(pc, { iceRestart: true });
      // Check again later; each round waits longer.
      this._timers.ice = setTimeout(() => {
        if (pc === this.pc && !this._pcUp(pc)) this._recoverIce(pc);
      }, 6000 * this._restarts);
    }

    _signal(data) { return this._send({ type: 'signal', session: this.session, data }); }

    _enqueue(pc, step) {
      this._ops = this._ops
        .then(() => (pc === this.pc ? step() : undefined))
        .catch((e) => {
          this._error('negotiation', { name: e && e.name, message: e && e.message ? String(e.message).split('\n')[0].slice(0, 160) : '' });
          console.warn('duet: negotiation step failed:', e && e.name); // never log SDP
        });
    }

    /** Host: offer (now, or once the current offer is answered). Guest: ask the host for an offer. */
    _negotiate(pc, opts = {}) {
      if (!this.initiator) {
        this._signal(opts.iceRestart ? { type: 'renegotiate', renegotiate: true, iceRestart: true } : { type: 'renegotiate', renegotiate: true });
        return;
      }
      this._wantOffer = { iceRestart: !!(opts.iceRestart || (this._wantOffer && this._wantOffer.iceRestart)) };
      this._enqueue(pc, () => this._maybeOffer(pc));
    }

    async _maybeOffer(pc) {
      if (!this._wantOffer || pc !== this.pc) return;
      if (pc.signalingState !== 'stable') {
        if (Date.now() - this._offerAt < 8000) return; // sent when the answer arrives
        await pc.setLocalDescription({ type: 'rollback' }); // unanswered (partner gone?): start over
      }
      const want = this._wantOffer;
      this._wantOffer = null;
      const offer = await pc.createOffer(want.iceRestart ? { iceRestart: true } : undefined);
      if (pc !== this.pc) return;
      await pc.setLocalDescription(offer);
      this._offerAt = Date.now();
      if (pc === this.pc) this._signal({ type: 'offer', sdp: pc.localDescription.sdp });
    }

    async _flush(pc) {
      const queued = this._pending;
      this._pending = [];
      for (const c of queued) await pc.addIceCandidate(c).catch(() => {});
    }

    _onSignal(msg) {
      const pc = this.pc;
      if (!pc || msg.session !== this.session) return;
      let d = msg.data;
      if (typeof d === 'string') { try { d = JSON.parse(d); } catch (_) { return; } }
      if (!d || typeof d !== 'object') return;
      if (d.candidate) {
        const c = d.candidate;
        this._enqueue(pc, () => (pc.remoteDescription
          ? pc.addIceCandidate(c).catch((e) => this._note('candidate-rejected', { name: e && e.name })) // e.g. stale ufrag
          : void this._pending.push(c)));
      } else if (d.type === 'offer' && d.sdp) {
        this._enqueue(pc, async () => {
          await pc.setRemoteDescription({ type: 'offer', sdp: d.sdp });
          await this._flush(pc);
          await pc.setLocalDescription(await pc.createAnswer());
          if (pc === this.pc) this._signal({ type: 'answer', sdp: pc.localDescription.sdp });
        });
      } else if (d.type === 'answer' && d.sdp) {
        this._enqueue(pc, async () => {
          if (pc.signalingState !== 'have-local-offer') return;
          await pc.setRemoteDescription({ type: 'answer', sdp: d.sdp });
          await this._flush(pc);
          if (this._wantOffer) await this._maybeOffer(pc);
        });
      } else if ((d.renegotiate || d.transceiverRequest) && this.initiator) {
        // A simple-peer non-initiator asking for an offer (maybe with a transceiver), or our guest asking for an
        // ICE restart: restart ICE whenever the path is down.
        const r = d.transceiverRequest;
        if (r && r.kind) this._enqueue(pc, () => { pc.addTransceiver(r.kind, r.init || undefined); });
        const restart = !!d.iceRestart || /disconnected|failed/.test(pc.iceConnectionState);
        if (restart) { this.iceRestarts++; this._note('ice-restart', { by: 'partner' }); }
        this._negotiate(pc, { iceRestart: restart });
      }
    }

    // ---- state, events ----

    /** Recomputes call.state from the socket, the partner and the peer connection, and reports it. */
    _derive(text, detail) {
      if (this.state === 'ended') return;
      const pc = this.pc;
      const sigOpen = this.signalingState === 'open';
      let state;
      let t = text || null;
      if (pc && this._pcUp(pc)) {
        state = 'connected';
        if (!t && !sigOpen) t = 'Connected. Reconnecting to the server in the background…';
        else if (!t && !this._partnerPresent) t = 'Connected. The other participant is reconnecting…';
      } else if (!sigOpen) {
        state = this._everWelcomed ? 'reconnecting' : 'connecting';
        if (!t && state === 'reconnecting') {
          const offline = global.navigator && global.navigator.onLine === false;
          t = offline ? 'You are offline. Reconnecting when the network is back…' : 'Connection to the server lost, reconnecting…';
        }
      } else if (pc) {
        const bad = /disconnected|failed/.test(pc.iceConnectionState) || pc.connectionState === 'failed';
        state = bad ? 'reconnecting' : 'negotiating';
        if (!t && bad) t = pc.iceConnectionState === 'failed' ? 'The media connection failed, retrying…' : 'Connection interrupted, trying to recover…';
      } else {
        state = 'waiting';
      }
      t = t || STATE_TEXT[state] || state;
      const key = state + '|' + t + '|' + JSON.stringify(detail || null);
      if (key === this._statusKey) return;
      this._statusKey = key;
      this.state = state;
      this._emit('status', state, t, detail || null);
    }

    _note(kind, extra) {
      (this.log = this.log || []).push({ t: Date.now(), kind, ...(extra || {}) });
      if (this.log.length > 50) this.log.shift();
    }

    _error(kind, info) {
      const e = { t: Date.now(), kind, ...info };
      this.errors.push(e);
      if (this.errors.length > 20) this.errors.shift();
      this._emit('error', e);
    }

    _emit(name, ...args) {
      for (const fn of this._handlers[name] || []) {
        try { fn.apply(this, args); } catch (e) { console.error('duet: callback failed', e); }
      }
    }

    _end(reason, text) {
      if (this.state === 'ended') return;
      text = END_TEXT[reason] || text || 'The call ended.';
      this.endReason = reason;
      this._sendSummary();
      for (const k of Object.keys(this._timers)) { clearTimeout(this._timers[k]); clearInterval(this._timers[k]); }
      if (global.removeEventListener) global.removeEventListener('online', this._onOnline);
      this._closePeer();
      const ws = this.ws;
      this.ws = null;
      this.signalingState = 'closed';
      if (ws) { try { ws.close(1000); } catch (_) { /* ignore */ } }
      if (this.localStream) this.localStream.getTracks().forEach((t) => t.stop());
      this.state = 'ended';
      this._emit('status', 'ended', text, { reason });
      this._emit('ended', reason, text);
    }

    // ---- the call summary for the server ----

    /** Refreshes call.summary from getStats() (the selected pair, RTT, inbound loss, average bitrates). */
    async refreshSummary() {
      const pc = this.pc;
      if (!pc || pc.connectionState !== 'connected') return;
      let stats = null;
      try { stats = await pc.getStats(); } catch (_) { return; }
      const byId = new Map();
      let pairId = null;
      let lost = 0;
      let received = 0;
      stats.forEach((st) => {
        byId.set(st.id, st);
        if (st.type === 'transport' && st.selectedCandidatePairId) pairId = st.selectedCandidatePairId;
        if (st.type === 'inbound-rtp') { lost += Math.max(0, st.packetsLost || 0); received += st.packetsReceived || 0; }
      });
      if (!pairId) stats.forEach((st) => { if (st.type === 'candidate-pair' && st.nominated && st.state === 'succeeded') pairId = pairId || st.id; });
      const pair = pairId && byId.get(pairId);
      const s = { user_agent_family: uaFamily() };
      if (pair) {
        const local = byId.get(pair.localCandidateId);
        const remote = byId.get(pair.remoteCandidateId);
        const types = ['host', 'srflx', 'prflx', 'relay'];
        if (local && remote && types.includes(local.candidateType) && types.includes(remote.candidateType)
          && ['udp', 'tcp'].includes(local.protocol)) {
          s.candidate_pair = { local_type: local.candidateType, remote_type: remote.candidateType, protocol: local.protocol };
          if (local.candidateType === 'relay' && ['udp', 'tcp', 'tls'].includes(local.relayProtocol)) s.candidate_pair.relay_protocol = local.relayProtocol;
        }
        if (pair.currentRoundTripTime != null) s.round_trip_time_ms = Math.min(60000, Math.round(pair.currentRoundTripTime * 10000) / 10);
        const secs = (Date.now() - (this.pcCreatedAt || Date.now())) / 1000;
        if (secs > 0) {
          s.inbound_bitrate_bps = Math.round(((pair.bytesReceived || 0) * 8) / secs);
          s.outbound_bitrate_bps = Math.round(((pair.bytesSent || 0) * 8) / secs);
        }
      }
      if (lost + received > 0) s.packet_loss = Math.round((lost / (lost + received)) * 10000) / 10000;
      this.summary = s;
    }

    /** Sends call.summary once with navigator.sendBeacon (survives the page closing); nothing without one. */
    _sendSummary() {
      if (this._summarySent || !this.summary || !this.linkToken) return;
      const nav = global.navigator;
      if (!nav || typeof nav.sendBeacon !== 'function') return;
      this._summarySent = true;
      const url = (this.joinOptions.base || '') + '/v1/join/' + encodeURIComponent(this.linkToken) + '/report';
      try { nav.sendBeacon(url, JSON.stringify(this.summary)); } catch (_) { /* best effort */ }
    }

    // ---- diagnostics ----

    /**
     * A digest of getStats() for a diagnostics panel. Bitrates are over the time since the previous call.
     * {
     *   at, state, session, initiator, relayOnly, reconnects, iceRestarts,
     *   signaling: {state, rtt_ms, url},                       (url without the token)
     *   iceServers: [urls…]                                     (no credentials)
     *   pc: {connection, ice, gathering, signaling, dtls, age_s} | null,
     *   local: [{type, protocol, relayProtocol, address, port, url}], remote: [{type, protocol, address, port}],
     *   localCounts: {host:{udp,tcp,tls}, srflx:{…}, prflx:{…}, relay:{…}}   (relay counted by relayProtocol)
     *   pair: {state, local:{…}, remote:{…}, rtt_ms, availableOutgoingKbps, bytesSent, bytesReceived} | null,
     *   media: {audio|video: {in: {kbps, packetsReceived, packetsLost, lossPct, jitter_ms, width, height, fps},
     *                         out: {kbps, packetsSent, remoteLost, fractionLostPct, rtt_ms, width, height, fps}}},
     *   errors: [...call.errors], log: [...], hints: [strings]
     * }
     */
    async getDiagnostics() {
      const pc = this.pc;
      const now = Date.now();
      const d = {
        at: now, state: this.state, session: this.session, initiator: this.initiator, relayOnly: this.relayOnly,
        reconnects: this.reconnects, iceRestarts: this.iceRestarts,
        signaling: { state: this.signalingState, rtt_ms: this.rtt, url: this.join.signal_url },
        iceServers: (this.iceServers || []).flatMap((s) => [].concat(s.urls || s.url || [])),
        pc: null, local: [], remote: [], localCounts: {}, pair: null,
        media: { audio: { in: null, out: null }, video: { in: null, out: null } },
        errors: this.errors.slice(), log: (this.log || []).slice(-15), hints: [],
      };
      for (const t of ['host', 'srflx', 'prflx', 'relay']) d.localCounts[t] = { udp: 0, tcp: 0, tls: 0 };
      if (pc) {
        d.pc = { connection: pc.connectionState, ice: pc.iceConnectionState, gathering: pc.iceGatheringState,
          signaling: pc.signalingState, dtls: null, age_s: Math.round((now - this.pcCreatedAt) / 1000) };
        let stats = null;
        try { stats = await pc.getStats(); } catch (_) { /* closed meanwhile */ }
        if (stats) this._digest(d, stats, pc, now);
        const seen = new Set(d.local.map((c) => c.type + c.address + c.port + c.protocol));
        for (const c of this.gathered || []) { // candidates no longer in the stats (e.g. after an ICE restart)
          const k = c.type + c.address + c.port + c.protocol;
          if (!seen.has(k)) { seen.add(k); d.local.push(c); }
        }
      }
      for (const c of d.local) {
        const via = c.type === 'relay' ? (c.relayProtocol || 'udp') : c.protocol;
        if (d.localCounts[c.type] && via in d.localCounts[c.type]) d.localCounts[c.type][via]++;
      }
      d.hints = hints(d);
      return d;
    }

    _digest(d, stats, pc, now) {
      const byId = new Map();
      stats.forEach((s) => byId.set(s.id, s));
      const cand = (c) => (c ? { type: c.candidateType, protocol: c.protocol, relayProtocol: c.relayProtocol || null,
        address: c.address || c.ip || null, port: c.port, url: c.url || null } : null);
      let pairId = null;
      const bytes = {};
      stats.forEach((s) => {
        if (s.type === 'local-candidate') d.local.push(cand(s));
        else if (s.type === 'remote-candidate') d.remote.push(cand(s));
        else if (s.type === 'transport') {
          if (s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
          if (s.dtlsState) d.pc.dtls = s.dtlsState;
        }
      });
      if (!pairId) stats.forEach((s) => { if (s.type === 'candidate-pair' && (s.selected || (s.nominated && s.state === 'succeeded'))) pairId = pairId || s.id; });
      const pair = pairId && byId.get(pairId);
      if (pair) {
        d.pair = { state: pair.state, local: cand(byId.get(pair.localCandidateId)), remote: cand(byId.get(pair.remoteCandidateId)),
          rtt_ms: pair.currentRoundTripTime != null ? Math.round(pair.currentRoundTripTime * 1000) : null,
          availableOutgoingKbps: pair.availableOutgoingBitrate != null ? Math.round(pair.availableOutgoingBitrate / 1000) : null,
          bytesSent: pair.bytesSent || 0, bytesReceived: pair.bytesReceived || 0 };
      }
      const prev = this._prevStats && this._prevStats.pc === pc ? this._prevStats : null;
      const kbps = (key, b) => {
        bytes[key] = b;
        if (!prev || !(key in prev.bytes) || now <= prev.at) return null;
        return Math.max(0, Math.round(((b - prev.bytes[key]) * 8) / (now - prev.at)));
      };
      const remoteIn = {};
      stats.forEach((s) => { if (s.type === 'remote-inbound-rtp') remoteIn[s.localId || s.id] = s; });
      stats.forEach((s) => {
        const kind = s.kind || s.mediaType;
        if (!(kind in d.media)) return;
        if (s.type === 'inbound-rtp') {
          const m = d.media[kind].in || (d.media[kind].in = { bytes: 0, packetsReceived: 0, packetsLost: 0 });
          m.bytes += s.bytesReceived || 0;
          m.packetsReceived += s.packetsReceived || 0;
          m.packetsLost += s.packetsLost || 0;
          if (s.jitter != null) m.jitter_ms = Math.round(s.jitter * 1000);
          if (s.frameWidth) { m.width = s.frameWidth; m.height = s.frameHeight; m.fps = s.framesPerSecond || null; }
        } else if (s.type === 'outbound-rtp') {
          const m = d.media[kind].out || (d.media[kind].out = { bytes: 0, packetsSent: 0 });
          m.bytes += s.bytesSent || 0;
          m.packetsSent += s.packetsSent || 0;
          if (s.frameWidth) { m.width = s.frameWidth; m.height = s.frameHeight; m.fps = s.framesPerSecond || null; }
          const r = remoteIn[s.id] || [...Object.values(remoteIn)].find((x) => x.localId === s.id || ((x.kind || x.mediaType) === kind && x.ssrc === s.ssrc));
          if (r) {
            m.remoteLost = (m.remoteLost || 0) + (r.packetsLost || 0);
            if (r.fractionLost != null) m.fractionLostPct = Math.round(r.fractionLost * 1000) / 10;
            if (r.roundTripTime != null) m.rtt_ms = Math.round(r.roundTripTime * 1000);
          }
        }
      });
      for (const kind of ['audio', 'video']) {
        const { in: i, out: o } = d.media[kind];
        if (i) {
          i.kbps = kbps(kind + '-in', i.bytes);
          const total = i.packetsReceived + Math.max(0, i.packetsLost);
          i.lossPct = total ? Math.round((Math.max(0, i.packetsLost) / total) * 1000) / 10 : 0;
        }
        if (o) o.kbps = kbps(kind + '-out', o.bytes);
      }
      this._prevStats = { pc, at: now, bytes };
    }
  }

  /** Plain-language reading of a diagnostics digest for ops. */
  function hints(d) {
    const h = [];
    const ice = d.errors.filter((e) => e.kind === 'ice');
    const turnUrls = d.iceServers.filter((u) => /^turns?:/i.test(u));
    const relay = d.localCounts.relay;
    const relays = relay.udp + relay.tcp + relay.tls;
    const auth = ice.filter((e) => e.errorCode === 401 || e.errorCode === 403 || e.errorCode === 437 || e.errorCode === 441);
    if (auth.length) {
      h.push(`TURN server refused the credentials (error ${auth[auth.length - 1].errorCode} from ${auth[auth.length - 1].url || 'the TURN server'}): ` +
        'a TURN authentication problem (expired link credentials, or a TURN secret mismatch on the server), not a network block.');
    }
    // Chrome names a TURN server that never answers by a stun: URL with the same host and port.
    const hostPort = (u) => String(u || '').replace(/^[a-z]+:/i, '').replace(/\?.*$/, '').toLowerCase();
    const turnHosts = new Set(turnUrls.map(hostPort));
    const unreachable = ice.filter((e) => e.errorCode === 701 && turnHosts.has(hostPort(e.url)));
    if (!relays && unreachable.length) {
      const where = [...new Set(unreachable.map((e) => hostPort(e.url)))].join(', ');
      h.push(`No relay candidate, and the TURN server at ${where} did not answer (error 701): its port is probably blocked ` +
        '(firewall, or UDP filtered on this network), not an authentication problem.');
    } else if (!relays && turnUrls.length && d.pc && d.pc.age_s > 5 && !auth.length) {
      h.push('No relay candidate yet, and no answer from the TURN server. If this stays so (the browser reports error 701 ' +
        'after about 40 s), the TURN port is blocked on this network.');
    }
    if (d.pc && !d.relayOnly && !d.localCounts.srflx.udp && ice.some((e) => e.errorCode === 701 && !turnHosts.has(hostPort(e.url)))) {
      h.push('No server-reflexive candidate: the STUN server is unreachable over UDP.');
    }
    if (d.pc && d.pc.ice === 'failed') h.push('ICE failed: no candidate pair works between the two browsers.');
    if (d.signaling.state !== 'open') h.push('The signaling WebSocket is not connected.');
    return h;
  }

  global.Duet = { version: 2, join, JoinError, Call, getMedia, getTrack, listDevices, STATE_TEXT, END_TEXT };
})(typeof window !== 'undefined' ? window : globalThis);
