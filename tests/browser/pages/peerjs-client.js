// A plain PeerJS application (peers/peerjs 1.5 from npm; research/signaling.md §4): `new Peer(id, {host, port, path,
// key, config})`, then one side calls the other with its camera stream (`peer.call`) and opens a data connection
// (`peer.connect`); the other answers with its own stream. Relay-only ICE with TURN credentials from Duet's join API.
'use strict';

window.pj = {
  open: null,
  errors: [],
  disconnected: 0,
  call: null,
  streams: 0,
  connOpen: false,
  data: [],
  peer: null,
};

let localStream = null;
async function camera() {
  if (!localStream) localStream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
  return localStream;
}

function trackCall(call) {
  const st = window.pj;
  st.call = call;
  call.on('stream', (stream) => {
    st.streams += 1;
    document.getElementById('remote').srcObject = stream;
  });
  call.on('error', (e) => st.errors.push(`call: ${e.type || ''} ${e.message}`));
}

function trackConnection(conn) {
  const st = window.pj;
  // Each side says hello ten times, every 300 ms. SCTP under the data channel retransmits whatever the relay drops,
  // yet the answering side's hello sent the instant its DataConnection opened was never delivered to the offerer in
  // about one run in six on a loaded machine (both DataConnections open, the other direction fine): a peerjs 1.5
  // race at open, not a loss on the wire. The test still needs data to arrive both ways.
  conn.on('open', () => {
    st.connOpen = true;
    let sent = 0;
    const hello = () => {
      if (sent++ >= 10 || !conn.open) return;
      conn.send(`hello from ${st.peer.id}`);
      setTimeout(hello, 300);
    };
    hello();
  });
  conn.on('data', (d) => st.data.push(String(d)));
  conn.on('error', (e) => st.errors.push(`data: ${e.type || ''} ${e.message}`));
}

// Registers `id` with the server; resolves to the id once the server said OPEN (or rejects on the first error).
window.startPeer = function startPeer({ id, host, port, path, key, iceServers }) {
  const st = window.pj;
  if (st.peer) st.peer.destroy();
  Object.assign(st, { open: null, call: null, streams: 0, connOpen: false, data: [] });
  return new Promise((resolve, reject) => {
    const peer = new Peer(id, {
      host, port, path, key, secure: false, debug: 1,
      config: { iceServers, iceTransportPolicy: 'relay' },
    });
    st.peer = peer;
    peer.on('open', (openId) => {
      st.open = openId;
      resolve(openId);
    });
    peer.on('error', (e) => {
      st.errors.push(`peer: ${e.type} ${e.message}`);
      reject(new Error(`${e.type}: ${e.message}`));
    });
    peer.on('disconnected', () => { st.disconnected += 1; });
    peer.on('call', async (call) => {
      call.answer(await camera());
      trackCall(call);
    });
    peer.on('connection', trackConnection);
  });
};

// Calls `dst` with the camera (if `media`) and opens a data connection to it.
window.callPeer = async function callPeer(dst, media) {
  const st = window.pj;
  if (media) trackCall(st.peer.call(dst, await camera()));
  trackConnection(st.peer.connect(dst, { reliable: true }));
};
