//! Two `webrtc`-crate peers of one booking that negotiate through the signaling hub and may only talk through Duet's
//! own TURN relay (moved here from tests/e2e_call.rs so tests/call_report.rs can make the same call).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceCandidateInit,
    RTCIceCandidateType, RTCIceServer, RTCIceTransportPolicy, RTCPeerConnectionIceEvent, RTCPeerConnectionState,
    RTCSessionDescription, RTCStatsReportEntry, StatsSelector,
};

use super::{Daemon, participant, turn_server};

/// A signaling WebSocket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
/// What happened on the signaling paths, for the failure message.
pub type Log = Arc<Mutex<Vec<String>>>;

/// Forwards a peer connection's events to the test: local candidates to signal, remote data channels.
pub struct Events {
    name: &'static str,
    candidates: mpsc::UnboundedSender<RTCIceCandidateInit>,
    candidate_types: Arc<Mutex<Vec<RTCIceCandidateType>>>,
    channels: mpsc::UnboundedSender<Arc<dyn DataChannel>>,
    log: Log,
}

/// The test's ends of [`Events`].
pub struct Side {
    pub candidates: mpsc::UnboundedReceiver<RTCIceCandidateInit>,
    pub candidate_types: Arc<Mutex<Vec<RTCIceCandidateType>>>,
    pub channels: mpsc::UnboundedReceiver<Arc<dyn DataChannel>>,
}

impl Events {
    pub fn new(name: &'static str, log: Log) -> (Events, Side) {
        let (candidates, candidates_rx) = mpsc::unbounded_channel();
        let (channels, channels_rx) = mpsc::unbounded_channel();
        let candidate_types = Arc::<Mutex<Vec<RTCIceCandidateType>>>::default();
        let events = Events { name, candidates, candidate_types: candidate_types.clone(), channels, log };
        let side = Side { candidates: candidates_rx, candidate_types, channels: channels_rx };
        (events, side)
    }
}

pub type Ready<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

// The trait is declared with `#[async_trait]` and this crate does not depend on async-trait, so the methods are
// written in the form the macro expands to. Each callback only hands its event over, so its future is ready at once.
impl PeerConnectionEventHandler for Events {
    fn on_ice_candidate<'life0, 'async_trait>(&'life0 self, event: RTCPeerConnectionIceEvent) -> Ready<'async_trait>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        self.candidate_types.lock().unwrap().push(event.candidate.typ);
        match event.candidate.to_json() {
            Ok(init) => {
                let _ = self.candidates.send(init);
            }
            Err(e) => self.log.lock().unwrap().push(format!("{}: candidate not serialisable: {e}", self.name)),
        }
        Box::pin(std::future::ready(()))
    }

    fn on_connection_state_change<'life0, 'async_trait>(
        &'life0 self,
        state: RTCPeerConnectionState,
    ) -> Ready<'async_trait>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        self.log.lock().unwrap().push(format!("{}: connection state {state}", self.name));
        Box::pin(std::future::ready(()))
    }

    fn on_data_channel<'life0, 'async_trait>(&'life0 self, data_channel: Arc<dyn DataChannel>) -> Ready<'async_trait>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let _ = self.channels.send(data_channel);
        Box::pin(std::future::ready(()))
    }
}

/// Two relay-only `webrtc`-crate peers of one booking, connected through the hub and Duet's relay, with the host's
/// data channel open on both sides; their signaling tasks keep running.
pub struct Call {
    pub host_pc: Arc<dyn PeerConnection>,
    pub guest_pc: Arc<dyn PeerConnection>,
    pub host_dc: Arc<dyn DataChannel>,
    pub guest_dc: Arc<dyn DataChannel>,
    /// The types of the candidates each side gathered.
    pub host_types: Arc<Mutex<Vec<RTCIceCandidateType>>>,
    pub guest_types: Arc<Mutex<Vec<RTCIceCandidateType>>>,
    pub tasks: Vec<JoinHandle<Result<(), String>>>,
    pub log: Log,
}

/// Opens both signaling sockets (host first), checks `welcome` and `ready`, and negotiates the peers until the
/// host's data channel is open and handed to the guest.
pub async fn connect(d: &Daemon, booking_id: &str, host_join: &Value, guest_join: &Value) -> Call {
    // Both participants open the signaling socket; the host first, so the guest's arrival forms the pair.
    let mut host_ws = open_signal(host_join).await;
    let host_welcome = next_json(&mut host_ws).await;
    check_welcome(&host_welcome, booking_id, "host");
    let mut guest_ws = open_signal(guest_join).await;
    let guest_welcome = next_json(&mut guest_ws).await;
    check_welcome(&guest_welcome, booking_id, "guest");
    let host_peer = host_welcome["you"]["peer"].as_str().unwrap().to_string();
    let guest_peer = guest_welcome["you"]["peer"].as_str().unwrap().to_string();
    assert_ne!(host_peer, guest_peer);

    let host_ready = next_json(&mut host_ws).await;
    let guest_ready = next_json(&mut guest_ws).await;
    assert_eq!(host_ready["type"], "ready", "host: {host_ready}");
    assert_eq!(guest_ready["type"], "ready", "guest: {guest_ready}");
    let session =
        host_ready["session"].as_u64().unwrap_or_else(|| panic!("ready without a session number: {host_ready}"));
    assert_eq!(guest_ready["session"], session, "both sides of the pair see the same session");
    assert_eq!(host_ready["peer"]["peer"], guest_peer.as_str(), "host's ready names the guest: {host_ready}");
    assert_eq!(host_ready["peer"]["role"], "guest");
    assert_eq!(guest_ready["peer"]["peer"], host_peer.as_str(), "guest's ready names the host: {guest_ready}");
    assert_eq!(guest_ready["peer"]["role"], "host");

    // Relay-only peers built from the ICE servers of each join response.
    let log: Log = Arc::default();
    let (host_events, host_side) = Events::new("host", log.clone());
    let (guest_events, mut guest_side) = Events::new("guest", log.clone());
    let host_pc = relay_only_peer(&host_join["ice_servers"], host_events).await;
    let guest_pc = relay_only_peer(&guest_join["ice_servers"], guest_events).await;

    // The host is the initiator: it creates the data channel and the offer.
    let host_dc = host_pc.create_data_channel("chat", None).await.expect("create data channel");
    let offer = host_pc.create_offer(None).await.expect("create offer");
    host_pc.set_local_description(offer.clone()).await.expect("set local offer");
    let tasks = vec![
        tokio::spawn(signaling(
            "host",
            host_pc.clone(),
            host_ws,
            session,
            guest_peer.clone(),
            host_side.candidates,
            Some(json!({"type": "offer", "sdp": offer.sdp})),
            log.clone(),
        )),
        tokio::spawn(signaling(
            "guest",
            guest_pc.clone(),
            guest_ws,
            session,
            host_peer.clone(),
            guest_side.candidates,
            None,
            log.clone(),
        )),
    ];

    let opened = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match host_dc.poll().await {
                Some(DataChannelEvent::OnOpen) => break true,
                Some(_) => {}
                None => break false,
            }
        }
    })
    .await;
    if opened != Ok(true) {
        panic!("the host's data channel did not open within 30 s\n{}", diagnose(d, &log, tasks).await);
    }
    let Ok(Some(guest_dc)) = tokio::time::timeout(Duration::from_secs(10), guest_side.channels.recv()).await else {
        panic!("the guest was never handed the host's data channel\n{}", diagnose(d, &log, tasks).await);
    };
    assert_eq!(guest_dc.label().await.expect("label"), "chat");
    let (host_types, guest_types) = (host_side.candidate_types, guest_side.candidate_types);
    Call { host_pc, guest_pc, host_dc, guest_dc, host_types, guest_types, tasks, log }
}

/// A peer connection configured from a join response's `ice_servers`, ICE restricted to relay candidates.
pub async fn relay_only_peer(ice_servers: &Value, events: Events) -> Arc<dyn PeerConnection> {
    let servers = ice_servers
        .as_array()
        .unwrap_or_else(|| panic!("ice_servers is not an array: {ice_servers}"))
        .iter()
        .map(|s| RTCIceServer {
            urls: match &s["urls"] {
                Value::String(u) => vec![u.clone()],
                Value::Array(us) => us.iter().map(|u| u.as_str().expect("url").to_string()).collect(),
                other => panic!("ice server urls {other}"),
            },
            username: s["username"].as_str().unwrap_or_default().to_string(),
            credential: s["credential"].as_str().unwrap_or_default().to_string(),
        })
        .collect();
    let config = RTCConfigurationBuilder::new()
        .with_ice_servers(servers)
        .with_ice_transport_policy(RTCIceTransportPolicy::Relay)
        .build();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(config)
        .with_handler(Arc::new(events))
        .with_udp_addrs(vec!["127.0.0.1:0"])
        .build()
        .await
        .expect("build peer connection");
    Arc::new(pc)
}

/// One side's signaling: sends `first` (the host's offer), trickles local candidates, applies what the partner sends.
/// Signals are simple-peer objects inside native v1 `signal` messages. Runs until aborted or something is wrong.
#[allow(clippy::too_many_arguments)]
pub async fn signaling(
    name: &'static str,
    pc: Arc<dyn PeerConnection>,
    mut ws: Ws,
    session: u64,
    partner: String,
    mut local: mpsc::UnboundedReceiver<RTCIceCandidateInit>,
    first: Option<Value>,
    log: Log,
) -> Result<(), String> {
    let note = |s: String| log.lock().unwrap().push(format!("{name}: {s}"));
    let signal = |data: Value| Message::text(json!({"type": "signal", "session": session, "data": data}).to_string());
    if let Some(data) = first {
        note(format!("sends {}", data["type"]));
        ws.send(signal(data)).await.map_err(|e| format!("{name}: send: {e}"))?;
    }
    let mut have_remote = false;
    let mut early: Vec<RTCIceCandidateInit> = Vec::new();
    loop {
        tokio::select! {
            Some(c) = local.recv() => {
                note(format!("sends {}", c.candidate));
                let data = json!({"type": "candidate", "candidate": {
                    "candidate": c.candidate, "sdpMid": c.sdp_mid, "sdpMLineIndex": c.sdp_mline_index,
                }});
                ws.send(signal(data)).await.map_err(|e| format!("{name}: send: {e}"))?;
            }
            frame = ws.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => return Err(format!("{name}: the signaling socket ended: {other:?}")),
                };
                let msg: Value = serde_json::from_str(text.as_str())
                    .map_err(|e| format!("{name}: frame is not JSON ({e}): {text}"))?;
                match msg["type"].as_str() {
                    Some("signal") => {}
                    Some("pong" | "window") => {
                        note(format!("got {msg}"));
                        continue;
                    }
                    _ => return Err(format!("{name}: unexpected frame {msg}")),
                }
                if msg["session"] != session || msg["from"] != partner.as_str() {
                    return Err(format!("{name}: signal with the wrong session or sender: {msg}"));
                }
                let data = &msg["data"];
                let sdp = || data["sdp"].as_str().unwrap_or_default().to_string();
                match data["type"].as_str() {
                    Some("offer") => {
                        note("got the offer".into());
                        let offer = RTCSessionDescription::offer(sdp()).map_err(|e| format!("{name}: offer: {e}"))?;
                        pc.set_remote_description(offer).await.map_err(|e| format!("{name}: set offer: {e}"))?;
                        let answer = pc.create_answer(None).await.map_err(|e| format!("{name}: answer: {e}"))?;
                        ws.send(signal(json!({"type": "answer", "sdp": answer.sdp})))
                            .await
                            .map_err(|e| format!("{name}: send: {e}"))?;
                        pc.set_local_description(answer).await.map_err(|e| format!("{name}: set answer: {e}"))?;
                    }
                    Some("answer") => {
                        note("got the answer".into());
                        let answer = RTCSessionDescription::answer(sdp()).map_err(|e| format!("{name}: answer: {e}"))?;
                        pc.set_remote_description(answer).await.map_err(|e| format!("{name}: set answer: {e}"))?;
                    }
                    Some("candidate") => {
                        let c = &data["candidate"];
                        note(format!("got {}", c["candidate"]));
                        let init = RTCIceCandidateInit {
                            candidate: c["candidate"].as_str().unwrap_or_default().to_string(),
                            sdp_mid: c["sdpMid"].as_str().map(str::to_string),
                            sdp_mline_index: c["sdpMLineIndex"].as_u64().map(|i| i as u16),
                            ..Default::default()
                        };
                        early.push(init);
                    }
                    _ => return Err(format!("{name}: unexpected signal data {data}")),
                }
                have_remote |= matches!(data["type"].as_str(), Some("offer" | "answer"));
                if have_remote {
                    for init in early.drain(..) {
                        pc.add_ice_candidate(init).await.map_err(|e| format!("{name}: add candidate: {e}"))?;
                    }
                }
            }
        }
    }
}

/// For a failure message: the outcome of finished signaling tasks (the others are aborted), the signaling log and the
/// daemon's metrics.
pub async fn diagnose(d: &Daemon, log: &Log, tasks: Vec<JoinHandle<Result<(), String>>>) -> String {
    let mut outcomes = Vec::new();
    for task in tasks {
        if task.is_finished() {
            outcomes.push(format!("{:?}", task.await));
        } else {
            task.abort();
        }
    }
    let log = log.lock().unwrap().join("\n");
    let metrics = match fetch_metrics(d).await {
        Ok(text) => text,
        Err(e) => e,
    };
    format!("signaling tasks ended: {outcomes:?}\nlog:\n{log}\nmetrics:\n{metrics}")
}

/// The types of the local and remote candidates of the pair the connection uses.
pub async fn selected_pair_types(pc: &dyn PeerConnection) -> (RTCIceCandidateType, RTCIceCandidateType) {
    let report = pc.get_stats(Instant::now(), StatsSelector::None).await;
    let pair_id = report
        .transport()
        .map(|t| t.selected_candidate_pair_id.clone())
        .filter(|id| !id.is_empty())
        .or_else(|| report.candidate_pairs().find(|p| p.nominated).map(|p| p.stats.id.clone()))
        .expect("stats name no selected or nominated candidate pair");
    let Some(RTCStatsReportEntry::IceCandidatePair(pair)) = report.get(&pair_id) else {
        panic!("no candidate pair {pair_id} in the stats");
    };
    // The pair names its candidates "candidate:…" while their own entries are "RTCLocalIceCandidate_candidate:…" and
    // "RTCRemoteIceCandidate_candidate:…" (webrtc 0.21), so match either form.
    let named = |id: &str, wanted: &str| id == wanted || id.strip_suffix(wanted).is_some_and(|p| p.ends_with('_'));
    let local = report.iter().find_map(|e| match e {
        RTCStatsReportEntry::LocalCandidate(c) if named(&c.stats.id, &pair.local_candidate_id) => {
            Some(c.candidate_type)
        }
        _ => None,
    });
    let remote = report.iter().find_map(|e| match e {
        RTCStatsReportEntry::RemoteCandidate(c) if named(&c.stats.id, &pair.remote_candidate_id) => {
            Some(c.candidate_type)
        }
        _ => None,
    });
    let ids = report.ids().collect::<Vec<_>>();
    let local = local.unwrap_or_else(|| panic!("no stats for the local candidate of {pair_id}: {ids:?}"));
    let remote = remote.unwrap_or_else(|| panic!("no stats for the remote candidate of {pair_id}: {ids:?}"));
    (local, remote)
}

pub fn link_token<'a>(booking: &'a Value, role: &str) -> &'a str {
    participant(booking, role)["link_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no link_token for the {role}: {booking}"))
}

/// POST /v1/join for the participant with `role`; asserts 200 and the role, returns the body.
pub async fn join_ok(d: &Daemon, booking: &Value, role: &str) -> Value {
    let (status, _, body) = d.join(link_token(booking, role)).await;
    assert_eq!(status, 200, "{role} join: {body}");
    assert_eq!(body["role"], role, "{role} join: {body}");
    body
}

pub async fn open_signal(join: &Value) -> Ws {
    let url = format!(
        "{}?token={}",
        join["signal_url"].as_str().expect("signal_url"),
        join["session_token"].as_str().expect("session_token")
    );
    let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap_or_else(|e| panic!("WebSocket upgrade at {url}: {e}"));
    ws
}

pub fn check_welcome(welcome: &Value, booking_id: &str, role: &str) {
    assert_eq!(welcome["type"], "welcome", "{role}'s first frame: {welcome}");
    assert_eq!(welcome["v"], 1, "{role}: {welcome}");
    assert!(
        welcome["booking"] == booking_id || welcome["booking"]["id"] == booking_id,
        "{role}'s welcome names another booking: {welcome}"
    );
    assert_eq!(welcome["you"]["role"], role, "{role}: {welcome}");
    assert!(welcome["you"]["peer"].is_string(), "{role}: {welcome}");
    assert_eq!(welcome["initiator"], role == "host", "the host initiates: {welcome}");
    turn_server(&welcome["ice_servers"]);
}

/// The next JSON text frame (WebSocket pings skipped).
pub async fn next_json(ws: &mut Ws) -> Value {
    let frame = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => break other,
            }
        }
    })
    .await
    .expect("no frame within 10 s");
    match frame {
        Some(Ok(Message::Text(t))) => {
            serde_json::from_str(t.as_str()).unwrap_or_else(|e| panic!("frame is not JSON ({e}): {t}"))
        }
        other => panic!("expected a JSON text frame, got {other:?}"),
    }
}

/// GET /metrics. A refused connection means the daemon is gone (it exited, or something outside the test stopped it),
/// which is worth saying plainly.
pub async fn fetch_metrics(d: &Daemon) -> Result<String, String> {
    let url = format!("http://{}/metrics", d.admin);
    let r = reqwest::get(&url).await.map_err(|e| format!("GET {url}: the daemon is not running any more? {e}"))?;
    r.text().await.map_err(|e| format!("GET {url}: {e}"))
}
