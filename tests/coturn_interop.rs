//! Interop with coturn's test clients: `turnutils_uclient` pushes real traffic through Duet's TURN relay (channels
//! and Send indications, client-to-client and via a `turnutils_peer` echo peer) and `turnutils_stunclient` does a
//! Binding. Needs the `coturn` package; without it the tests print a SKIPPED line, or fail when `CI` is set.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::coturn::{UCLIENT_SERIAL, free_udp_port_pair, start_echo_peer, uclient_load};
use common::process::run_bounded_blocking;
use common::{Daemon, join_as, metric, turn_credentials};

const TOOLS: [&str; 3] = ["turnutils_uclient", "turnutils_peer", "turnutils_stunclient"];

/// Room for the allocations one uclient run makes with a single credential.
const UCLIENT_CONFIG: &str = "[turn]\nallocations_per_credential = 10\n";

/// True when all coturn tools are on PATH. Otherwise fails under CI, or prints a SKIPPED line and returns false.
fn coturn_available(test: &str) -> bool {
    common::coturn::coturn_available(test, &TOOLS)
}

/// Books a call open now, joins as host, and returns the TURN (port, username, credential) from ice_servers.
async fn fresh_turn_credentials(d: &Daemon) -> (u16, String, String) {
    let booking = d.booking_now(60, 1800).await;
    let join = join_as(d, &booking, "host").await;
    let (url, username, credential) = turn_credentials(&join);
    let port: u16 = url
        .strip_prefix("turn:127.0.0.1:")
        .and_then(|r| r.split('?').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected TURN url {url:?} (want turn:127.0.0.1:PORT?transport=udp)"));
    assert_eq!(port, d.turn_udp.port(), "the TURN url in ice_servers must point at the relay's UDP listener");
    (port, username, credential)
}

/// Runs one uclient load (4 clients x 200 messages of 170 B every 5 ms, IPv4 relay addresses) with fresh credentials
/// and checks that every message came back, and that the relay's metrics account for the relayed packets.
async fn uclient_run(mode_args: &[&str], test: &str) {
    if !coturn_available(test) {
        return;
    }
    let _serial = UCLIENT_SERIAL.lock().await;
    // `uclient -m 4` holds 6 (-y) to 7 (-e) allocations at once on one credential (4.6.1, measured), more than the
    // default quota of 4, which answers the 5th with 486.
    let d = Daemon::start(UCLIENT_CONFIG);
    let (port, username, credential) = fresh_turn_credentials(&d).await;
    let args: Vec<&str> = mode_args.iter().copied().chain(["-X"]).collect();
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    uclient_load(&d, server, &args, &username, &credential, test).await;
}

#[tokio::test]
async fn uclient_client_to_client_over_channels() {
    uclient_run(&["-y"], "uclient_client_to_client_over_channels").await;
}

#[tokio::test]
async fn uclient_client_to_client_over_send_indications() {
    uclient_run(&["-y", "-s"], "uclient_client_to_client_over_send_indications").await;
}

/// [`uclient_run`] through a `turnutils_peer` echo peer on 127.0.0.1.
async fn uclient_echo_run(mode_args: &[&str], test: &str) {
    if !coturn_available(test) {
        return;
    }
    let port = free_udp_port_pair("127.0.0.1");
    let _peer = start_echo_peer("127.0.0.1", port);
    let port = port.to_string();
    let args: Vec<&str> = mode_args.iter().copied().chain(["-e", "127.0.0.1", "-r", &port]).collect();
    uclient_run(&args, test).await;
}

#[tokio::test]
async fn uclient_echo_peer_over_channels() {
    uclient_echo_run(&[], "uclient_echo_peer_over_channels").await;
}

#[tokio::test]
async fn uclient_echo_peer_over_send_indications() {
    uclient_echo_run(&["-s"], "uclient_echo_peer_over_send_indications").await;
}

#[tokio::test]
async fn stunclient_gets_mapped_address() {
    let test = "stunclient_gets_mapped_address";
    if !coturn_available(test) {
        return;
    }
    let d = Daemon::start("");
    let before = metric(&d.metrics().await, "duet_stun_binding_requests_total").unwrap_or(0.0);
    let port = d.turn_udp.port().to_string();
    let mut cmd = Command::new("turnutils_stunclient");
    cmd.args(["-p", &port, "127.0.0.1"]);
    let run = run_bounded_blocking(cmd, Duration::from_secs(20), "turnutils_stunclient").await;
    run.assert_success("turnutils_stunclient");
    // e.g. "0: : IPv4. UDP reflexive addr: 127.0.0.1:38870"
    let mapped = run
        .stdout
        .lines()
        .chain(run.stderr.lines())
        .find_map(|l| l.split("UDP reflexive addr: ").nth(1))
        .unwrap_or_else(|| panic!("no mapped address in stunclient output:\n{}\n{}", run.stdout, run.stderr))
        .trim()
        .to_string();
    let mapped: SocketAddr =
        mapped.parse().unwrap_or_else(|e| panic!("stunclient printed an unparsable mapped address {mapped:?}: {e}"));
    assert_eq!(mapped.ip().to_string(), "127.0.0.1", "mapped address of a loopback client");
    assert_ne!(mapped.port(), 0, "mapped port");
    let after = metric(&d.metrics().await, "duet_stun_binding_requests_total").unwrap_or(0.0);
    assert!(after > before, "duet_stun_binding_requests_total did not grow after a Binding ({before} -> {after})");
}
