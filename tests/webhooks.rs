//! Webhooks (issue 9), on SQLite and on PostgreSQL, against a receiver started by the test on 127.0.0.1: booking
//! events signed per Standard Webhooks and verified by the `standardwebhooks` PyPI package, retries until a 2xx, no
//! redirects followed, the SSRF guard, secret rotation with two signatures, `kill -9` during a burst of creates (every
//! event delivered after the restart), the delivery log, redeliver, and tenant isolation.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};

use common::process::{find_tool, run_bounded_blocking, skip_or_fail, tail};
use common::webhook_receiver::{Hit, Receiver};
use common::{Backend, Daemon, booking_body, metric};

crate::on_both_backends!(
    booking_events_are_signed_and_verify,
    a_failing_receiver_gets_the_event_on_the_fourth_try,
    redirects_are_not_followed,
    private_addresses_need_the_allow_list,
    rotation_signs_with_both_secrets,
    kill9_during_a_burst_loses_no_event,
    endpoints_are_per_tenant,
);

/// Lets a receiver on 127.0.0.1 be an endpoint (and over http), with retries 1 s apart.
const ALLOW_LOOPBACK: &str =
    "[webhooks]\nallow_private = [\"127.0.0.0/8\"]\nretry_schedule = [\"1s\", \"1s\", \"1s\"]\n";

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

/// Creates an endpoint for `url` with the daemon's key; its JSON (with `secret`).
async fn endpoint(d: &Daemon, url: &str, extra: Value) -> Value {
    let mut req = json!({"url": url, "description": "test receiver"});
    for (k, v) in extra.as_object().unwrap() {
        req[k] = v.clone();
    }
    let (status, body) = call(d, &d.api_key, "POST", "/v1/webhook-endpoints", Some(req)).await;
    assert_eq!(status, 201, "create endpoint: {body}");
    assert!(body["secret"].as_str().is_some_and(|s| s.starts_with("whsec_")), "{body}");
    body
}

/// Verifies every hit with the `standardwebhooks` package (PyPI, pinned in `.ci/run`) under each of `secrets`:
/// each hit must verify under every secret, and the parsed body must equal ours. False when Python or the package
/// is missing (then SKIPPED, or a failure under CI).
async fn verify_with_python(test: &str, hits: &[Hit], secrets: &[&str]) -> bool {
    let Some(python) = find_tool("python3") else {
        skip_or_fail(test, "python3 not found");
        return false;
    };
    let probe = Command::new(&python).args(["-c", "import standardwebhooks"]).output().unwrap();
    if !probe.status.success() {
        skip_or_fail(test, "the standardwebhooks package is missing: python3 -m pip install 'standardwebhooks==1.3.0'");
        return false;
    }
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<Value> = hits
        .iter()
        .map(|h| {
            json!({"headers": {"webhook-id": h.header("webhook-id"), "webhook-timestamp": h.header("webhook-timestamp"),
                   "webhook-signature": h.header("webhook-signature")}, "body": h.body})
        })
        .collect();
    let input = dir.path().join("cases.json");
    std::fs::write(&input, json!({"secrets": secrets, "cases": cases}).to_string()).unwrap();
    let script = r#"
import json, sys
from standardwebhooks import Webhook
spec = json.load(open(sys.argv[1]))
n = 0
for secret in spec["secrets"]:
    wh = Webhook(secret)
    for case in spec["cases"]:
        parsed = wh.verify(case["body"].encode(), case["headers"])
        assert parsed == json.loads(case["body"]), "parsed body differs"
        n += 1
print("verified", n)
"#;
    let mut cmd = Command::new(python);
    cmd.args(["-c", script]).arg(&input);
    let run = run_bounded_blocking(cmd, Duration::from_secs(60), "python standardwebhooks").await;
    assert!(
        run.status.success(),
        "standardwebhooks refused a delivery:\n{}\n{}",
        tail(&run.stdout, 20),
        tail(&run.stderr, 20)
    );
    assert_eq!(run.stdout.trim(), format!("verified {}", hits.len() * secrets.len()));
    true
}

/// The delivery log of endpoint `id`.
async fn deliveries(d: &Daemon, id: &str) -> Vec<Value> {
    let (status, body) =
        call(d, &d.api_key, "GET", &format!("/v1/webhook-endpoints/{id}/deliveries?limit=100"), None).await;
    assert_eq!(status, 200, "{body}");
    body["deliveries"].as_array().unwrap().clone()
}

/// booking.created, booking.confirmed, booking.rejected and booking.cancelled reach the receiver in Standard Webhooks
/// form (headers, payload with the booking view), verify with the independent Python implementation, and are not
/// sent for event types the endpoint did not ask for.
async fn booking_events_are_signed_and_verify(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, ALLOW_LOOPBACK) else { return };
    let rx = Receiver::start().await;
    let all = endpoint(&d, &rx.url("/all"), json!({})).await;
    endpoint(&d, &rx.url("/cancel-only"), json!({"event_types": ["booking.cancelled"]})).await;
    assert!(all.get("secret").is_some());
    let (status, got) =
        call(&d, &d.api_key, "GET", &format!("/v1/webhook-endpoints/{}", all["id"].as_str().unwrap()), None).await;
    assert_eq!(status, 200);
    assert!(got.get("secret").is_none(), "the secret is shown once: {got}");
    assert_eq!(got["event_types"], Value::Null);

    let confirmed = d.booking_now(3600, 1800).await;
    let mut pending_body = booking_body(7200, 1800);
    pending_body["status"] = json!("pending");
    let (_, pending) = d.create_booking(&pending_body).await;
    let mut rejected_body = booking_body(9000, 1800);
    rejected_body["status"] = json!("pending");
    let (_, to_reject) = d.create_booking(&rejected_body).await;
    let id = |b: &Value| b["id"].as_str().unwrap().to_string();
    assert_eq!(call(&d, &d.api_key, "POST", &format!("/v1/bookings/{}/confirm", id(&pending)), None).await.0, 200);
    assert_eq!(call(&d, &d.api_key, "POST", &format!("/v1/bookings/{}/reject", id(&to_reject)), None).await.0, 200);
    // A reschedule sends booking.rescheduled with the previous times; a title-only PATCH sends nothing.
    let patch = |body: Value| {
        let (d, url) = (&d, d.url(&format!("/v1/bookings/{}", id(&pending))));
        async move {
            let r = d.client().patch(url).bearer_auth(&d.api_key).header("If-Match", "*").json(&body).send().await;
            r.unwrap().status().as_u16()
        }
    };
    assert_eq!(patch(json!({"end_at": common::rfc3339_in(7200 + 2400)})).await, 200);
    assert_eq!(patch(json!({"title": "Renamed"})).await, 200);
    // A create refused by the no-double-booking rule is rolled back with its event: nothing is sent for it.
    let mut clash = booking_body(3600, 1800);
    clash["participants"][0]["ref"] = confirmed["participants"][0]["ref"].clone();
    assert_eq!(d.create_booking(&clash).await.0, 409);
    assert_eq!(common::cancel_booking(&d, &id(&confirmed)).await.0, 200);
    // A repeated cancel changes nothing and sends nothing.
    assert_eq!(common::cancel_booking(&d, &id(&confirmed)).await.0, 200);

    let hits = rx
        .wait_for(Duration::from_secs(20), "eight events", |h| {
            h.iter().filter(|h| h.path == "/all").count() >= 7 && h.iter().any(|h| h.path == "/cancel-only")
        })
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let hits_all: Vec<Hit> = rx.hits().into_iter().filter(|h| h.path == "/all").collect();
    let events: BTreeSet<(String, String)> = hits_all
        .iter()
        .map(|h| (h.json()["type"].as_str().unwrap().to_string(), h.json()["data"]["id"].as_str().unwrap().to_string()))
        .collect();
    let want: BTreeSet<(String, String)> = [
        ("booking.created", id(&confirmed)),
        ("booking.created", id(&pending)),
        ("booking.created", id(&to_reject)),
        ("booking.confirmed", id(&pending)),
        ("booking.rescheduled", id(&pending)),
        ("booking.rejected", id(&to_reject)),
        ("booking.cancelled", id(&confirmed)),
    ]
    .into_iter()
    .map(|(t, b)| (t.to_string(), b))
    .collect();
    assert_eq!(events, want);
    assert_eq!(hits_all.len(), 7, "one request per event: {hits_all:#?}");
    let moved = hits_all.iter().find(|h| h.json()["type"] == "booking.rescheduled").unwrap().json();
    assert_eq!((&moved["data"]["reason"], &moved["data"]["sequence"]), (&json!("extended"), &json!(2)), "{moved}");
    assert_eq!(moved["data"]["previous"]["end_at"], pending["end_at"], "{moved}");
    assert_ne!(moved["data"]["end_at"], pending["end_at"], "{moved}");
    let cancel_only: Vec<&Hit> = hits.iter().filter(|h| h.path == "/cancel-only").collect();
    assert_eq!(cancel_only.len(), 1);
    assert_eq!(cancel_only[0].json()["type"], "booking.cancelled");
    // One webhook-id per event, shared by the endpoints that got it.
    let cancel_all = hits_all.iter().find(|h| h.json()["type"] == "booking.cancelled").unwrap();
    assert_eq!(cancel_only[0].header("webhook-id"), cancel_all.header("webhook-id"));

    for h in &hits_all {
        assert!(h.header("webhook-id").starts_with("msg_"), "{h:?}");
        assert_eq!(h.header("content-type"), "application/json");
        let ts: i64 = h.header("webhook-timestamp").parse().unwrap();
        assert!((ts - time::OffsetDateTime::now_utc().unix_timestamp()).abs() < 60);
        assert_eq!(h.header("webhook-signature").split(' ').count(), 1, "one secret, one signature");
        let body = h.json();
        assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(body["data"]["participants"].as_array().unwrap().iter().all(|p| p.get("link_token").is_none()));
    }
    let cancelled = cancel_all.json();
    assert_eq!(cancelled["data"]["status"], "cancelled");
    assert_eq!(
        hits_all.iter().find(|h| h.json()["type"] == "booking.confirmed").unwrap().json()["data"]["status"],
        "confirmed"
    );

    verify_with_python("booking_events_are_signed_and_verify", &hits_all, &[all["secret"].as_str().unwrap()]).await;
    let log = deliveries(&d, all["id"].as_str().unwrap()).await;
    assert_eq!(log.len(), 7);
    for entry in &log {
        assert_eq!(entry["status"], "delivered", "{entry}");
        assert_eq!(entry["attempt_log"][0]["status_code"], 204);
    }
}

/// A receiver that answers 500 three times gets the event on the fourth attempt (retry schedule 1 s in the test
/// config); the delivery log shows the four attempts; redeliver sends it again with the same `webhook-id`; the
/// metrics count the retries and the success.
async fn a_failing_receiver_gets_the_event_on_the_fourth_try(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, ALLOW_LOOPBACK) else { return };
    let rx = Receiver::start().await;
    rx.fail_first.store(3, Ordering::SeqCst);
    let ep = endpoint(&d, &rx.url("/flaky"), json!({})).await;
    let b = d.booking_now(3600, 1800).await;
    let hits = rx.wait_for(Duration::from_secs(30), "four attempts", |h| h.len() >= 4).await;
    let ids: BTreeSet<&str> = hits.iter().map(|h| h.header("webhook-id")).collect();
    assert_eq!(ids.len(), 1, "every attempt carries the same webhook-id");
    assert!(hits.iter().all(|h| h.json()["data"]["id"] == b["id"]));
    // Retries are at least about a second apart (schedule 1 s ± 10 %).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.hits().len(), 4, "delivered on the fourth attempt, then nothing more");

    let log = deliveries(&d, ep["id"].as_str().unwrap()).await;
    assert_eq!(log.len(), 1);
    let entry = &log[0];
    assert_eq!(entry["status"], "delivered");
    assert_eq!(entry["attempts"], 4);
    let codes: Vec<i64> =
        entry["attempt_log"].as_array().unwrap().iter().map(|a| a["status_code"].as_i64().unwrap()).collect();
    assert_eq!(codes, [500, 500, 500, 204]);
    let numbers: Vec<i64> =
        entry["attempt_log"].as_array().unwrap().iter().map(|a| a["attempt"].as_i64().unwrap()).collect();
    assert_eq!(numbers, [1, 2, 3, 4]);
    assert_eq!(entry["attempt_log"][0]["error"], "HTTP 500");
    assert!(entry["attempt_log"][3]["error"].is_null());
    assert!(entry["attempt_log"].as_array().unwrap().iter().all(|a| a["duration_ms"].as_i64().unwrap() >= 0));

    let m = d.metrics().await;
    assert_eq!(metric(&m, "duet_webhook_deliveries_total{result=\"retry\"}"), Some(3.0), "{m}");
    assert_eq!(metric(&m, "duet_webhook_deliveries_total{result=\"success\"}"), Some(1.0));

    // Redeliver: the same webhook-id and body again, a fifth attempt in the log.
    let (status, again) = call(
        &d,
        &d.api_key,
        "POST",
        &format!("/v1/webhook-deliveries/{}/redeliver", entry["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(status, 202, "{again}");
    let hits = rx.wait_for(Duration::from_secs(10), "the redelivery", |h| h.len() >= 5).await;
    assert_eq!(hits[4].header("webhook-id"), hits[0].header("webhook-id"));
    assert_eq!(hits[4].body, hits[0].body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = deliveries(&d, ep["id"].as_str().unwrap()).await;
    assert_eq!(log[0]["attempts"], 5);
    assert_eq!(log[0]["status"], "delivered");
    // The backlog drains to 0.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if metric(&d.metrics().await, "duet_webhook_backlog") == Some(0.0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "duet_webhook_backlog stays above 0");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The test ping goes through the same outbox.
    let (status, ping) =
        call(&d, &d.api_key, "POST", &format!("/v1/webhook-endpoints/{}/test", ep["id"].as_str().unwrap()), None).await;
    assert_eq!(status, 202, "{ping}");
    assert_eq!(ping["event_type"], "webhook.test");
    let hits = rx.wait_for(Duration::from_secs(10), "the test event", |h| h.len() >= 6).await;
    assert_eq!(hits[5].json()["type"], "webhook.test");
    assert_eq!(hits[5].header("webhook-id"), ping["webhook_id"].as_str().unwrap());
}

/// A 307 is a failed attempt: the location is never requested, the attempt is logged with 307 and retried.
async fn redirects_are_not_followed(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, ALLOW_LOOPBACK) else { return };
    let rx = Receiver::start().await;
    let ep = endpoint(&d, &rx.url("/redirect"), json!({})).await;
    d.booking_now(3600, 1800).await;
    rx.wait_for(Duration::from_secs(15), "two attempts", |h| h.len() >= 2).await;
    assert!(rx.hits().iter().all(|h| h.path == "/redirect"), "the redirect target was requested");
    let log = deliveries(&d, ep["id"].as_str().unwrap()).await;
    assert_eq!(log[0]["attempt_log"][0]["status_code"], 307);
    assert_eq!(log[0]["attempt_log"][0]["error"], "HTTP 307");
    assert_ne!(log[0]["status"], "delivered");
    // After the schedule (4 attempts), the delivery is failed.
    rx.wait_for(Duration::from_secs(15), "four attempts", |h| h.len() >= 4).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = deliveries(&d, ep["id"].as_str().unwrap()).await;
    assert_eq!((log[0]["status"].as_str(), log[0]["attempts"].as_i64()), (Some("failed"), Some(4)), "{}", log[0]);
    assert!(metric(&d.metrics().await, "duet_webhook_deliveries_total{result=\"failed\"}") == Some(1.0));
}

/// Without `[webhooks] allow_private`, endpoints on loopback or private addresses (literal, IPv4-mapped IPv6, or a
/// name resolving there) and non-https URLs are refused with 422 `invalid_field` (`url`); with it, http to the
/// allow-listed range is accepted but a private address outside it is still refused.
async fn private_addresses_need_the_allow_list(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };
    let rx = Receiver::start().await;
    for url in [
        rx.url("/hook"),
        format!("https://127.0.0.1:{}/hook", rx.addr.port()),
        "https://localhost/hook".to_string(),
        "https://[::1]/hook".to_string(),
        "https://[::ffff:127.0.0.1]/hook".to_string(),
        "https://10.0.0.8/hook".to_string(),
        "https://169.254.169.254/latest/meta-data".to_string(),
        "https://100.64.1.1/".to_string(),
        "https://[fd00::1]/".to_string(),
        "https://0.0.0.0/".to_string(),
        "http://93.184.215.14/hook".to_string(),
        "ftp://93.184.215.14/hook".to_string(),
        "not a url".to_string(),
    ] {
        let (status, body) = call(&d, &d.api_key, "POST", "/v1/webhook-endpoints", Some(json!({"url": url}))).await;
        assert_eq!(
            (status, body["error"].as_str(), body["field"].as_str()),
            (422, Some("invalid_field"), Some("url")),
            "{url}: {body}"
        );
    }
    let (status, body) =
        call(&d, &d.api_key, "POST", "/v1/webhook-endpoints", Some(json!({"url": "https://93.184.215.14/hook"}))).await;
    assert_eq!(status, 201, "a public https URL is accepted: {body}");
    let (status, body) = call(
        &d,
        &d.api_key,
        "POST",
        "/v1/webhook-endpoints",
        Some(json!({"url": "https://93.184.215.14/", "event_types": ["booking.exploded"]})),
    )
    .await;
    assert_eq!((status, body["field"].as_str()), (422, Some("event_types[0]")), "{body}");
    let (status, body) = call(
        &d,
        &d.api_key,
        "PATCH",
        &format!("/v1/webhook-endpoints/{}", "whe_nope"),
        Some(json!({"enabled": false})),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    drop(d);

    let Some(d) = Daemon::start_on(backend, ALLOW_LOOPBACK) else { return };
    let (status, body) =
        call(&d, &d.api_key, "POST", "/v1/webhook-endpoints", Some(json!({"url": rx.url("/hook")}))).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) =
        call(&d, &d.api_key, "POST", "/v1/webhook-endpoints", Some(json!({"url": "https://10.0.0.8/"}))).await;
    assert_eq!(status, 422, "10/8 is not in the allow list: {body}");
    // A URL changed to a refused address is refused too.
    let (status, body) = call(
        &d,
        &d.api_key,
        "PATCH",
        &format!("/v1/webhook-endpoints/{}", body_id(&d).await),
        Some(json!({"url": "https://192.168.0.1/"})),
    )
    .await;
    assert_eq!((status, body["field"].as_str()), (422, Some("url")), "{body}");
}

/// The id of the first endpoint of the daemon's tenant.
async fn body_id(d: &Daemon) -> String {
    let (_, list) = call(d, &d.api_key, "GET", "/v1/webhook-endpoints", None).await;
    list["webhook_endpoints"][0]["id"].as_str().unwrap().to_string()
}

/// After `rotate-secret`, requests carry two signatures (new, then old) and verify with either secret (Python); a
/// rotation with a zero overlap gives one signature, under the new secret only.
async fn rotation_signs_with_both_secrets(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, ALLOW_LOOPBACK) else { return };
    let rx = Receiver::start().await;
    let ep = endpoint(&d, &rx.url("/rot"), json!({})).await;
    let id = ep["id"].as_str().unwrap();
    let old = ep["secret"].as_str().unwrap().to_string();
    let (status, rotated) =
        call(&d, &d.api_key, "POST", &format!("/v1/webhook-endpoints/{id}/rotate-secret"), None).await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert!(rotated["previous_secret_expires_at"].as_str().is_some(), "{rotated}");
    let (_, got) = call(&d, &d.api_key, "GET", &format!("/v1/webhook-endpoints/{id}"), None).await;
    assert!(got.get("secret").is_none());
    d.booking_now(3600, 1800).await;
    let hits = rx.wait_for(Duration::from_secs(15), "the event", |h| !h.is_empty()).await;
    let sigs: Vec<&str> = hits[0].header("webhook-signature").split(' ').collect();
    assert_eq!(sigs.len(), 2, "{sigs:?}");
    assert!(sigs.iter().all(|s| s.starts_with("v1,")));
    verify_with_python("rotation_signs_with_both_secrets", &hits[..1], &[&new, &old]).await;
    drop(d);

    let Some(d) = Daemon::start_on(backend, &format!("{ALLOW_LOOPBACK}rotation_overlap = \"0s\"\n")) else { return };
    let rx = Receiver::start().await;
    let ep = endpoint(&d, &rx.url("/rot0"), json!({})).await;
    let (_, rotated) = call(
        &d,
        &d.api_key,
        "POST",
        &format!("/v1/webhook-endpoints/{}/rotate-secret", ep["id"].as_str().unwrap()),
        None,
    )
    .await;
    d.booking_now(3600, 1800).await;
    let hits = rx.wait_for(Duration::from_secs(15), "the event", |h| !h.is_empty()).await;
    assert_eq!(hits[0].header("webhook-signature").split(' ').count(), 1);
    verify_with_python("rotation_signs_with_both_secrets", &hits[..1], &[rotated["secret"].as_str().unwrap()]).await;
    // The old secret no longer verifies: standardwebhooks must refuse it (the check can fail).
    if let Some(python) = find_tool("python3") {
        let h = &hits[0];
        let script = "import sys, json\nfrom standardwebhooks import Webhook\nh = json.loads(sys.argv[2])\ntry:\n    Webhook(sys.argv[1]).verify(h['body'].encode(), h['headers'])\n    print('verified')\nexcept Exception as e:\n    print('refused')\n";
        let case = json!({"body": h.body, "headers": {"webhook-id": h.header("webhook-id"), "webhook-timestamp": h.header("webhook-timestamp"), "webhook-signature": h.header("webhook-signature")}});
        let mut cmd = Command::new(python);
        cmd.args(["-c", script, ep["secret"].as_str().unwrap(), &case.to_string()]);
        let run = run_bounded_blocking(cmd, Duration::from_secs(60), "python").await;
        if run.status.success() {
            assert_eq!(run.stdout.trim(), "refused");
        }
    }
}

/// `kill -9` during a burst of concurrent creates, then a restart on the same data: every acknowledged booking's
/// `booking.created` reaches the receiver, and after deduplication by `webhook-id` each booking's event is there
/// exactly once: the attempts the kill interrupted are sent again after the restart with the same id.
async fn kill9_during_a_burst_loses_no_event(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, ALLOW_LOOPBACK) else { return };
    let rx = Receiver::start().await;
    // A slow receiver, so attempts are under way when the daemon is killed.
    endpoint(&d, &rx.url("/slow"), json!({})).await;
    let (url, key) = (d.url("/v1/bookings"), d.api_key.clone());
    let client = reqwest::Client::new();
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..60 {
        let (client, url, key) = (client.clone(), url.clone(), key.clone());
        creates.spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 20)).await;
            let r =
                client.post(&url).bearer_auth(&key).json(&booking_body(3600 + i as i64 * 60, 600)).send().await.ok()?;
            if r.status().as_u16() != 201 {
                return None;
            }
            let b: Value = r.json().await.ok()?;
            b["id"].as_str().map(str::to_string)
        });
    }
    // Kill as soon as the first attempt is under way (the receiver holds it 2 s), while creates keep coming.
    rx.wait_for(Duration::from_secs(20), "a first attempt", |h| !h.is_empty()).await;
    let mut d = d;
    d.kill9();
    let mut acknowledged = BTreeSet::new();
    while let Some(r) = creates.join_next().await {
        if let Some(id) = r.unwrap() {
            acknowledged.insert(id);
        }
    }
    assert!(!acknowledged.is_empty(), "no create was acknowledged before the kill");
    let d = d.restart();
    // Every booking the database holds (acknowledged or not): each must get its event, and nothing else may come.
    let (_, list) = call(&d, &d.api_key, "GET", "/v1/bookings?limit=100", None).await;
    let stored: BTreeSet<String> =
        list["bookings"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap().to_string()).collect();
    assert!(acknowledged.is_subset(&stored), "an acknowledged create was lost");
    rx.wait_for(Duration::from_secs(40), "every stored booking's event", |h| {
        let seen: BTreeSet<String> =
            h.iter().filter_map(|h| h.json()["data"]["id"].as_str().map(str::to_string)).collect();
        stored.is_subset(&seen)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let hits = rx.hits();
    let mut by_id: BTreeMap<String, String> = BTreeMap::new();
    for h in &hits {
        let booking = h.json()["data"]["id"].as_str().unwrap().to_string();
        assert_eq!(h.json()["type"], "booking.created");
        if let Some(prev) = by_id.insert(h.header("webhook-id").to_string(), booking.clone()) {
            assert_eq!(prev, booking, "one webhook-id, one event");
        }
    }
    let mut per_booking: BTreeMap<&String, usize> = BTreeMap::new();
    for booking in by_id.values() {
        *per_booking.entry(booking).or_default() += 1;
    }
    assert!(per_booking.values().all(|n| *n == 1), "after dedupe each booking's event is seen once: {per_booking:?}");
    assert!(hits.len() > by_id.len(), "attempts interrupted by the kill are sent again (same webhook-id)");
    let delivered: BTreeSet<String> = by_id.values().cloned().collect();
    assert_eq!(delivered, stored, "events exactly for the committed bookings");
}

/// A key of another tenant gets 404 for the first tenant's endpoint and delivery, and lists none.
async fn endpoints_are_per_tenant(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, ALLOW_LOOPBACK) else { return };
    let rx = Receiver::start().await;
    let ep = endpoint(&d, &rx.url("/mine"), json!({})).await;
    let id = ep["id"].as_str().unwrap();
    d.booking_now(3600, 1800).await;
    rx.wait_for(Duration::from_secs(15), "the event", |h| !h.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let delivery = deliveries(&d, id).await[0]["id"].as_str().unwrap().to_string();

    let (status, tenant) =
        call(&d, &d.api_key, "POST", "/v1/admin/tenants", Some(json!({"name": "Other clinic"}))).await;
    assert_eq!(status, 201);
    let (status, key) = call(
        &d,
        &d.api_key,
        "POST",
        "/v1/admin/api-keys",
        Some(json!({"tenant_id": tenant["id"], "scopes": ["bookings:read", "bookings:write"]})),
    )
    .await;
    assert_eq!(status, 201);
    let other = key["key"].as_str().unwrap();
    for (method, path, body) in [
        ("GET", format!("/v1/webhook-endpoints/{id}"), None),
        ("PATCH", format!("/v1/webhook-endpoints/{id}"), Some(json!({"enabled": false}))),
        ("POST", format!("/v1/webhook-endpoints/{id}/rotate-secret"), None),
        ("POST", format!("/v1/webhook-endpoints/{id}/test"), None),
        ("GET", format!("/v1/webhook-endpoints/{id}/deliveries"), None),
        ("POST", format!("/v1/webhook-deliveries/{delivery}/redeliver"), None),
        ("DELETE", format!("/v1/webhook-endpoints/{id}"), None),
    ] {
        let (status, body) = call(&d, other, method, &path, body).await;
        assert_eq!((status, body["error"].as_str()), (404, Some("not_found")), "{method} {path}: {body}");
    }
    let (status, list) = call(&d, other, "GET", "/v1/webhook-endpoints", None).await;
    assert_eq!((status, list["webhook_endpoints"].as_array().map(Vec::len)), (200, Some(0)));
    // The other tenant's bookings do not reach the first tenant's endpoint.
    let (status, _) = d.create_booking_with(other, &booking_body(3600, 600)).await;
    assert_eq!(status, 201);
    // A read-only key may not manage endpoints.
    let (_, ro) = call(
        &d,
        &d.api_key,
        "POST",
        "/v1/admin/api-keys",
        Some(json!({"tenant_id": "ten_default", "scopes": ["bookings:read"]})),
    )
    .await;
    let (status, body) = call(&d, ro["key"].as_str().unwrap(), "GET", "/v1/webhook-endpoints", None).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("insufficient_scope")));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.hits().len(), 1, "only the first tenant's booking was sent");
    // The endpoint still works for its owner; deleting it removes it and its log.
    let (status, _) = call(&d, &d.api_key, "DELETE", &format!("/v1/webhook-endpoints/{id}"), None).await;
    assert_eq!(status, 204);
    let (status, _) = call(&d, &d.api_key, "GET", &format!("/v1/webhook-endpoints/{id}"), None).await;
    assert_eq!(status, 404);
}
