//! Issue 10, "Production at scale": three Duet nodes on loopback sharing one PostgreSQL database and a Redis server
//! of the test's own (so that the test may stop it), with two relay-only `webrtc`-crate peers whose signaling sockets
//! and TURN allocations are on different nodes.
//!
//! - a call across nodes; an extension and a cancellation made through the third node reach both sockets (and the
//!   cancellation both relays) within one second;
//! - `kill -9` of the guest's node mid-call: the guest joins again through the third node and the call resumes;
//! - Redis stopped and started mid-call: the data channel keeps flowing throughout, `/metrics` shows the outage, and
//!   cross-node signaling works again afterwards.
//!
//! Needs `DUET_TEST_DATABASE_URL` (cluster mode runs on PostgreSQL) and `redis-server`; says SKIPPED otherwise.

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::webrtc_call::{Events, Log, Ws, join_ok, next_json, open_signal, relay_only_peer};
use common::{Daemon, metric_sum};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::peer_connection::{PeerConnection, RTCIceCandidateInit, RTCSessionDescription};

/// The host of `url` (`ws://127.0.0.1:port/…` or a `turn:` URL) as `127.0.0.1:port`.
fn addr_in(url: &str) -> String {
    let rest = url.split_once("//").map_or(url, |(_, r)| r);
    let rest = rest.split_once(':').map_or(rest, |(scheme, r)| if scheme.starts_with("turn") { r } else { rest });
    rest.split(['/', '?']).next().unwrap_or_default().to_string()
}

/// Active TURN allocations of a node (all transports).
async fn allocations(d: &Daemon) -> f64 {
    metric_sum(&d.metrics().await, "duet_turn_allocations_active")
}

/// How a side's signaling ended.
#[derive(Debug)]
enum Ended {
    /// A new `ready`: the socket (handed back) now serves a new session.
    Ready(Box<Ws>, Value),
    /// The server closed the socket with this code (`None`: no close frame, e.g. a killed node).
    Closed(Option<u16>),
}

/// One side's signaling for one session: sends `first` (the host's offer) and the frames the test injects, trickles
/// local candidates, applies the partner's signals, notes `window`, `pong` and `peer-left` frames in the log, and
/// returns on the next `ready` or when the socket ends.
#[allow(clippy::too_many_arguments)]
async fn side(
    name: &'static str,
    pc: Arc<dyn PeerConnection>,
    mut ws: Ws,
    session: u64,
    mut local: mpsc::UnboundedReceiver<RTCIceCandidateInit>,
    mut inject: mpsc::UnboundedReceiver<Value>,
    first: Option<Value>,
    log: Log,
) -> Result<Ended, String> {
    let note = |s: String| log.lock().unwrap().push(format!("{name}: {s}"));
    let signal = |data: Value| Message::text(json!({"type": "signal", "session": session, "data": data}).to_string());
    if let Some(data) = first {
        ws.send(signal(data)).await.map_err(|e| format!("{name}: send: {e}"))?;
    }
    let mut have_remote = false;
    let mut early: Vec<RTCIceCandidateInit> = Vec::new();
    loop {
        tokio::select! {
            Some(c) = local.recv() => {
                let data = json!({"type": "candidate", "candidate": {
                    "candidate": c.candidate, "sdpMid": c.sdp_mid, "sdpMLineIndex": c.sdp_mline_index,
                }});
                // A send on a socket the server just closed fails; the read below then reports the close.
                let _ = ws.send(signal(data)).await;
            }
            Some(frame) = inject.recv() => {
                let _ = ws.send(Message::text(frame.to_string())).await;
            }
            frame = ws.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(f))) => {
                        let code = f.map(|f| u16::from(f.code));
                        note(format!("closed {code:?}"));
                        return Ok(Ended::Closed(code));
                    }
                    other => {
                        note(format!("socket ended {other:?}"));
                        return Ok(Ended::Closed(None));
                    }
                };
                let msg: Value = serde_json::from_str(text.as_str()).map_err(|e| format!("{name}: {e}: {text}"))?;
                match msg["type"].as_str() {
                    Some("signal") => {}
                    Some("ready") => return Ok(Ended::Ready(Box::new(ws), msg)),
                    Some("pong" | "window" | "peer-left") => {
                        note(format!("got {msg}"));
                        continue;
                    }
                    _ => return Err(format!("{name}: unexpected frame {msg}")),
                }
                if msg["session"] != session {
                    continue;
                }
                let data = &msg["data"];
                let sdp = || data["sdp"].as_str().unwrap_or_default().to_string();
                match data["type"].as_str() {
                    Some("offer") => {
                        let offer = RTCSessionDescription::offer(sdp()).map_err(|e| format!("{name}: offer: {e}"))?;
                        pc.set_remote_description(offer).await.map_err(|e| format!("{name}: set offer: {e}"))?;
                        let answer = pc.create_answer(None).await.map_err(|e| format!("{name}: answer: {e}"))?;
                        ws.send(signal(json!({"type": "answer", "sdp": answer.sdp})))
                            .await
                            .map_err(|e| format!("{name}: send: {e}"))?;
                        pc.set_local_description(answer).await.map_err(|e| format!("{name}: set answer: {e}"))?;
                    }
                    Some("answer") => {
                        let answer = RTCSessionDescription::answer(sdp()).map_err(|e| format!("{name}: answer: {e}"))?;
                        pc.set_remote_description(answer).await.map_err(|e| format!("{name}: set answer: {e}"))?;
                    }
                    Some("candidate") => {
                        let c = &data["candidate"];
                        early.push(RTCIceCandidateInit {
                            candidate: c["candidate"].as_str().unwrap_or_default().to_string(),
                            sdp_mid: c["sdpMid"].as_str().map(str::to_string),
                            sdp_mline_index: c["sdpMLineIndex"].as_u64().map(|i| i as u16),
                            ..Default::default()
                        });
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

/// One negotiated session: both peers, the host's data channel as each side sees it, the signaling tasks and the
/// senders of frames to inject into each socket.
struct Session {
    host_pc: Arc<dyn PeerConnection>,
    guest_pc: Arc<dyn PeerConnection>,
    host_dc: Arc<dyn DataChannel>,
    guest_dc: Arc<dyn DataChannel>,
    host: JoinHandle<Result<Ended, String>>,
    guest: JoinHandle<Result<Ended, String>>,
    guest_inject: mpsc::UnboundedSender<Value>,
    /// Kept so that the host's side keeps waiting for frames to inject.
    _host_inject: mpsc::UnboundedSender<Value>,
}

/// Negotiates relay-only peers over two sockets that both just got `ready` (the same session), until the host's
/// data channel is open on both sides.
async fn negotiate(host_ws: Ws, guest_ws: Ws, session: u64, host_ice: &Value, guest_ice: &Value, log: &Log) -> Session {
    let (host_events, host_side) = Events::new("host", log.clone());
    let (guest_events, mut guest_side) = Events::new("guest", log.clone());
    let host_pc = relay_only_peer(host_ice, host_events).await;
    let guest_pc = relay_only_peer(guest_ice, guest_events).await;
    let host_dc = host_pc.create_data_channel("chat", None).await.expect("create data channel");
    let offer = host_pc.create_offer(None).await.expect("create offer");
    host_pc.set_local_description(offer.clone()).await.expect("set local offer");
    let (host_inject, host_inject_rx) = mpsc::unbounded_channel();
    let (guest_inject, guest_inject_rx) = mpsc::unbounded_channel();
    let host = tokio::spawn(side(
        "host",
        host_pc.clone(),
        host_ws,
        session,
        host_side.candidates,
        host_inject_rx,
        Some(json!({"type": "offer", "sdp": offer.sdp})),
        log.clone(),
    ));
    let guest = tokio::spawn(side(
        "guest",
        guest_pc.clone(),
        guest_ws,
        session,
        guest_side.candidates,
        guest_inject_rx,
        None,
        log.clone(),
    ));
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
    assert_eq!(opened, Ok(true), "the data channel did not open within 30 s:\n{}", log.lock().unwrap().join("\n"));
    let guest_dc = tokio::time::timeout(Duration::from_secs(10), guest_side.channels.recv())
        .await
        .ok()
        .flatten()
        .expect("the guest gets the host's data channel");
    Session { host_pc, guest_pc, host_dc, guest_dc, host, guest, guest_inject, _host_inject: host_inject }
}

/// Echoes every message the guest receives; the host sends one every 50 ms and records when each echo comes back.
struct Flow {
    echoes: Arc<Mutex<Vec<Instant>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Flow {
    fn start(s: &Session) -> Flow {
        let echoes: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let guest_dc = s.guest_dc.clone();
        let echo = tokio::spawn(async move {
            while let Some(ev) = guest_dc.poll().await {
                if let DataChannelEvent::OnMessage(m) = ev {
                    let text = String::from_utf8_lossy(&m.data).to_string();
                    let _ = guest_dc.send_text(&format!("echo {text}")).await;
                }
            }
        });
        let host_dc = s.host_dc.clone();
        let seen = echoes.clone();
        let send = tokio::spawn(async move {
            let mut n = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        n += 1;
                        if host_dc.send_text(&format!("m{n}")).await.is_err() { return; }
                    }
                    ev = host_dc.poll() => match ev {
                        Some(DataChannelEvent::OnMessage(_)) => seen.lock().unwrap().push(Instant::now()),
                        Some(_) => {}
                        None => return,
                    }
                }
            }
        });
        Flow { echoes, tasks: vec![echo, send] }
    }

    /// Echoes received since `since`, and the longest gap between two of them (or from `since` to the first).
    fn since(&self, since: Instant) -> (usize, Duration) {
        let echoes = self.echoes.lock().unwrap();
        let mut last = since;
        let mut gap = Duration::ZERO;
        let mut n = 0;
        for &t in echoes.iter().filter(|&&t| t >= since) {
            gap = gap.max(t - last);
            last = t;
            n += 1;
        }
        gap = gap.max(Instant::now() - last);
        (n, gap)
    }

    fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Opens the socket of a join response and reads `welcome`.
async fn welcomed(join: &Value, role: &str) -> Ws {
    let mut ws = open_signal(join).await;
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{role}: {welcome}");
    ws
}

/// Reads frames until `ready`.
async fn ready(ws: &mut Ws, role: &str) -> Value {
    loop {
        let msg = next_json(ws).await;
        if msg["type"] == "ready" {
            return msg;
        }
        assert_eq!(msg["type"], "peer-left", "{role} expects ready: {msg}");
    }
}

/// Waits until `done` holds for the log, or panics after `within`.
async fn log_shows(log: &Log, within: Duration, what: &str, done: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + within;
    while !done(&log.lock().unwrap()) {
        assert!(Instant::now() < deadline, "{what} not within {within:?}:\n{}", log.lock().unwrap().join("\n"));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_across_nodes_follows_an_extension_and_a_cancel_made_on_a_third() {
    let Some(c) = Cluster::start("call_across_nodes_follows_an_extension_and_a_cancel_made_on_a_third").await else {
        return;
    };
    tokio::time::timeout(Duration::from_secs(120), across_nodes(&c)).await.expect("within 120 s");
}

async fn across_nodes(c: &Cluster) {
    let (n1, n2, n3) = (c.node(0), c.node(1), c.node(2));
    let booking = n1.booking_now(60, 1800).await;
    let id = booking["id"].as_str().expect("id");
    // The host joins through node 1, the guest through node 2: sockets and TURN on different nodes.
    let host_join = join_ok(n1, &booking, "host").await;
    let guest_join = join_ok(n2, &booking, "guest").await;
    assert_eq!(addr_in(host_join["signal_url"].as_str().unwrap()), n1.http.to_string(), "{host_join}");
    assert_eq!(addr_in(guest_join["signal_url"].as_str().unwrap()), n2.http.to_string(), "{guest_join}");
    let turn_of = |j: &Value| addr_in(common::turn_server(&j["ice_servers"])["urls"][0].as_str().unwrap_or_default());
    assert_eq!(turn_of(&host_join), n1.turn_udp.to_string(), "host's TURN is node 1's");
    assert_eq!(turn_of(&guest_join), n2.turn_udp.to_string(), "guest's TURN is node 2's");

    let mut host_ws = welcomed(&host_join, "host").await;
    let mut guest_ws = welcomed(&guest_join, "guest").await;
    let (hr, gr) = (ready(&mut host_ws, "host").await, ready(&mut guest_ws, "guest").await);
    assert_eq!(hr["session"], gr["session"], "one session across nodes: {hr} {gr}");
    assert_eq!(hr["peer"]["role"], "guest");
    assert_eq!(gr["peer"]["role"], "host");
    let session = hr["session"].as_u64().expect("session");
    let log: Log = Arc::default();
    let s = negotiate(host_ws, guest_ws, session, &host_join["ice_servers"], &guest_join["ice_servers"], &log).await;
    let flow = Flow::start(&s);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(flow.since(t0).0 > 3, "data flows through two nodes' relays");
    assert!(allocations(n1).await >= 1.0, "the host's allocation is on node 1");
    assert!(allocations(n2).await >= 1.0, "the guest's allocation is on node 2");
    assert_eq!(allocations(n3).await, 0.0, "node 3 relays nothing");

    // An extension made through node 3's API: both sockets see the new window within one second.
    let r = n3.client().get(n3.url(&format!("/v1/bookings/{id}"))).bearer_auth(&n3.api_key).send().await.unwrap();
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let b: Value = r.json().await.unwrap();
    let end =
        time::OffsetDateTime::parse(b["end_at"].as_str().unwrap(), &time::format_description::well_known::Rfc3339)
            .unwrap()
            + time::Duration::minutes(15);
    let end = end.format(&time::format_description::well_known::Rfc3339).unwrap();
    let sent = Instant::now();
    let r = n3
        .client()
        .patch(n3.url(&format!("/v1/bookings/{id}")))
        .bearer_auth(&n3.api_key)
        .header("If-Match", etag)
        .json(&json!({"end_at": end}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap_or_default());
    let changed =
        |who: &str, l: &[String]| l.iter().any(|x| x.starts_with(&format!("{who}: got")) && x.contains("\"changed\""));
    log_shows(&log, Duration::from_secs(1), "both sockets see the extension", |l| {
        changed("host", l) && changed("guest", l)
    })
    .await;
    eprintln!("extension seen by both sockets after {:?}", sent.elapsed());

    // Newest socket per role wins across nodes: the guest opens a second socket, on node 3; the one on node 2 is
    // closed with 4008 and the host sees a new session.
    let guest_join3 = join_ok(n3, &booking, "guest").await;
    let mut guest3 = welcomed(&guest_join3, "guest").await;
    let replaced = tokio::time::timeout(Duration::from_secs(5), s.guest).await.expect("guest side ends").unwrap();
    assert!(matches!(replaced, Ok(Ended::Closed(Some(4008)))), "the older guest socket is replaced: {replaced:?}");
    let host_end = tokio::time::timeout(Duration::from_secs(5), s.host).await.expect("host side ends").unwrap();
    let Ok(Ended::Ready(host_ws, hr2)) = host_end else { panic!("the host gets a new ready: {host_end:?}") };
    let gr2 = ready(&mut guest3, "guest").await;
    assert_eq!(hr2["session"], gr2["session"]);
    assert!(hr2["session"].as_u64() > Some(session), "a new session: {hr2}");
    flow.stop();
    let _ = s.host_pc.close().await;
    let _ = s.guest_pc.close().await;
    let session = hr2["session"].as_u64().unwrap();
    let s = negotiate(*host_ws, guest3, session, &host_join["ice_servers"], &guest_join3["ice_servers"], &log).await;
    let flow = Flow::start(&s);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(allocations(n3).await >= 1.0, "the guest now relays through node 3");

    // A cancel made through node 2 (no socket of this booking there any more): both sockets close with 4004 and the
    // allocations on nodes 1 and 3 are gone, within one second.
    cancel_ends_everything_within_a_second(n2, id, s, [n1, n3]).await;
    eprintln!("cancel closed both sockets and both allocations within {:?}", sent.elapsed());
    flow.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_and_a_redis_outage_do_not_end_the_call() {
    let Some(mut c) = Cluster::start("a_killed_node_and_a_redis_outage_do_not_end_the_call").await else { return };
    tokio::time::timeout(Duration::from_secs(150), failures(&mut c)).await.expect("within 150 s");
}

async fn failures(c: &mut Cluster) {
    let booking = c.node(0).booking_now(60, 1800).await;
    let id = booking["id"].as_str().expect("id").to_string();
    let host_join = join_ok(c.node(0), &booking, "host").await;
    let guest_join = join_ok(c.node(1), &booking, "guest").await;
    let mut host_ws = welcomed(&host_join, "host").await;
    let mut guest_ws = welcomed(&guest_join, "guest").await;
    let session = ready(&mut host_ws, "host").await["session"].as_u64().expect("session");
    ready(&mut guest_ws, "guest").await;
    let log: Log = Arc::default();
    let s = negotiate(host_ws, guest_ws, session, &host_join["ice_servers"], &guest_join["ice_servers"], &log).await;
    let flow = Flow::start(&s);

    // kill -9 of node 2 (the guest's socket and TURN): the guest joins again through node 3; the host, whose socket
    // stays on node 1, gets a new session; the call resumes through node 3's relay.
    c.nodes[1].as_mut().expect("node 2").kill9();
    c.nodes[1] = None;
    let guest_end = tokio::time::timeout(Duration::from_secs(10), s.guest).await.expect("guest side ends").unwrap();
    assert!(matches!(guest_end, Ok(Ended::Closed(_))), "{guest_end:?}");
    let killed = Instant::now();
    let guest_join3 = join_ok(c.node(2), &booking, "guest").await;
    let mut guest3 = welcomed(&guest_join3, "guest").await;
    let gr = ready(&mut guest3, "guest").await;
    let host_end = tokio::time::timeout(Duration::from_secs(10), s.host).await.expect("host side ends").unwrap();
    let Ok(Ended::Ready(host_ws, hr)) = host_end else { panic!("the host gets a new ready: {host_end:?}") };
    assert_eq!(hr["session"], gr["session"]);
    flow.stop();
    let _ = s.host_pc.close().await;
    let _ = s.guest_pc.close().await;
    let session = hr["session"].as_u64().unwrap();
    let s = negotiate(*host_ws, guest3, session, &host_join["ice_servers"], &guest_join3["ice_servers"], &log).await;
    eprintln!("call resumed through node 3 {:?} after node 2 was killed", killed.elapsed());
    let flow = Flow::start(&s);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(allocations(c.node(2)).await >= 1.0, "the guest relays through node 3");

    // Redis stops for three seconds and comes back empty: the data channel never pauses for long, the nodes report
    // the outage, and signaling across nodes works again afterwards.
    let before = Instant::now();
    c.redis.stop();
    c.wait_metric(0, "duet_cluster_redis_up", 0.0).await;
    let r = reqwest::get(format!("http://{}/readyz", c.node(0).admin)).await.expect("readyz");
    assert_eq!(r.status().as_u16(), 200, "a Redis outage degrades readiness, it does not take the node out");
    let body: Value = r.json().await.expect("JSON");
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["reasons"], json!(["redis_down"]), "{body}");
    assert_eq!(body["checks"]["redis"], "down", "{body}");
    assert_eq!(body["checks"]["node"], "node-1", "{body}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.redis.resume();
    for i in [0, 2] {
        c.wait_metric(i, "duet_cluster_redis_up", 1.0).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (echoes, gap) = flow.since(before);
    eprintln!("through the Redis outage: {echoes} echoes, longest gap {gap:?}");
    assert!(gap < Duration::from_secs(1), "the data channel paused {gap:?} during the Redis outage");
    assert!(echoes > 40, "the data channel kept flowing: {echoes} echoes");

    // Cross-node signaling again: the guest's ping (node 3) is answered by the room on node 1.
    s.guest_inject.send(json!({"type": "ping", "t": 42})).expect("inject");
    log_shows(&log, Duration::from_secs(2), "the guest's ping crosses nodes after the outage", |l| {
        l.iter().any(|x| x.starts_with("guest: got") && x.contains("\"pong\"") && x.contains("42"))
    })
    .await;

    // And a cancel through node 3 still reaches both sockets and both relays within one second.
    cancel_ends_everything_within_a_second(c.node(2), &id, s, [c.node(0), c.node(2)]).await;
    flow.stop();
}

/// Cancels booking `id` through node `via`: both sides' sockets close with 4004 and the allocations on `relays` are
/// gone, all within one second of the request.
async fn cancel_ends_everything_within_a_second(via: &Daemon, id: &str, s: Session, relays: [&Daemon; 2]) {
    let sent = Instant::now();
    let (status, body) = common::cancel_booking(via, id).await;
    assert_eq!(status, 200, "{body}");
    for (who, task) in [("host", s.host), ("guest", s.guest)] {
        let end = tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .unwrap_or_else(|_| panic!("the {who}'s socket stayed open 1 s after the cancel"))
            .unwrap();
        assert!(matches!(end, Ok(Ended::Closed(Some(4004)))), "{who}: {end:?}");
    }
    loop {
        let (a, b) = (allocations(relays[0]).await, allocations(relays[1]).await);
        if a == 0.0 && b == 0.0 {
            break;
        }
        assert!(sent.elapsed() < Duration::from_secs(1), "allocations left 1 s after the cancel: {a}, {b}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("the cancel closed both sockets and both relays' allocations within {:?}", sent.elapsed());
}

/// A booking with its host's socket on node 1 (the room's home) and its guest's on node 2 (proxied), both past
/// `ready`: (booking, host join, guest join, host socket, guest socket).
async fn paired_on_nodes_1_and_2(c: &Cluster) -> (Value, Value, Value, Ws, Ws) {
    let booking = c.node(0).booking_now(60, 1800).await;
    let host_join = join_ok(c.node(0), &booking, "host").await;
    let guest_join = join_ok(c.node(1), &booking, "guest").await;
    let mut host = welcomed(&host_join, "host").await;
    let mut guest = welcomed(&guest_join, "guest").await;
    let (h, g) = (ready(&mut host, "host").await, ready(&mut guest, "guest").await);
    assert_eq!(h["session"], g["session"], "one room across nodes: {h} {g}");
    (booking, host_join, guest_join, host, guest)
}

/// A raw WebSocket client.
async fn raw(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url).await.unwrap_or_else(|e| panic!("connect {url}: {e}")).0
}

/// The next text frame, within 5 s.
async fn text(ws: &mut Ws, what: &str) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            other => panic!("{what}: expected a text frame, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_y_and_peerjs_rooms_span_nodes() {
    let extra = "[signaling.vy]\nenabled = true\n\n[signaling.peerjs]\nenabled = true\n";
    let Some(c) = Cluster::start_with("virtual_y_and_peerjs_rooms_span_nodes", extra).await else { return };
    let (n1, n2, n3) = (c.node(0), c.node(1), c.node(2));

    // Virtual Y: the customer on node 2, the instructor on node 1; both get `ready`, frames pass verbatim both ways.
    let meeting = format!("m-{}", std::process::id());
    let mut body = common::booking_body(60, 1800);
    body["external_id"] = json!(meeting);
    let (status, booking) = n3.create_booking(&body).await;
    assert_eq!(status, 201, "{booking}");
    let vy =
        |d: &Daemon, instructor: bool| format!("ws://{}/?meetingId={meeting}&isInstructorRole={instructor}", d.http);
    let mut customer = raw(&vy(n2, false)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut instructor = raw(&vy(n1, true)).await;
    assert_eq!(text(&mut customer, "vy ready (customer, node 2)").await, "ready");
    assert_eq!(text(&mut instructor, "vy ready (instructor, node 1)").await, "ready");
    let offer = r#"{"type":"offer","sdp":"v=0\r\n\u00e9"}"#;
    instructor.send(Message::text(offer)).await.expect("send");
    assert_eq!(text(&mut customer, "vy relay 1 → 2").await, offer, "byte-identical across nodes");
    let answer = r#"{ "type" : "answer", "sdp":"v=0" }"#;
    customer.send(Message::text(answer)).await.expect("send");
    assert_eq!(text(&mut instructor, "vy relay 2 → 1").await, answer, "byte-identical across nodes");

    // PeerJS (legacy key): alice on node 1, bob on node 3; an OFFER reaches bob with src forced, payload verbatim.
    let pj = |d: &Daemon, id: &str| format!("ws://{}/peerjs?key=peerjs&id={id}&token=t{id}&version=1.5.5", d.http);
    let mut alice = raw(&pj(n1, "alice")).await;
    assert_eq!(text(&mut alice, "OPEN alice").await, r#"{"type":"OPEN"}"#);
    let mut bob = raw(&pj(n3, "bob")).await;
    assert_eq!(text(&mut bob, "OPEN bob").await, r#"{"type":"OPEN"}"#);
    let payload = r#"{"sdp":{"type":"offer","sdp":"v=0"},"type":"media","connectionId":"mc_1"}"#;
    alice
        .send(Message::text(format!(r#"{{"type":"OFFER","src":"mallory","dst":"bob","payload":{payload}}}"#)))
        .await
        .expect("send");
    assert_eq!(
        text(&mut bob, "peerjs OFFER 1 → 3").await,
        format!(r#"{{"type":"OFFER","src":"alice","dst":"bob","payload":{payload}}}"#)
    );
    // The id is taken cluster-wide: a second "bob" with another token, on node 2, gets ID-TAKEN.
    let mut bob2 = raw(&pj(n2, "bob").replace("token=tbob", "token=other")).await;
    let taken = text(&mut bob2, "ID-TAKEN").await;
    assert!(taken.contains("ID-TAKEN"), "{taken}");

    // A forged feed message (a Redis client without the nodes' secrets) cancels nothing: the frames still pass, and
    // every node counts a message with a bad signature. (redis-server comes with redis-cli.)
    let forged =
        format!(r#"{{"from":1,"event":"revoked","booking":"{}","until":4102444800}}"#, booking["id"].as_str().unwrap());
    let published = Command::new("redis-cli")
        .args(["-p", &c.redis.port.to_string(), "PUBLISH", "duet:feed", &forged])
        .output()
        .expect("redis-cli");
    assert!(published.status.success(), "{published:?}");
    c.wait_metric(0, "duet_cluster_bus_dropped_total{reason=\"bad_signature\"}", 1.0).await;
    instructor.send(Message::text("still here")).await.expect("send");
    assert_eq!(text(&mut customer, "a frame after the forged cancel").await, "still here");

    // Cancelling the Virtual Y booking on node 2 closes both vy sockets with 4004.
    let (status, body) = common::cancel_booking(n2, booking["id"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{body}");
    for (who, ws) in [("instructor", &mut instructor), ("customer", &mut customer)] {
        let end = tokio::time::timeout(Duration::from_secs(2), ws.next()).await.expect("closed in time");
        let code = match end {
            Some(Ok(Message::Close(Some(f)))) => Some(u16::from(f.code)),
            other => panic!("{who}: {other:?}"),
        };
        assert_eq!(code, Some(4004), "{who}");
    }
}

/// A socket that goes while Redis is down (its goodbye to the home node is lost) still leaves its room once Redis is
/// back: its node's hold lists no longer name it (README, "Cluster mode").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goodbye_lost_in_a_redis_outage_is_repaired() {
    let Some(mut c) = Cluster::start("a_goodbye_lost_in_a_redis_outage_is_repaired").await else { return };
    let (_, _, _, mut host, mut guest) = paired_on_nodes_1_and_2(&c).await;

    c.redis.stop();
    c.wait_metric(1, "duet_cluster_redis_up", 0.0).await;
    guest.close(None).await.expect("close");
    drop(guest);
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.redis.resume();
    let back = Instant::now();
    let left = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match host.next().await {
                Some(Ok(Message::Text(t))) if t.contains("\"peer-left\"") => return t.to_string(),
                Some(Ok(_)) => {}
                other => panic!("the host's socket ended: {other:?}"),
            }
        }
    })
    .await
    .expect("the host hears that the guest left within 30 s of Redis coming back");
    eprintln!("peer-left {:?} after Redis came back: {left}", back.elapsed());
}

/// SIGTERM drains one node: it refuses new joins (503, so the balancer sends them to the others) while its running
/// call goes on, signaling across nodes included; once its last socket is gone it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_takes_no_new_joins_and_lets_its_call_finish() {
    let Some(mut c) = Cluster::start("a_draining_node_takes_no_new_joins_and_lets_its_call_finish").await else {
        return;
    };
    let (booking, _, _, mut host, mut guest) = paired_on_nodes_1_and_2(&c).await;

    let pid = c.node(1).child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let token = booking["participants"][1]["link_token"].as_str().expect("link token");
    let (status, _, body) = c.node(1).join(token).await;
    assert_eq!((status, body["error"].as_str()), (503, Some("draining")), "{body}");
    let (status, _, body) = c.node(2).join(token).await;
    assert_eq!(status, 200, "the other nodes take the join: {body}");

    // The call on the draining node goes on: a signal from the guest (node 2) reaches the host (node 1), and back.
    let data = json!({"type": "signal", "session": 1, "data": {"candidate": {"candidate": "c1"}}});
    guest.send(Message::text(data.to_string())).await.expect("send");
    let got = text(&mut host, "the guest's signal while its node drains").await;
    assert!(got.contains("\"c1\""), "{got}");
    host.send(Message::text(data.to_string().replace("c1", "c2"))).await.expect("send");
    let got = text(&mut guest, "the host's signal to the draining node").await;
    assert!(got.contains("\"c2\""), "{got}");

    // The guest leaves: node 2 has nothing left to wait for and exits.
    guest.close(None).await.expect("close");
    let deadline = Instant::now() + Duration::from_secs(15);
    let n2 = c.nodes[1].as_mut().expect("node 2");
    while n2.child.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "the drained node did not exit within 15 s of its last socket");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = text(&mut host, "peer-left").await;
    assert!(left.contains("peer-left"), "{left}");
}

/// `kill -9` of the node that homes a room: the partner's socket on another node is closed with 1012 once the dead
/// node's heartbeat stops (3 s), its client reconnects, the room gets a new home, and the killed side's participant
/// rejoins through a third node: both get `ready` again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_home_node_hands_its_room_to_a_live_one() {
    let Some(mut c) = Cluster::start("a_killed_home_node_hands_its_room_to_a_live_one").await else { return };
    // The host arrives first, on node 1: node 1 is the room's home; the guest on node 2 is proxied there.
    let (booking, _, guest_join, host, mut guest) = paired_on_nodes_1_and_2(&c).await;

    c.nodes[0].as_mut().expect("node 1").kill9();
    c.nodes[0] = None;
    drop(host);
    let killed = Instant::now();
    let code = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match guest.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                other => panic!("the guest's socket ended without a close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("the guest's socket is closed within 15 s of its room's home dying");
    assert_eq!(code, Some(1012), "1012: reconnect");
    eprintln!("the guest was told to reconnect {:?} after the home node died", killed.elapsed());

    // The guest reconnects with its token (node 2 now homes the room); the host rejoins through node 3.
    let mut guest = welcomed(&guest_join, "guest").await;
    let host_join3 = join_ok(c.node(2), &booking, "host").await;
    let mut host = welcomed(&host_join3, "host").await;
    let (h, g) = (ready(&mut host, "host").await, ready(&mut guest, "guest").await);
    assert_eq!(h["session"], g["session"], "one room again: {h} {g}");
    let data = json!({"type": "signal", "session": h["session"], "data": {"candidate": {"candidate": "c9"}}});
    host.send(Message::text(data.to_string())).await.expect("send");
    let got = text(&mut guest, "a signal in the re-homed room").await;
    assert!(got.contains("\"c9\""), "{got}");
}
