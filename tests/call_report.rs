//! Call reports and meeting events from real connections (issue 9), on SQLite and on PostgreSQL: a call of two
//! relay-only `webrtc`-crate peers through the hub and Duet's relay produces `meeting.started`, `participant.joined`
//! ×2, `participant.left` ×2 and `meeting.ended` (scheduled and actual times, relayed bytes, `relayed`/`udp`) at a
//! webhook receiver, and `GET /v1/bookings/{id}/report` lists both participants with their bytes; a guest who never
//! joins gets `participant.no_show` once after the cutoff; the join page's summary is validated, stored and shown.

mod common;

use std::time::Duration;

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use webrtc::data_channel::DataChannelEvent;

use common::webhook_receiver::{Hit, Receiver};
use common::webrtc_call::{connect, diagnose, join_ok, link_token, next_json, open_signal};
use common::{Backend, Daemon};

crate::on_both_backends!(
    a_relayed_call_is_reported_and_sent_as_events,
    a_guest_who_never_joins_is_a_no_show_once,
    browser_summaries_are_validated_stored_and_shown,
    no_shows_are_decided_after_a_restart_and_sent_once,
);

/// A receiver on 127.0.0.1 may be an endpoint; a meeting both participants left ends after 1 s; timers every 200 ms.
const CONFIG: &str = "[webhooks]\nallow_private = [\"127.0.0.0/8\"]\nretry_schedule = [\"1s\", \"1s\", \"1s\"]\n\
                      [calls]\nend_grace = \"1s\"\nsweep_interval = \"200ms\"\n";

/// Data channel messages each way in the call (1000 bytes each: well over the 32 KiB that makes a participant
/// `relayed`).
const MESSAGES: usize = 80;

/// One API request with `key`; (status, body).
async fn call(d: &Daemon, key: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut r = d.client().request(method.parse().unwrap(), d.url(path)).bearer_auth(key);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// An endpoint for every event at the receiver.
async fn subscribe(d: &Daemon, rx: &Receiver) {
    let (status, body) =
        call(d, &d.api_key, "POST", "/v1/webhook-endpoints", Some(json!({"url": rx.url("/hooks")}))).await;
    assert_eq!(status, 201, "create endpoint: {body}");
}

/// The events of `booking` the receiver got, as (type, data), in arrival order.
fn events_of(hits: &[Hit], booking: &str) -> Vec<(String, Value)> {
    hits.iter()
        .map(Hit::json)
        .filter(|e| e["data"]["booking_id"] == booking)
        .map(|e| (e["type"].as_str().unwrap_or_default().to_string(), e["data"].clone()))
        .collect()
}

fn count(events: &[(String, Value)], ty: &str) -> usize {
    events.iter().filter(|(t, _)| t == ty).count()
}

fn instant(v: &Value) -> OffsetDateTime {
    let s = v.as_str().unwrap_or_else(|| panic!("not an RFC 3339 string: {v}"));
    OffsetDateTime::parse(s, &Rfc3339).unwrap_or_else(|e| panic!("{s}: {e}"))
}

async fn report(d: &Daemon, key: &str, booking: &str) -> (u16, Value) {
    call(d, key, "GET", &format!("/v1/bookings/{booking}/report"), None).await
}

async fn a_relayed_call_is_reported_and_sent_as_events(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, CONFIG) else { return };
    let rx = Receiver::start().await;
    subscribe(&d, &rx).await;
    let booking = d.booking_now(60, 1800).await;
    let id = booking["id"].as_str().unwrap().to_string();
    let host_join = join_ok(&d, &booking, "host").await;
    let guest_join = join_ok(&d, &booking, "guest").await;

    let call_done = tokio::time::timeout(Duration::from_secs(90), async {
        let c = connect(&d, &id, &host_join, &guest_join).await;
        // The guest echoes every message; the host waits for every answer, so the relay carried both directions.
        let guest_dc = c.guest_dc.clone();
        let echo = tokio::spawn(async move {
            let mut n = 0;
            while n < MESSAGES {
                match guest_dc.poll().await {
                    Some(DataChannelEvent::OnMessage(m)) => {
                        guest_dc.send(m.data).await.expect("guest sends");
                        n += 1;
                    }
                    Some(_) => {}
                    None => break,
                }
            }
        });
        let payload = "d".repeat(1000);
        let mut answered = 0;
        for _ in 0..MESSAGES {
            c.host_dc.send_text(&payload).await.expect("host sends");
        }
        while answered < MESSAGES {
            match tokio::time::timeout(Duration::from_secs(20), c.host_dc.poll()).await {
                Ok(Some(DataChannelEvent::OnMessage(m))) => {
                    assert_eq!(m.data.len(), 1000);
                    answered += 1;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    panic!("{answered} of {MESSAGES} answers came\n{}", diagnose(&d, &c.log, c.tasks).await)
                }
            }
        }
        echo.await.unwrap();
        // Hang up: both peer connections close, both signaling sockets go away.
        c.host_pc.close().await.expect("host closes");
        c.guest_pc.close().await.expect("guest closes");
        for t in &c.tasks {
            t.abort();
        }
    })
    .await;
    call_done.expect("the call did not complete within 90 s");

    let hits = rx
        .wait_for(Duration::from_secs(30), "every meeting and participant event", |h| {
            let e = events_of(h, &id);
            count(&e, "meeting.started") >= 1
                && count(&e, "participant.joined") >= 2
                && count(&e, "participant.left") >= 2
                && count(&e, "meeting.ended") >= 1
        })
        .await;
    // Nothing more comes (each event is sent once).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let hits = if rx.hits().len() > hits.len() { rx.hits() } else { hits };
    let events = events_of(&hits, &id);
    let types: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(count(&events, "meeting.started"), 1, "{types:?}");
    assert_eq!(count(&events, "participant.joined"), 2, "{types:?}");
    assert_eq!(count(&events, "participant.left"), 2, "{types:?}");
    assert_eq!(count(&events, "meeting.ended"), 1, "{types:?}");
    // Deliveries may be retried and reordered, but the started event was decided before any leave.
    let (_, started) = events.iter().find(|(t, _)| t == "meeting.started").unwrap();
    let (_, ended) = events.iter().find(|(t, _)| t == "meeting.ended").unwrap();
    for data in [started, ended] {
        assert_eq!(data["start_at"], booking["start_at"], "scheduled start: {data}");
        assert_eq!(data["end_at"], booking["end_at"], "scheduled end: {data}");
    }
    assert_eq!(started["started_at"], ended["started_at"], "{ended}");
    let (actual_start, actual_end) = (instant(&ended["started_at"]), instant(&ended["ended_at"]));
    assert!(actual_end >= actual_start, "{ended}");
    // The call ran before its scheduled start (the host opens early): the actual times are the connections'.
    assert!(actual_start < instant(&booking["start_at"]), "{ended}");
    assert_eq!(ended["duration_s"], (actual_end - actual_start).whole_seconds(), "{ended}");
    assert_eq!(ended["end_reason"], "all_left", "{ended}");
    let parts = ended["participants"].as_array().expect("participants");
    assert_eq!(parts.len(), 2, "{ended}");
    for p in parts {
        assert_eq!(p["transport"], "relayed", "{p}");
        assert_eq!(p["relay_transport"], "udp", "{p}");
        assert_eq!(p["joins"], 1, "{p}");
        for dir in ["relayed_bytes_to_peer", "relayed_bytes_to_client"] {
            let n = p[dir].as_i64().unwrap_or(0);
            assert!(n >= (MESSAGES * 1000) as i64, "{dir} of {p}");
        }
    }
    for (_, left) in events.iter().filter(|(t, _)| t == "participant.left") {
        assert_eq!(left["reason"], "closed", "{left}");
    }
    let roles: Vec<&str> =
        events.iter().filter(|(t, _)| t == "participant.joined").map(|(_, d)| d["role"].as_str().unwrap()).collect();
    assert!(roles.contains(&"host") && roles.contains(&"guest"), "{roles:?}");

    let (status, r) = report(&d, &d.api_key, &id).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["started_at"], ended["started_at"], "{r}");
    assert_eq!(r["ended_at"], ended["ended_at"], "{r}");
    assert_eq!(r["end_reason"], "all_left");
    assert_eq!(r["sessions"], 1);
    let parts = r["participants"].as_array().expect("participants");
    assert_eq!(parts.iter().map(|p| p["role"].as_str().unwrap()).collect::<Vec<_>>(), ["host", "guest"], "{r}");
    for p in parts {
        assert_eq!(p["joined"], true, "{p}");
        assert_eq!(p["no_show"], false, "{p}");
        assert_eq!(p["connected_now"], false, "{p}");
        assert_eq!(p["joins"].as_array().map(Vec::len), Some(1), "{p}");
        assert_eq!(p["leaves"][0]["reason"], "closed", "{p}");
        assert_eq!(p["reconnects"], 0, "{p}");
        assert_eq!(p["transport"], "relayed", "{p}");
        assert_eq!(p["relay_transport"], "udp", "{p}");
        assert!(p["relay_allocations"].as_i64().unwrap_or(0) >= 1, "{p}");
        assert!(p["relayed_bytes_to_peer"].as_i64().unwrap_or(0) >= (MESSAGES * 1000) as i64, "{p}");
        assert!(p["relayed_bytes_to_client"].as_i64().unwrap_or(0) >= (MESSAGES * 1000) as i64, "{p}");
        assert!(p["browser_summary"].is_null(), "{p}");
    }
    // The metrics saw the facts, none dropped.
    let m = d.metrics().await;
    assert!(common::metric(&m, "duet_call_facts_total{result=\"queued\",source=\"signaling\"}").unwrap_or(0.0) >= 5.0);
    assert!(common::metric(&m, "duet_call_facts_total{result=\"queued\",source=\"relay\"}").unwrap_or(0.0) >= 2.0);
    assert_eq!(common::metric(&m, "duet_call_events_total{type=\"meeting.ended\"}"), Some(1.0));
    assert_eq!(common::metric(&m, "duet_call_fact_errors_total"), Some(0.0));
}

async fn a_guest_who_never_joins_is_a_no_show_once(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, CONFIG) else { return };
    let rx = Receiver::start().await;
    subscribe(&d, &rx).await;
    // Ends (and so closes to first joins) 4 s from now.
    let booking = d.booking_now(2, 2).await;
    let id = booking["id"].as_str().unwrap().to_string();
    let host_join = join_ok(&d, &booking, "host").await;
    let mut host_ws = open_signal(&host_join).await;
    assert_eq!(next_json(&mut host_ws).await["type"], "welcome");
    let guest = common::participant(&booking, "guest")["id"].as_str().unwrap().to_string();

    let hits = rx
        .wait_for(Duration::from_secs(20), "participant.no_show", |h| {
            events_of(h, &id).iter().any(|(t, _)| t == "participant.no_show")
        })
        .await;
    // Several sweeps later there is still one, for the guest only.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let events = events_of(&rx.hits(), &id);
    let no_shows: Vec<&Value> = events.iter().filter(|(t, _)| t == "participant.no_show").map(|(_, d)| d).collect();
    assert_eq!(no_shows.len(), 1, "{events:?}");
    assert_eq!(no_shows[0]["participant_id"], guest.as_str(), "{}", no_shows[0]);
    assert_eq!(no_shows[0]["role"], "guest");
    assert_eq!(no_shows[0]["join_cutoff_at"], booking["window"]["join_cutoff_at"], "{}", no_shows[0]);
    assert!(events_of(&hits, &id).iter().any(|(t, d)| t == "participant.joined" && d["role"] == "host"));
    // Only the host joined: no meeting started, none ended.
    assert_eq!(count(&events, "meeting.started"), 0, "{events:?}");

    let (status, r) = report(&d, &d.api_key, &id).await;
    assert_eq!(status, 200, "{r}");
    let (host, guest_report) = (&r["participants"][0], &r["participants"][1]);
    assert_eq!((host["joined"].clone(), host["no_show"].clone()), (json!(true), json!(false)), "{r}");
    assert_eq!((guest_report["joined"].clone(), guest_report["no_show"].clone()), (json!(false), json!(true)), "{r}");
    assert_eq!(guest_report["transport"], "direct", "{r}");
    assert!(r["started_at"].is_null(), "{r}");
    drop(host_ws);
}

async fn no_shows_are_decided_after_a_restart_and_sent_once(backend: Backend) {
    let Some(mut d) = Daemon::start_on(backend, CONFIG) else { return };
    let rx = Receiver::start().await;
    subscribe(&d, &rx).await;
    let booking = d.booking_now(2, 1).await;
    let id = booking["id"].as_str().unwrap().to_string();
    // The daemon is down when the cutoff (3 s from now) passes.
    d.kill9();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let d = d.restart();
    rx.wait_for(Duration::from_secs(20), "two participant.no_show", |h| {
        count(&events_of(h, &id), "participant.no_show") >= 2
    })
    .await;
    // Another restart decides nothing again: still one event per participant (by webhook-id, as receivers dedupe).
    let d = d.restart();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let ids: std::collections::BTreeSet<String> = rx
        .hits()
        .iter()
        .filter(|h| h.json()["type"] == "participant.no_show" && h.json()["data"]["booking_id"] == id.as_str())
        .map(|h| h.header("webhook-id").to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    let roles: std::collections::BTreeSet<String> = events_of(&rx.hits(), &id)
        .iter()
        .filter(|(t, _)| t == "participant.no_show")
        .map(|(_, d)| d["role"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(roles, ["guest".to_string(), "host".to_string()].into(), "both never joined");
    let (_, r) = report(&d, &d.api_key, &id).await;
    assert!(r["participants"].as_array().unwrap().iter().all(|p| p["no_show"] == true), "{r}");
}

/// A summary as the join page sends it.
fn summary() -> Value {
    json!({
        "candidate_pair": {"local_type": "relay", "remote_type": "srflx", "protocol": "udp", "relay_protocol": "udp"},
        "round_trip_time_ms": 41.5,
        "packet_loss": 0.012,
        "inbound_bitrate_bps": 850000,
        "outbound_bitrate_bps": 910000,
        "user_agent_family": "firefox"
    })
}

async fn post_summary(d: &Daemon, link: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let r = d
        .client()
        .post(d.url(&format!("/v1/join/{link}/report")))
        .header("content-type", "text/plain;charset=UTF-8")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn browser_summaries_are_validated_stored_and_shown(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, CONFIG) else { return };
    let booking = d.booking_now(60, 1800).await;
    let id = booking["id"].as_str().unwrap().to_string();
    let guest_link = link_token(&booking, "guest").to_string();

    // Bad bodies: each refused with its status and code, nothing stored.
    let too_big = format!("{{\"user_agent_family\": \"chrome\", \"pad\": \"{}\"}}", "x".repeat(5000));
    let cases: Vec<(String, u16, &str, Option<&str>)> = vec![
        ("not json".into(), 400, "invalid_request", None),
        (json!({"user_agent_family": "chrome", "ua": "Mozilla/5.0"}).to_string(), 400, "invalid_request", Some("ua")),
        (json!({"user_agent_family": "netscape"}).to_string(), 400, "invalid_request", None),
        (json!({"round_trip_time_ms": "fast"}).to_string(), 400, "invalid_request", None),
        (json!({"packet_loss": 2.0}).to_string(), 422, "invalid_field", Some("packet_loss")),
        (json!({"round_trip_time_ms": -1}).to_string(), 422, "invalid_field", Some("round_trip_time_ms")),
        (
            json!({"candidate_pair": {"local_type": "host", "remote_type": "host", "protocol": "udp", "relay_protocol": "tls"}})
                .to_string(),
            422,
            "invalid_field",
            Some("candidate_pair.relay_protocol"),
        ),
        (json!({"candidate_pair": {"local_type": "host"}}).to_string(), 422, "missing_field", Some("remote_type")),
        ("{}".into(), 422, "invalid_summary", None),
        (too_big, 413, "payload_too_large", None),
    ];
    for (body, status, code, field) in cases {
        let shown: String = body.chars().take(80).collect();
        let (got, answer) = post_summary(&d, &guest_link, body).await;
        assert_eq!(got, status, "{shown}: {answer}");
        assert_eq!(answer["error"], code, "{shown}: {answer}");
        if let Some(f) = field {
            assert_eq!(answer["field"], f, "{shown}: {answer}");
        }
    }
    let (status, answer) = post_summary(&d, "not-a-link", summary().to_string()).await;
    assert_eq!((status, answer["error"].as_str()), (404, Some("link_invalid_or_revoked")), "{answer}");
    let (status, r) = report(&d, &d.api_key, &id).await;
    assert_eq!(status, 200, "{r}");
    assert!(r["participants"][1]["browser_summary"].is_null(), "a refused summary was stored: {r}");

    // A good one (sent as a beacon sends a string: text/plain) is stored and shown for that participant only; a
    // second one replaces it.
    let (status, answer) = post_summary(&d, &guest_link, summary().to_string()).await;
    assert_eq!(status, 204, "{answer}");
    let (_, r) = report(&d, &d.api_key, &id).await;
    assert_eq!(r["participants"][1]["browser_summary"], summary(), "{r}");
    assert!(r["participants"][1]["browser_summary_received_at"].is_string(), "{r}");
    assert!(r["participants"][0]["browser_summary"].is_null(), "{r}");
    let second = json!({"round_trip_time_ms": 12, "user_agent_family": "chrome"});
    assert_eq!(post_summary(&d, &guest_link, second.to_string()).await.0, 204);
    let (_, r) = report(&d, &d.api_key, &id).await;
    assert_eq!(
        r["participants"][1]["browser_summary"],
        json!({"round_trip_time_ms": 12.0, "user_agent_family": "chrome"})
    );

    // Before the participant's window opens: 403.
    let later = d.booking_now(86_400, 1800).await;
    let (status, answer) = post_summary(&d, link_token(&later, "guest"), summary().to_string()).await;
    assert_eq!((status, answer["error"].as_str()), (403, Some("join_too_early")), "{answer}");

    // The report needs a key with bookings:read of the booking's tenant.
    let r = d.client().get(d.url(&format!("/v1/bookings/{id}/report"))).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let (status, tenant) =
        call(&d, &d.api_key, "POST", "/v1/admin/tenants", Some(json!({"name": "Other clinic"}))).await;
    assert_eq!(status, 201, "{tenant}");
    let (status, key) = call(
        &d,
        &d.api_key,
        "POST",
        "/v1/admin/api-keys",
        Some(json!({"tenant_id": tenant["id"], "scopes": ["bookings:read"]})),
    )
    .await;
    assert_eq!(status, 201, "{key}");
    let (status, answer) = report(&d, key["key"].as_str().unwrap(), &id).await;
    assert_eq!((status, answer["error"].as_str()), (404, Some("not_found")), "{answer}");
    let (status, _) = report(&d, &d.api_key, "bkg_nope").await;
    assert_eq!(status, 404);
}
