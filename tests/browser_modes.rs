//! Real browsers in Duet's drop-in signaling modes (issue 4, browser tests 2 and 3), in Debian's `chromium` driven by
//! `playwright-core`, with relay-only ICE:
//! - **vy**: two pages using **simple-peer** from npm with the Virtual Y client's signaling logic
//!   (`tests/browser/vy.mjs`, `pages/vy-client.js`) call each other through the hub in `vy` mode
//!   (`?meetingId=<external_id>&isInstructorRole=…`), media added after `connect` as the Virtual Y client does;
//! - **peerjs**: two pages using the **peerjs** client from npm (`tests/browser/peerjs.mjs`,
//!   `pages/peerjs-client.js`) register with session tokens as `key` (scoped to the booking), call with media and
//!   a data connection, then do a data round with the static key.
//!
//! Both must show inbound video in `getStats()` over a selected candidate pair with a relay candidate, and the
//! daemon's `/metrics` must count the relayed bytes. The TURN credentials come from `POST /v1/join` of the booking's
//! participants.
//!
//! As in `tests/browser.rs`: the daemon and the browser share a network namespace of their own whose only interface
//! is `lo`; each test re-executes its own binary (that test only) under `tests/browser/run-in-netns.sh`. Needs
//! `/usr/bin/chromium`, `node` and `npm ci --prefix tests/browser`; without them the test prints a SKIPPED line, or
//! fails when `CI` is set.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::browser::{RESULT_PREFIX, assert_relay_metrics, assert_relayed_video, netns_test, node_scenario};
use common::{Daemon, assert_alive, booking_body, join_as, metric};
use serde_json::{Value, json};

/// Set in the re-executed child, which runs inside the namespace.
const IN_NETNS: &str = "DUET_BROWSER_MODES_IN_NETNS";
/// The scenarios' own hard deadline; the child and the parent allow more on top.
/// Virtual Y mode is off by default.
const VY: &str = "[signaling.vy]\nenabled = true\n";
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(60);
/// One browser scenario at a time in this binary (two chromium instances on a small CI machine slow both down).
static ONE_BROWSER: Mutex<()> = Mutex::new(());

/// The parent's side: re-executes this test binary (test `test` only) inside a fresh network namespace, one browser
/// scenario at a time, and checks that the child passed; the child runs `inside`.
async fn in_namespace<F: std::future::Future<Output = ()>>(test: &str, inside: impl FnOnce() -> F) {
    netns_test(test, IN_NETNS, SCENARIO_TIMEOUT + Duration::from_secs(90), Some(&ONE_BROWSER), inside).await;
}

/// Runs `node <script> --timeout-ms … <config>` in tests/browser; returns its JSON result line after checking that
/// it passed.
async fn scenario(script: &str, config: &Value) -> (String, Value) {
    node_scenario(script, SCENARIO_TIMEOUT, &[config.to_string()]).await
}

// ---------------------------------------------------------------------------------------------------------------
// vy: simple-peer pages
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vy_simple_peer_pages_call_through_hub_and_relay_in_chromium() {
    in_namespace("vy_simple_peer_pages_call_through_hub_and_relay_in_chromium", vy_in_netns).await;
}

/// Inside the namespace: daemon, a booking with an `external_id` (the Virtual Y meeting id), the participants' TURN
/// credentials from joins, two simple-peer pages.
async fn vy_in_netns() {
    let mut d = Daemon::start(VY);
    let meeting = uuid::Uuid::new_v4().to_string();
    let mut body = booking_body(60, 1800);
    body["external_id"] = json!(meeting);
    let (status, booking) = d.create_booking(&body).await;
    assert_eq!(status, 201, "create booking: {booking}");
    let host = join_as(&d, &booking, "host").await;
    let guest = join_as(&d, &booking, "guest").await;
    let config = json!({
        "ws": format!("ws://{}", d.http),
        "path": "/",
        "meetingId": meeting,
        "instructor": {"iceServers": host["ice_servers"]},
        "customer": {"iceServers": guest["ice_servers"]},
    });
    let (json_line, result) = scenario("vy.mjs", &config).await;

    for (role, other) in [("instructor", "customer"), ("customer", "instructor")] {
        let page = &result["pages"][role];
        assert_relayed_video(role, &page["stats"]);
        assert!(page["ready"].as_u64().unwrap_or(0) >= 1, "{role}: no `ready` frame: {page}");
        assert_eq!(page["badFrames"], json!([]), "{role}: the hub sent frames that are not relayed JSON: {page}");
        assert_eq!(page["closes"], json!([]), "{role}: the hub closed the socket: {page}");
        let hello = format!("{{\"action\":\"receiveChatMessage\",\"payload\":\"hello from the {other}\"}}");
        assert!(
            page["data"].as_array().is_some_and(|d| d.iter().any(|m| m == hello.as_str())),
            "{role}: the {other}'s data-channel message did not arrive: {page}"
        );
    }
    // The customer (non-initiator) added its stream after `connect`: simple-peer asked the instructor to
    // renegotiate through signaling, and the hub relayed it (simple-peer #779: filtering it breaks customer media).
    let (customer, instructor) = (&result["pages"]["customer"], &result["pages"]["instructor"]);
    assert!(
        customer["signalsOut"]["renegotiate"].as_u64().unwrap_or(0) >= 1
            && instructor["signalsIn"]["renegotiate"].as_u64().unwrap_or(0) >= 1,
        "the customer's `renegotiate` signal must reach the instructor: customer sent {}, instructor got {}",
        customer["signalsOut"],
        instructor["signalsIn"]
    );

    let text = assert_relay_metrics(&d).await;
    let relayed = metric(&text, "duet_signal_messages_total{direction=\"in\",type=\"relay\"}").unwrap_or(0.0);
    assert!(relayed >= 4.0, "vy frames counted in metrics: {relayed}");
    let ready = metric(&text, "duet_signal_ready_total").unwrap_or(0.0);
    assert!(ready >= 1.0, "the vy pair counted in duet_signal_ready_total: {ready}");
    assert_alive(&mut d);
    println!("{RESULT_PREFIX}{json_line}");
}

// ---------------------------------------------------------------------------------------------------------------
// peerjs: peerjs client pages
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peerjs_pages_connect_through_hub_and_relay_in_chromium() {
    in_namespace("peerjs_pages_connect_through_hub_and_relay_in_chromium", peerjs_in_netns).await;
}

/// Inside the namespace: daemon with peerjs mode on, a booking, the participants' session tokens (the `key`) and TURN
/// credentials from joins, two peerjs pages.
async fn peerjs_in_netns() {
    let mut d = Daemon::start(&format!("{VY}[signaling.peerjs]\nenabled = true\n"));
    let booking = d.booking_now(60, 1800).await;
    let host = join_as(&d, &booking, "host").await;
    let guest = join_as(&d, &booking, "guest").await;
    let config = json!({
        "host": d.http.ip().to_string(),
        "port": d.http.port(),
        "path": "/",
        "caller": {"id": "instructor-1", "key": host["session_token"], "iceServers": host["ice_servers"]},
        "callee": {"id": "customer-1", "key": guest["session_token"], "iceServers": guest["ice_servers"]},
        "staticKey": "peerjs",
    });
    let (json_line, result) = scenario("peerjs.mjs", &config).await;

    for (role, other) in [("caller", "customer-1"), ("callee", "instructor-1")] {
        let page = &result["pages"][role];
        assert_relayed_video(role, &page["stats"]);
        assert!(page["streams"].as_u64().unwrap_or(0) >= 1, "{role}: no remote stream: {page}");
        let hello = format!("hello from {other}");
        assert!(
            page["data"].as_array().is_some_and(|d| d.iter().any(|m| m == hello.as_str())),
            "{role}: the data message of {other} did not arrive: {page}"
        );
        let again = &result["staticKey"][role];
        assert!(
            again["data"].as_array().is_some_and(|d| d.iter().any(|m| m == hello.as_str())),
            "{role}: no data message with the static key: {again}"
        );
    }

    let text = assert_relay_metrics(&d).await;
    for kind in ["OFFER", "ANSWER", "CANDIDATE"] {
        let n = metric(&text, &format!("duet_signal_messages_total{{direction=\"in\",type=\"{kind}\"}}"));
        assert!(n.unwrap_or(0.0) >= 1.0, "peerjs {kind} frames counted in metrics: {n:?}");
    }
    assert_alive(&mut d);
    println!("{RESULT_PREFIX}{json_line}");
}
