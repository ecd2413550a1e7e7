//! End to end, as users meet Duet: a booking, two WebRTC peers (the `webrtc` crate) that negotiate through the
//! signaling hub and may only talk through Duet's own TURN relay; the join window and a cancellation as participants
//! see them; and the zero-config first start.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Daemon, metric, participant, rfc3339_in, turn_server};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
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

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
/// What happened on the signaling paths, for the failure message.
type Log = Arc<Mutex<Vec<String>>>;

/// Data channel round trips in the call test.
const ROUND_TRIPS: usize = 24;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_through_hub_and_relay() {
    let d = Daemon::start("");
    tokio::time::timeout(Duration::from_secs(90), call(&d)).await.expect("the call did not complete within 90 s");
}

async fn call(d: &Daemon) {
    let booking = d.booking_now(60, 1800).await;
    let booking_id = booking["id"].as_str().expect("booking id");
    let host_join = join_ok(d, &booking, "host").await;
    let guest_join = join_ok(d, &booking, "guest").await;
    let turn = turn_server(&host_join["ice_servers"]);
    let turn_url = format!("turn:{}?transport=udp", d.turn_udp);
    assert!(
        turn["urls"].as_array().is_some_and(|u| u.iter().any(|u| *u == turn_url)),
        "the join response does not point at Duet's TURN listener {turn_url}: {turn}"
    );

    let Call { host_pc, guest_pc, host_dc, guest_dc, host_types, guest_types, tasks, log } =
        connect(d, booking_id, &host_join, &guest_join).await;

    // The guest answers every message with its reverse; the host checks each answer and the guest what it got.
    let echo = tokio::spawn(async move {
        let mut received = Vec::new();
        while received.len() < ROUND_TRIPS {
            match guest_dc.poll().await {
                Some(DataChannelEvent::OnMessage(m)) => {
                    let text = String::from_utf8(m.data.to_vec()).expect("text message");
                    guest_dc.send_text(&answer_to(&text)).await.expect("guest sends");
                    received.push(text);
                }
                Some(_) => {}
                None => break,
            }
        }
        received
    });
    let mut sent = Vec::new();
    let mut payload_bytes = 0;
    for i in 0..ROUND_TRIPS {
        let text = format!("host->guest #{i} {}", "duet ".repeat(i * 40));
        host_dc.send_text(&text).await.expect("host sends");
        let reply = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match host_dc.poll().await {
                    Some(DataChannelEvent::OnMessage(m)) => {
                        break String::from_utf8(m.data.to_vec()).expect("text reply");
                    }
                    Some(_) => {}
                    None => panic!("the host's data channel closed during message {i}"),
                }
            }
        })
        .await;
        let Ok(reply) = reply else {
            panic!("no answer to message {i} within 10 s\n{}", diagnose(d, &log, tasks).await);
        };
        assert_eq!(reply, answer_to(&text), "answer to message {i}");
        payload_bytes += text.len() + reply.len();
        sent.push(text);
    }
    let received = echo.await.expect("guest echo task");
    assert_eq!(received, sent, "the guest received the host's messages in order, intact");

    // Only relay candidates were gathered, and the pair in use is relay to relay.
    for (name, types) in [("host", &host_types), ("guest", &guest_types)] {
        let types = types.lock().unwrap().clone();
        assert!(!types.is_empty(), "{name} gathered no candidate from Duet's TURN");
        assert!(
            types.iter().all(|t| *t == RTCIceCandidateType::Relay),
            "{name} gathered non-relay candidates despite policy relay: {types:?}"
        );
    }
    for (name, pc) in [("host", &host_pc), ("guest", &guest_pc)] {
        let (local, remote) = selected_pair_types(pc.as_ref()).await;
        assert_eq!(local, RTCIceCandidateType::Relay, "{name}'s selected local candidate");
        assert_eq!(remote, RTCIceCandidateType::Relay, "{name}'s selected remote candidate");
    }

    // Every message crossed Duet's relay twice (client -> relay -> peer relay -> client), so each direction counted at
    // least the payload bytes (DTLS and SCTP only add to them).
    let payload_bytes = payload_bytes as f64;
    let text = wait_for_metrics(d, |m| {
        metric(m, "duet_turn_relayed_bytes_total{direction=\"to_peer\"}").unwrap_or(0.0) >= payload_bytes
            && metric(m, "duet_turn_relayed_bytes_total{direction=\"to_client\"}").unwrap_or(0.0) >= payload_bytes
    })
    .await;
    for direction in ["to_peer", "to_client"] {
        let name = format!("duet_turn_relayed_bytes_total{{direction=\"{direction}\"}}");
        let relayed = metric(&text, &name).unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"));
        assert!(
            relayed >= payload_bytes,
            "{name} = {relayed}, below the {payload_bytes} payload bytes the data channel carried"
        );
    }
    let ok = metric(&text, "duet_turn_allocations_total{result=\"ok\"}").unwrap_or(0.0);
    assert!(ok >= 2.0, "duet_turn_allocations_total{{result=\"ok\"}} = {ok}, want >= 2 (one per peer)");

    for task in tasks {
        task.abort();
    }
    let _ = host_pc.close().await;
    let _ = guest_pc.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_outside_window_and_after_cancel() {
    let d = Daemon::start("");
    tokio::time::timeout(Duration::from_secs(60), outside_window_and_cancel(&d))
        .await
        .expect("the test did not complete within 60 s");
}

async fn outside_window_and_cancel(d: &Daemon) {
    // Two hours ahead: the guest may join 10 min before the start, the host 15 min before.
    let later = d.booking_now(7200, 1800).await;
    for (role, window_key, opens_in) in [("guest", "opens_at", 7200 - 600), ("host", "host_opens_at", 7200 - 900)] {
        let (status, headers, body) = d.join(link_token(&later, role)).await;
        assert_eq!(status, 403, "{role} joining 2 h early: {body}");
        assert_eq!(body["error"], "join_too_early", "{role}: {body}");
        let opens_at = rfc3339(&body["opens_at"]);
        assert_eq!(opens_at, rfc3339(&later["window"][window_key]), "{role}'s opens_at is the booking's {window_key}");
        let expected = rfc3339(&json!(rfc3339_in(opens_in)));
        assert!(
            (opens_at - expected).abs() <= time::Duration::seconds(5),
            "{role}'s opens_at {opens_at} is not {opens_in} s from now"
        );
        let retry_after: i64 = headers
            .get("retry-after")
            .unwrap_or_else(|| panic!("{role}: 403 join_too_early without a Retry-After header"))
            .to_str()
            .unwrap()
            .parse()
            .expect("Retry-After in seconds");
        assert!(
            (opens_in - 10..=opens_in).contains(&retry_after),
            "{role}: Retry-After {retry_after}, the window opens in {opens_in} s"
        );
        assert_eq!(body["retry_after"], retry_after, "{role}: body retry_after matches the header");
    }

    // A booking that is open now: both join, the host's TURN credentials allocate a relay.
    let booking = d.booking_now(60, 1800).await;
    let booking_id = booking["id"].as_str().expect("booking id");
    let host_join = join_ok(d, &booking, "host").await;
    let guest_join = join_ok(d, &booking, "guest").await;
    let turn = turn_server(&host_join["ice_servers"]);
    let username = turn["username"].as_str().expect("TURN username");
    let password = turn["credential"].as_str().expect("TURN credential");
    assert_eq!(
        username.split(':').nth(1),
        Some(booking_id),
        "TURN username is <expiry>:<booking>:<participant>: {username}"
    );

    let first = turn_client(d.turn_udp, username, password).await;
    let relay = match first.allocate().await {
        Ok(relay) => relay,
        Err(e) => panic!("Allocate with fresh credentials of an open booking failed: {e}"),
    };
    let text = wait_for_metrics(d, |m| active_allocations(m) == Some(1.0)).await;
    assert_eq!(active_allocations(&text), Some(1.0), "one allocation is active:\n{text}");

    // Both participants are in the room when the booking is cancelled.
    let mut host_ws = open_signal(&host_join).await;
    assert_eq!(next_json(&mut host_ws).await["type"], "welcome");
    let mut guest_ws = open_signal(&guest_join).await;
    assert_eq!(next_json(&mut guest_ws).await["type"], "welcome");

    let (status, cancelled) = common::cancel_booking(d, booking_id).await;
    assert_eq!(status, 200, "cancel: {cancelled}");
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["sequence"], 1, "cancel bumps the sequence: {cancelled}");

    for (role, ws) in [("host", &mut host_ws), ("guest", &mut guest_ws)] {
        let code = tokio::time::timeout(Duration::from_secs(10), close_code(ws))
            .await
            .unwrap_or_else(|_| panic!("the {role}'s signaling socket stayed open 10 s after the cancel"));
        assert_eq!(code, Some(4004), "the {role}'s socket closes with 4004 (booking cancelled)");
    }

    for role in ["host", "guest"] {
        let (status, _, body) = d.join(link_token(&booking, role)).await;
        assert_eq!(status, 410, "{role} joining a cancelled booking: {body}");
        assert_eq!(body["error"], "booking_cancelled", "{role}: {body}");
    }

    // The credentials handed out before the cancel are dead, and so is the relay allocated with them.
    let second = turn_client(d.turn_udp, username, password).await;
    match tokio::time::timeout(Duration::from_secs(20), second.allocate()).await {
        Err(_) => {
            panic!("Allocate with a cancelled booking's credentials got no answer within 20 s")
        }
        Ok(Ok(_)) => panic!("Allocate with a cancelled booking's credentials succeeded"),
        Ok(Err(e)) => {
            assert!(e.to_string().contains("401"), "Allocate with a cancelled booking's credentials: want 401, got {e}")
        }
    }
    let text = wait_for_metrics(d, |m| active_allocations(m) == Some(0.0)).await;
    assert_eq!(active_allocations(&text), Some(0.0), "the cancelled booking's allocation was torn down:\n{text}");

    drop(relay);
    let _ = first.close().await;
    let _ = second.close().await;
}

/// Issue 8: a booking extended during its call. Two relay-only `webrtc`-crate peers talk through the hub and the
/// relay; the booking (no overrun grace, so its hard end is its end) is extended by `PATCH` while they do. Both
/// sockets get the `window` `changed` frame, the call keeps flowing past the old hard end (the relay keeps the
/// allocations whose TURN usernames carry the old expiry), and at the new hard end the sockets close with 4003, the
/// allocations are freed and the data stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_call_runs_past_the_old_hard_end_and_stops_at_the_new_one() {
    let d = Daemon::start("");
    tokio::time::timeout(Duration::from_secs(120), extended_call(&d))
        .await
        .expect("the test did not complete within 120 s");
}

/// Seconds from the booking's creation to its first and its extended hard end.
const OLD_END_S: u64 = 16;
const NEW_END_S: u64 = 32;

async fn extended_call(d: &Daemon) {
    let t0 = Instant::now();
    let mut body = common::booking_body(2, OLD_END_S as i64 - 2);
    body["join_policy"] = json!({"overrun_grace_s": 0});
    let (status, booking) = d.create_booking(&body).await;
    assert_eq!(status, 201, "{booking}");
    assert_eq!(booking["window"]["hard_end_at"], booking["end_at"], "no overrun grace: {booking}");
    let booking_id = booking["id"].as_str().expect("booking id");
    let host_join = join_ok(d, &booking, "host").await;
    let guest_join = join_ok(d, &booking, "guest").await;
    let Call { host_pc, guest_pc, host_dc, guest_dc, tasks, log, .. } =
        connect(d, booking_id, &host_join, &guest_join).await;
    let echo = tokio::spawn(async move {
        while let Some(event) = guest_dc.poll().await {
            if let DataChannelEvent::OnMessage(m) = event {
                let text = String::from_utf8(m.data.to_vec()).expect("text message");
                if guest_dc.send_text(&answer_to(&text)).await.is_err() {
                    break;
                }
            }
        }
    });
    let exchange = |text: &'static str, wait: Duration| {
        let dc = host_dc.clone();
        async move {
            dc.send_text(text).await.ok()?;
            tokio::time::timeout(wait, async {
                loop {
                    match dc.poll().await {
                        Some(DataChannelEvent::OnMessage(m)) => break String::from_utf8(m.data.to_vec()).ok(),
                        Some(_) => {}
                        None => break None,
                    }
                }
            })
            .await
            .ok()
            .flatten()
        }
    };
    assert!(t0.elapsed() < Duration::from_secs(OLD_END_S - 4), "set-up took too long: {:?}", t0.elapsed());
    assert_eq!(exchange("before", Duration::from_secs(5)).await, Some(answer_to("before")));

    // Extend: If-Match the sequence of the create.
    let new_end = rfc3339_in(NEW_END_S as i64 - t0.elapsed().as_secs() as i64);
    let r = d
        .client()
        .patch(d.url(&format!("/v1/bookings/{booking_id}")))
        .bearer_auth(&d.api_key)
        .header("If-Match", "\"0\"")
        .json(&json!({"end_at": new_end}))
        .send()
        .await
        .expect("PATCH");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get("etag").and_then(|v| v.to_str().ok()), Some("\"1\""));
    let patched: Value = r.json().await.expect("JSON");
    assert_eq!((patched["id"].as_str(), patched["sequence"].as_i64()), (Some(booking_id), Some(1)), "{patched}");
    assert_eq!(rfc3339(&patched["window"]["hard_end_at"]), rfc3339(&json!(new_end)), "{patched}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let changed = |who: &str| {
        log.lock().unwrap().iter().any(|l| l.starts_with(&format!("{who}: got")) && l.contains("\"event\":\"changed\""))
    };
    while !(changed("host") && changed("guest")) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        changed("host") && changed("guest"),
        "both sockets get the window frame:\n{}",
        log.lock().unwrap().join("\n")
    );

    // Past the old hard end the call still flows through the relay.
    tokio::time::sleep(Duration::from_secs(OLD_END_S + 2).saturating_sub(t0.elapsed())).await;
    assert_eq!(
        exchange("after the old end", Duration::from_secs(5)).await,
        Some(answer_to("after the old end")),
        "the call stopped at the old hard end\n{}",
        diagnose(d, &log, Vec::new()).await
    );
    let text = fetch_metrics(d).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(active_allocations(&text), Some(2.0), "both allocations outlive the old hard end:\n{text}");
    assert!(tasks.iter().all(|t| !t.is_finished()), "a signaling socket ended at the old hard end");

    // At the new hard end: sockets closed with 4003, allocations freed, no more data.
    tokio::time::sleep(Duration::from_secs(NEW_END_S + 1).saturating_sub(t0.elapsed())).await;
    for task in tasks {
        let outcome = tokio::time::timeout(Duration::from_secs(5), task).await;
        let text = format!("{outcome:?}");
        assert!(text.contains("4003"), "a signaling socket was not closed with 4003 at the new hard end: {text}");
    }
    let text = wait_for_metrics(d, |m| active_allocations(m) == Some(0.0)).await;
    assert_eq!(active_allocations(&text), Some(0.0), "the allocations end at the new hard end:\n{text}");
    assert_eq!(exchange("after the new end", Duration::from_secs(3)).await, None, "data still flows after the new end");
    echo.abort();
    let _ = host_pc.close().await;
    let _ = guest_pc.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_without_config_keeps_private_state() {
    tokio::time::timeout(Duration::from_secs(60), first_start()).await.expect("the test did not complete within 60 s");
}

async fn first_start() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let args =
        ["serve", "--http-listen", "127.0.0.1:0", "--turn-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
    let d = common::start_with_args(&args, cwd.path());
    let data = cwd.path().join("duet-data");
    assert!(data.is_dir(), "no ./duet-data created in the working directory");
    assert_eq!(
        d.data_dir.canonicalize().unwrap(),
        data.canonicalize().unwrap(),
        "the api key file lives in ./duet-data"
    );

    // The api key and the generated secrets are readable by the owner only.
    let api_key_file = data.join("api-key");
    assert_eq!(mode(&api_key_file), 0o600, "duet-data/api-key");
    let listing = list_files(&data);
    let private: Vec<_> = listing.iter().filter(|(name, _)| !is_database_file(name)).collect();
    assert!(
        private.iter().any(|(name, _)| name != "api-key"),
        "no secrets file besides api-key in duet-data: {listing:?}"
    );
    for (name, file_mode) in &private {
        assert_eq!(*file_mode, 0o600, "duet-data/{name} is {file_mode:o} (files: {listing:?})");
    }

    // The key works, and only the key.
    let (status, body) = d.create_booking(&common::booking_body(60, 1800)).await;
    assert_eq!(status, 201, "create booking with the generated api key: {body}");
    let r = d
        .client()
        .post(d.url("/v1/bookings"))
        .bearer_auth("not-the-key")
        .json(&common::booking_body(60, 1800))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "a wrong api key is refused");
    let booking_id = body["id"].as_str().expect("booking id").to_string();
    let before = join_ok(&d, &body, "host").await;

    // A restart in the same directory keeps the key, the bookings and the TURN secret.
    let api_key = d.api_key.clone();
    drop(d);
    let d = common::start_with_args(&args, cwd.path());
    assert_eq!(d.api_key, api_key, "the api key survives a restart");
    let r = d.client().get(d.url(&format!("/v1/bookings/{booking_id}"))).bearer_auth(&d.api_key).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "the booking survives a restart");
    let after = join_ok(&d, &body, "host").await;
    let (was, is) = (turn_server(&before["ice_servers"]), turn_server(&after["ice_servers"]));
    assert_eq!(was["username"], is["username"], "same participant, same TURN username");
    assert_eq!(
        was["credential"], is["credential"],
        "the TURN secret survives a restart (same username, same credential)"
    );
}

/// Forwards a peer connection's events to the test: local candidates to signal, remote data channels.
struct Events {
    name: &'static str,
    candidates: mpsc::UnboundedSender<RTCIceCandidateInit>,
    candidate_types: Arc<Mutex<Vec<RTCIceCandidateType>>>,
    channels: mpsc::UnboundedSender<Arc<dyn DataChannel>>,
    log: Log,
}

/// The test's ends of [`Events`].
struct Side {
    candidates: mpsc::UnboundedReceiver<RTCIceCandidateInit>,
    candidate_types: Arc<Mutex<Vec<RTCIceCandidateType>>>,
    channels: mpsc::UnboundedReceiver<Arc<dyn DataChannel>>,
}

impl Events {
    fn new(name: &'static str, log: Log) -> (Events, Side) {
        let (candidates, candidates_rx) = mpsc::unbounded_channel();
        let (channels, channels_rx) = mpsc::unbounded_channel();
        let candidate_types = Arc::<Mutex<Vec<RTCIceCandidateType>>>::default();
        let events = Events { name, candidates, candidate_types: candidate_types.clone(), channels, log };
        let side = Side { candidates: candidates_rx, candidate_types, channels: channels_rx };
        (events, side)
    }
}

type Ready<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

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
struct Call {
    host_pc: Arc<dyn PeerConnection>,
    guest_pc: Arc<dyn PeerConnection>,
    host_dc: Arc<dyn DataChannel>,
    guest_dc: Arc<dyn DataChannel>,
    /// The types of the candidates each side gathered.
    host_types: Arc<Mutex<Vec<RTCIceCandidateType>>>,
    guest_types: Arc<Mutex<Vec<RTCIceCandidateType>>>,
    tasks: Vec<JoinHandle<Result<(), String>>>,
    log: Log,
}

/// Opens both signaling sockets (host first), checks `welcome` and `ready`, and negotiates the peers until the
/// host's data channel is open and handed to the guest.
async fn connect(d: &Daemon, booking_id: &str, host_join: &Value, guest_join: &Value) -> Call {
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
async fn relay_only_peer(ice_servers: &Value, events: Events) -> Arc<dyn PeerConnection> {
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
async fn signaling(
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
async fn diagnose(d: &Daemon, log: &Log, tasks: Vec<JoinHandle<Result<(), String>>>) -> String {
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
async fn selected_pair_types(pc: &dyn PeerConnection) -> (RTCIceCandidateType, RTCIceCandidateType) {
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

/// The guest's answer to a message: the text reversed, marked as coming back.
fn answer_to(text: &str) -> String {
    format!("guest->host {}", text.chars().rev().collect::<String>())
}

fn link_token<'a>(booking: &'a Value, role: &str) -> &'a str {
    participant(booking, role)["link_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no link_token for the {role}: {booking}"))
}

/// POST /v1/join for the participant with `role`; asserts 200 and the role, returns the body.
async fn join_ok(d: &Daemon, booking: &Value, role: &str) -> Value {
    let (status, _, body) = d.join(link_token(booking, role)).await;
    assert_eq!(status, 200, "{role} join: {body}");
    assert_eq!(body["role"], role, "{role} join: {body}");
    body
}

async fn open_signal(join: &Value) -> Ws {
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

fn check_welcome(welcome: &Value, booking_id: &str, role: &str) {
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
async fn next_json(ws: &mut Ws) -> Value {
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

/// Reads until the server closes the socket; the close code, if it sent a close frame.
async fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("the signaling socket failed instead of closing: {e}"),
            None => return None,
        }
    }
}

/// A TURN client of the `turn` crate on a fresh local UDP socket, listening, not yet allocated.
async fn turn_client(turn: SocketAddr, username: &str, password: &str) -> turn::client::Client {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind UDP");
    common::turn_crate_client(turn, socket, username, password, "duet").await
}

fn active_allocations(metrics: &str) -> Option<f64> {
    metric(metrics, "duet_turn_allocations_active{transport=\"udp\"}")
}

/// The metrics text once `done` holds for it, or after 5 s (the caller asserts).
async fn wait_for_metrics(d: &Daemon, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = fetch_metrics(d).await.unwrap_or_else(|e| panic!("{e}"));
        if done(&text) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// GET /metrics. A refused connection means the daemon is gone (it exited, or something outside the test stopped it),
/// which is worth saying plainly.
async fn fetch_metrics(d: &Daemon) -> Result<String, String> {
    let url = format!("http://{}/metrics", d.admin);
    let r = reqwest::get(&url).await.map_err(|e| format!("GET {url}: the daemon is not running any more? {e}"))?;
    r.text().await.map_err(|e| format!("GET {url}: {e}"))
}

fn rfc3339(v: &Value) -> OffsetDateTime {
    let s = v.as_str().unwrap_or_else(|| panic!("not an RFC 3339 string: {v}"));
    OffsetDateTime::parse(s, &Rfc3339).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

/// Regular files of `dir` with their permission bits.
fn list_files(dir: &Path) -> Vec<(String, u32)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), mode(&e.path())))
        .collect();
    files.sort();
    files
}

/// SQLite's database, WAL, shared-memory and journal files: not secrets.
fn is_database_file(name: &str) -> bool {
    [".db", ".sqlite", "-wal", "-shm", "-journal"].iter().any(|s| name.contains(s))
}
