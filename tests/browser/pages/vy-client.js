// The signaling and peer logic of the Virtual Y client (openy_gc_personal_training, signalingServer.js and
// peerConnection.js; research/signaling.md §2.2-§2.3), reduced to what the wire sees:
// - `new WebSocket(<server>?meetingId=<id>&isInstructorRole=<bool>)`;
// - the customer creates a non-initiator simple-peer on every WebSocket `open`, the instructor an initiator one on
//   every `ready` frame; every other frame is `JSON.parse`d and handed to `peer.signal()`;
// - every simple-peer `signal` goes out as `JSON.stringify(signal)`;
// - media is added after `connect` with `peer.addStream()` (so the customer, a non-initiator, makes simple-peer emit
//   `renegotiate` and `transceiverRequest` signals the hub must relay), and app messages go over the data channel.
// Relay-only ICE (`iceTransportPolicy: 'relay'`) with the TURN credentials the test got from Duet's join API.
'use strict';

window.vy = {
  opens: 0,
  closes: [],
  ready: 0,
  frames: 0,
  badFrames: [],
  signalsOut: {},
  signalsIn: {},
  peers: 0,
  connected: false,
  streams: 0,
  data: [],
  errors: [],
  peer: null,
};

function countSignal(map, signal) {
  const type = (signal && signal.type) || Object.keys(signal || {})[0] || 'unknown';
  map[type] = (map[type] || 0) + 1;
}

window.startVy = async function startVy({ url, isInstructor, iceServers }) {
  const st = window.vy;
  const localStream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
  let ws = null;

  function initPeer() {
    // As the Virtual Y client: a new peer each time, the previous one is not destroyed, only forgotten.
    const peer = new SimplePeer({ initiator: isInstructor, config: { iceServers, iceTransportPolicy: 'relay' } });
    st.peers += 1;
    st.peer = peer;
    peer.on('signal', (signal) => {
      countSignal(st.signalsOut, signal);
      ws.send(JSON.stringify(signal));
    });
    peer.on('connect', () => {
      if (st.peer !== peer) return;
      st.connected = true;
      peer.addStream(localStream);
      const who = isInstructor ? 'instructor' : 'customer';
      peer.send(JSON.stringify({ action: 'receiveChatMessage', payload: `hello from the ${who}` }));
    });
    peer.on('data', (d) => st.data.push(String(d)));
    peer.on('stream', (stream) => {
      st.streams += 1;
      document.getElementById('remote').srcObject = stream;
    });
    peer.on('error', (e) => st.errors.push(String(e.code || e.message)));
  }

  ws = new WebSocket(url);
  ws.onopen = () => {
    st.opens += 1;
    if (!isInstructor) initPeer();
  };
  ws.onmessage = (event) => {
    st.frames += 1;
    if (event.data === 'ready') {
      st.ready += 1;
      if (isInstructor) initPeer();
      return;
    }
    let signal;
    try {
      signal = JSON.parse(event.data);
    } catch (e) {
      // The Virtual Y client would throw here: the hub must never send anything but `ready` and relayed JSON.
      st.badFrames.push(typeof event.data === 'string' ? event.data.slice(0, 200) : `non-text frame ${typeof event.data}`);
      return;
    }
    countSignal(st.signalsIn, signal);
    if (st.peer) st.peer.signal(signal);
  };
  ws.onclose = (e) => st.closes.push(e.code);
};
