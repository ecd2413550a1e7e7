//! End to end, as users meet Duet: a booking, two WebRTC peers (the `webrtc` crate) that negotiate through the
//! signaling hub and may only talk through Duet's own TURN relay; the join window and a cancellation as participants
//! see them; and the zero-config first start.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::webrtc_call::{
    Call, Ws, connect, diagnose, fetch_metrics, join_ok, link_token, next_json, open_signal, selected_pair_types,
};
use common::{Daemon, metric, rfc3339_in, turn_server};
use futures_util::StreamExt;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_tungstenite::tungstenite::Message;
use webrtc::data_channel::DataChannelEvent;
use webrtc::peer_connection::RTCIceCandidateType;

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

/// The guest's answer to a message: the text reversed, marked as coming back.
fn answer_to(text: &str) -> String {
    format!("guest->host {}", text.chars().rev().collect::<String>())
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
