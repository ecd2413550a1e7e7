//! Issue 10, browser test across nodes: two Duet join pages in Debian's `chromium` (`tests/browser/call.mjs`), the
//! host's served by node 1 (`/j/<link_token>` of node 1's HTTP listener) and the guest's by node 2, call each other
//! with relay-only ICE. Each page joins, signals and allocates on the node that served it, so the signaling crosses
//! nodes over Redis (the room is homed on one of them) and the media crosses both nodes' TURN relays.
//!
//! Passes when both pages reach `connected` with inbound video over a selected candidate pair whose local candidate
//! is a relay candidate gathered from the page's own node's TURN listener, when nodes 1 and 2 each had a TURN
//! allocation active during the call and relayed bytes both ways, node 3 none, and when the call report, read
//! through node 3, shows both participants relayed with their browser summaries.
//!
//! The nodes, their `redis-server` and the browser share a network namespace whose only interface is `lo` (see
//! `tests/browser.rs`); PostgreSQL stays outside it and is reached through a Unix socket the parent forwards to
//! `DUET_TEST_DATABASE_URL` (`common::pg::UnixBridge`). Needs that variable, `redis-server`, `/usr/bin/chromium`,
//! `node` and `npm ci --prefix tests/browser`; says SKIPPED without them (fails when `CI` is set; `.ci/run` installs
//! them).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::browser::{
    RESULT_PREFIX, assert_relay_metrics, assert_relayed_video, join_url, netns_test_env, node_scenario,
};
use common::cluster::Cluster;
use common::process::tools_available;
use common::{Daemon, metric, metric_sum, pg};
use serde_json::Value;

/// Set in the re-executed child, which runs inside the namespace.
const IN_NETNS: &str = "DUET_BROWSER_CLUSTER_TEST_IN_NETNS";
/// call.mjs's own hard deadline; the child and the parent allow more on top.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_pages_on_two_nodes_call_through_both_relays_in_chromium() {
    const TEST: &str = "join_pages_on_two_nodes_call_through_both_relays_in_chromium";
    // The parent (outside the namespace) checks PostgreSQL and redis-server and opens the door to PostgreSQL; the
    // re-executed child gets its URL.
    let bridge = if std::env::var_os(IN_NETNS).is_some() {
        None
    } else {
        let Some(bridge) = pg::UnixBridge::start() else { return };
        if !tools_available(TEST, &["redis-server"], "apt-get install redis-server") {
            return;
        }
        Some(bridge)
    };
    let env: Vec<(&str, String)> = bridge.iter().map(|b| (pg::ENV, b.url.clone())).collect();
    netns_test_env(TEST, IN_NETNS, CALL_TIMEOUT + Duration::from_secs(120), None, &env, || call_in_netns(TEST)).await;
}

/// Inside the namespace: three nodes, a booking, the two pages on nodes 1 and 2, metrics and the call report.
async fn call_in_netns(test: &str) {
    let mut c = Cluster::start(test).await.expect("the parent checked PostgreSQL and redis-server");
    let (n1, n2, n3) = (c.node(0), c.node(1), c.node(2));
    let booking = n1.booking_now(60, 1800).await;
    let admins = [n1.admin, n2.admin, n3.admin];
    let peaks: Peaks = Arc::default();
    let poll = tokio::spawn(peak_allocations(admins, peaks.clone()));
    let args = [
        "--guest-http".to_string(),
        n2.http.to_string(),
        n1.http.to_string(),
        join_url(&booking, "host"),
        join_url(&booking, "guest"),
    ];
    let (json_line, result) = node_scenario("call.mjs", CALL_TIMEOUT, &args).await;
    poll.abort();
    let peaks = peaks.lock().unwrap_or_else(|p| p.into_inner()).clone();

    assert_eq!(result["guest_http"], format!("http://{}", n2.http), "{result}");
    for (role, node) in [("host", n1), ("guest", n2)] {
        let stats = &result["pages"][role];
        assert_relayed_video(role, stats);
        let local = &stats["pair"]["local"];
        assert_eq!(local["type"], "relay", "{role}: its own candidate of the selected pair is not relayed: {stats}");
        let from = local["url"].as_str().unwrap_or_default();
        assert!(
            from.contains(&node.turn_udp.to_string()),
            "{role}: the relay candidate comes from {from:?}, not from its node's TURN listener {}",
            node.turn_udp
        );
    }
    assert_eq!(result["csp"]["violations"], 0, "CSP violations: {result}");

    for (i, node) in [(0, n1), (1, n2)] {
        let peak = peaks.get(&admins[i]).copied().unwrap_or(0.0);
        assert!(peak >= 1.0, "node {}: duet_turn_allocations_active never showed an allocation: {peaks:?}", i + 1);
        let text = assert_relay_metrics(node).await;
        let ok = metric(&text, "duet_turn_allocations_total{result=\"ok\"}").unwrap_or(0.0);
        assert!(ok >= 1.0, "node {}: no allocation counted", i + 1);
    }
    let text = n3.metrics().await;
    assert_eq!(peaks.get(&admins[2]).copied().unwrap_or(0.0), 0.0, "node 3 allocated: {peaks:?}");
    assert_eq!(metric_sum(&text, "duet_turn_relayed_bytes_total"), 0.0, "node 3 relayed bytes");
    assert_call_report(n3, &booking).await;
    for i in 0..3 {
        common::assert_alive(c.nodes[i].as_mut().expect("node is running"));
    }
    println!("{RESULT_PREFIX}{json_line}");
}

/// The highest `duet_turn_allocations_active` each node showed, by admin listener.
type Peaks = Arc<Mutex<HashMap<SocketAddr, f64>>>;

/// Polls each admin listener's `duet_turn_allocations_active` (all transports) every 200 ms and keeps the highest
/// value of each in `peaks`, until aborted.
async fn peak_allocations(admins: [SocketAddr; 3], peaks: Peaks) {
    let client = reqwest::Client::new();
    loop {
        for admin in admins {
            let text = match client.get(format!("http://{admin}/metrics")).send().await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => continue,
            };
            let active = metric_sum(&text, "duet_turn_allocations_active");
            let mut peaks = peaks.lock().unwrap_or_else(|p| p.into_inner());
            let e = peaks.entry(admin).or_insert(0.0);
            *e = e.max(active);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// After both pages hung up, the call report read through `d` (a node that served neither page) shows that the
/// meeting started and that both participants relayed, each with the browser summary duet.js sent to its own node.
async fn assert_call_report(d: &Daemon, booking: &Value) {
    let id = booking["id"].as_str().expect("booking id");
    let mut report = Value::Null;
    for _ in 0..100 {
        let r = d.client().get(d.url(&format!("/v1/bookings/{id}/report"))).bearer_auth(&d.api_key).send().await;
        report = r.expect("GET report").json().await.expect("report JSON");
        let parts = report["participants"].as_array().cloned().unwrap_or_default();
        if parts.len() == 2 && parts.iter().all(|p| p["browser_summary"].is_object() && p["transport"] == "relayed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(report["started_at"].is_string(), "the meeting did not start: {report}");
    for p in report["participants"].as_array().expect("participants") {
        assert_eq!(p["transport"], "relayed", "{p}");
        assert_eq!(p["browser_summary"]["candidate_pair"]["local_type"], "relay", "{p}");
    }
}
