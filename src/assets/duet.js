/*
 * duet.js: browser client for the Duet daemon (booking join + native v1 signaling).
 *
 *   const join = await Duet.join(linkToken);          // POST /v1/join/{token}
 *   const call = new Duet.Call({ join, localStream, onStatus, onRemoteStream, onEnded });
 *   call.hangup();
 *
 * Signals are simple-peer's shapes ({type:"offer"|"answer",sdp} and
 * {type:"candidate",candidate:{candidate,sdpMLineIndex,sdpMid}}), wrapped as
 * {"type":"signal","session":N,"data":…}. We never log SDP or candidates.
 * Plain ES2020, no dependencies; defines the global `Duet`.
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
      // join_too_early | join_window_closed | booking_cancelled | link_invalid_or_revoked | network | http_NNN
      this.code = body.error || (status ? 'http_' + status : 'network');
      this.opens_at = body.opens_at || null; // RFC 3339, join_too_early only
      const ra = body.retry_after != null ? Number(body.retry_after)
        : retryAfterHeader != null ? Number(retryAfterHeader) : NaN;
      this.retry_after = Number.isFinite(ra) && ra >= 0 ? ra : null; // seconds
    }
    get tooEarly() { return this.code === 'join_too_early'; }
  }

  /**
   * Exchange a link token for a session: resolves to the join response
   * ({session_token, signal_url, ice_servers, role, participant, booking, window, expires_at})
   * plus `link_token` (so a Call can re-join after its session token expires).
   * opts.base: URL prefix for the API (default: same origin); opts.fetch: fetch override.
   */
  async function join(linkToken, opts = {}) {
    const doFetch = opts.fetch || global.fetch.bind(global);
    const url = (opts.base || '') + '/v1/join/' + encodeURIComponent(linkToken);
    let res;
    try {
      res = await doFetch(url, {
        method: 'POST', body: '{}', cache: 'no-store', credentials: 'omit',
        headers: { 'Content-Type': 'application/json' },
      });
    } catch (e) {
      throw new JoinError(0, { message: 'Network error: ' + (e && e.message) });
    }
    let body = null;
    try { body = await res.json(); } catch (_) { /* non-JSON body */ }
    if (!res.ok) throw new JoinError(res.status, body, res.headers.get('Retry-After'));
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

  // Human text for each state and end reason (the page may override via the callbacks).
  const STATE_TEXT = {
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
    replaced: 'This meeting was opened elsewhere (another tab or device).',
    full: 'This meeting already has two participants.',
    expired: 'Your link expired. Please rejoin.',
    invalid: 'This meeting link is not valid.',
    error: 'Lost the connection to the server.',
  };
  const CLOSE_REASON = { 4003: 'ended', 4004: 'cancelled', 4008: 'replaced', 4009: 'full' };
  const JOIN_REASON = { join_window_closed: 'ended', booking_cancelled: 'cancelled', link_invalid_or_revoked: 'invalid' };
  const MAX_RETRIES = 8;

  /**
   * One participant's side of a meeting. States (call.state):
   * connecting → waiting → negotiating → connected, plus reconnecting and the terminal `ended`.
   */
  class Call {
    constructor(opts) {
      if (!opts || !opts.join) throw new TypeError('Duet.Call: opts.join is required');
      this.join = opts.join;
      this.localStream = opts.localStream || null;
      this.relayOnly = !!opts.relayOnly;
      this.linkToken = opts.linkToken || opts.join.link_token || null;
      this.joinOptions = opts.joinOptions || {}; // passed to Duet.join when re-joining
      this._cb = { status: opts.onStatus, remote: opts.onRemoteStream, ended: opts.onEnded };
      this.state = 'idle';
      this.pc = null;            // current RTCPeerConnection (null while alone)
      this.ws = null;
      this.session = null;       // current pairing number from `ready`
      this.iceServers = opts.join.ice_servers || [];
      this.initiator = opts.join.role === 'host';
      this.remoteStream = null;
      this.rtt = null;           // ms, from the last ping/pong
      this.endReason = null;
      this._pending = [];        // remote candidates waiting for a remote description
      this._ops = Promise.resolve(); // serialises SDP/candidate steps per peer connection
      this._rejoined = false;
      this._retries = 0;
      this._timers = {};
      this._connect();
    }

    /** Leave the meeting: tell the hub, close everything, stop local tracks. */
    hangup() {
      if (this.state === 'ended') return;
      this._send({ type: 'leave' });
      this._end('hangup');
    }

    // ---- signaling socket ----

    _connect() {
      this._setState(this.ws ? 'reconnecting' : 'connecting');
      const ws = new WebSocket(signalUrl(this.join.signal_url, this.join.session_token));
      this.ws = ws;
      this._welcomed = false;
      ws.onmessage = (ev) => { if (ws === this.ws) this._onMessage(ev.data); };
      ws.onclose = (ev) => { if (ws === this.ws) this._onClose(ev); };
    }

    _send(obj) {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(obj));
    }

    _onMessage(raw) {
      let msg;
      try { msg = JSON.parse(raw); } catch (_) { return; }
      if (!msg || typeof msg !== 'object') return;
      switch (msg.type) {
        case 'welcome': return this._onWelcome(msg);
        case 'ready':
          this.session = msg.session;
          this.peer = msg.peer || null;
          return this._newPeer();
        case 'signal': return this._onSignal(msg);
        case 'peer-left':
          if (msg.session != null && msg.session !== this.session) return;
          this._closePeer();
          return this._setState('waiting');
        case 'window':
          if (msg.event === 'closing') {
            const mins = Math.max(1, Math.round((msg.in_s || 0) / 60));
            this._emit('status', this.state, `This meeting closes in ${mins} minute${mins === 1 ? '' : 's'}.`,
              { warning: 'closing', closes_at: msg.closes_at, in_s: msg.in_s });
          }
          return;
        case 'ping': return this._send({ type: 'pong', t: msg.t });
        case 'pong': if (typeof msg.t === 'number') this.rtt = Date.now() - msg.t; return;
        case 'error': console.warn('duet: server error', msg.code); return;
      }
    }

    _onWelcome(msg) {
      this._welcomed = true;
      this._retries = 0;
      this._rejoined = false;
      this.you = msg.you || {};
      if (Array.isArray(msg.ice_servers)) this.iceServers = msg.ice_servers;
      const i = msg.initiator;
      this.initiator = typeof i === 'boolean' ? i : i != null ? i === this.you.peer || i === this.you.role
        : (this.you.role || this.join.role) === 'host';
      this.window = msg.window || this.join.window || null;
      clearInterval(this._timers.ping); // keepalive for proxies that ignore WebSocket pings
      this._timers.ping = setInterval(() => this._send({ type: 'ping', t: Date.now() }),
        (msg.ping_interval_s || 20) * 1000);
      this._closePeer(); // a fresh socket means a fresh pairing: the hub sends `ready` if the partner is here
      this._setState('waiting');
    }

    _onClose(ev) {
      clearInterval(this._timers.ping);
      if (ev.code === 4001) return this._rejoin();            // session token expired
      if (CLOSE_REASON[ev.code]) return this._end(CLOSE_REASON[ev.code]);
      // A token refused before the upgrade (HTTP 401) looks like 1006 here: try a fresh one.
      if (!this._welcomed && !this._rejoined && this.linkToken) return this._rejoin();
      this._retry();
    }

    _retry() {
      if (++this._retries > MAX_RETRIES) return this._end('error');
      this._setState('reconnecting');
      clearTimeout(this._timers.retry);
      this._timers.retry = setTimeout(() => this._connect(), Math.min(10000, 500 * 2 ** this._retries));
    }

    /** Get a fresh session token via Duet.join (once per welcome), then reconnect. */
    async _rejoin() {
      if (this._rejoined || !this.linkToken) return this._end('expired');
      this._rejoined = true;
      this._setState('reconnecting', 'Refreshing your session…');
      try {
        const j = await join(this.linkToken, this.joinOptions);
        if (this.state === 'ended') return;
        this.join = j;
        this.iceServers = j.ice_servers || this.iceServers;
        this._connect();
      } catch (e) {
        if (this.state === 'ended') return;
        if (!e.status) { this._rejoined = false; return this._retry(); } // network: try again later
        this._end(JOIN_REASON[e.code] || 'expired', e.message);
      }
    }

    // ---- WebRTC ----

    /** New pairing (`ready`): drop any old peer connection and start fresh. */
    _newPeer() {
      this._closePeer();
      const pc = new RTCPeerConnection({
        iceServers: this.iceServers,
        iceTransportPolicy: this.relayOnly ? 'relay' : 'all',
      });
      this.pc = pc;
      this._pending = [];
      this._ops = Promise.resolve();
      this._restarts = 0;
      const kinds = new Set();
      if (this.localStream) {
        for (const t of this.localStream.getTracks()) { pc.addTrack(t, this.localStream); kinds.add(t.kind); }
      }
      // Still receive audio/video when we have no camera or microphone.
      if (this.initiator) {
        for (const k of ['audio', 'video']) if (!kinds.has(k)) pc.addTransceiver(k, { direction: 'recvonly' });
      }
      pc.onicecandidate = (ev) => {
        if (pc !== this.pc || !ev.candidate) return;
        const c = ev.candidate;
        this._signal({ type: 'candidate', candidate: { candidate: c.candidate, sdpMLineIndex: c.sdpMLineIndex, sdpMid: c.sdpMid } });
      };
      pc.ontrack = (ev) => {
        if (pc !== this.pc) return;
        let s = ev.streams && ev.streams[0];
        if (!s) { s = this.remoteStream || new MediaStream(); s.addTrack(ev.track); }
        if (s !== this.remoteStream) { this.remoteStream = s; this._emit('remote', s); }
      };
      pc.onconnectionstatechange = () => this._onPcState(pc);
      this._setState('negotiating');
      if (this.initiator) this._enqueue(pc, () => this._offer(pc));
    }

    _closePeer() {
      const pc = this.pc;
      if (!pc) return;
      this.pc = null;
      this._pending = [];
      pc.onicecandidate = pc.ontrack = pc.onconnectionstatechange = null;
      try { pc.close(); } catch (_) { /* already closed */ }
      if (this.remoteStream) { this.remoteStream = null; this._emit('remote', null); }
    }

    _onPcState(pc) {
      if (pc !== this.pc) return;
      const s = pc.connectionState;
      if (s === 'connected') this._setState('connected');
      else if (s === 'disconnected') this._setState('negotiating', 'Connection interrupted, trying to recover…');
      else if (s === 'failed') {
        this._setState('negotiating', 'Connection failed, retrying…');
        if (this.initiator && this._restarts++ < 3) this._enqueue(pc, () => this._offer(pc, { iceRestart: true }));
      }
    }

    _signal(data) { this._send({ type: 'signal', session: this.session, data }); }

    /** Run one negotiation step after the previous ones, only while `pc` is current. */
    _enqueue(pc, step) {
      this._ops = this._ops
        .then(() => (pc === this.pc ? step() : undefined))
        .catch((e) => console.warn('duet: negotiation step failed:', e && e.name)); // never log SDP
    }

    async _offer(pc, options) {
      const offer = await pc.createOffer(options);
      if (pc !== this.pc) return;
      await pc.setLocalDescription(offer);
      if (pc === this.pc) this._signal({ type: 'offer', sdp: pc.localDescription.sdp });
    }

    async _flush(pc) {
      const queued = this._pending;
      this._pending = [];
      for (const c of queued) await pc.addIceCandidate(c).catch(() => {});
    }

    _onSignal(msg) {
      const pc = this.pc;
      if (!pc || msg.session !== this.session) return; // stale session or nobody to talk to
      let d = msg.data;
      if (typeof d === 'string') { try { d = JSON.parse(d); } catch (_) { return; } }
      if (!d || typeof d !== 'object') return;
      if (d.candidate) {
        const c = d.candidate;
        this._enqueue(pc, () => (pc.remoteDescription ? pc.addIceCandidate(c) : void this._pending.push(c)));
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
        });
      } else if ((d.renegotiate || d.transceiverRequest) && this.initiator) {
        // A simple-peer non-initiator asking for a new offer (optionally with a transceiver).
        this._enqueue(pc, () => {
          const r = d.transceiverRequest;
          if (r && r.kind) pc.addTransceiver(r.kind, r.init);
          return this._offer(pc);
        });
      }
    }

    // ---- state & callbacks ----

    _setState(state, text, detail) {
      this.state = state;
      this._emit('status', state, text || STATE_TEXT[state] || state, detail);
    }

    _emit(name, ...args) {
      const fn = this._cb[name];
      if (typeof fn === 'function') {
        try { fn.apply(this, args); } catch (e) { console.error('duet: callback failed', e); }
      }
    }

    /** Terminal: close socket and peer, stop local tracks, report why. */
    _end(reason, text) {
      if (this.state === 'ended') return;
      text = END_TEXT[reason] || text || 'The call ended.';
      this.endReason = reason;
      clearInterval(this._timers.ping);
      clearTimeout(this._timers.retry);
      this._closePeer();
      const ws = this.ws;
      this.ws = null;
      if (ws) { try { ws.close(1000); } catch (_) { /* ignore */ } }
      if (this.localStream) this.localStream.getTracks().forEach((t) => t.stop());
      this._setState('ended', text, { reason });
      this._emit('ended', reason, text);
    }
  }

  global.Duet = { version: 1, join, Call, JoinError, END_TEXT, STATE_TEXT };
})(typeof window !== 'undefined' ? window : globalThis);
