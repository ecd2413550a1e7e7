//! Interop of Duet's TURN relay with independent clients (issue 3, "Interop and figures"):
//! - the `turn` crate: its `Client` (Binding, Allocate) and its message codecs (`turn::proto`) driving a full relay
//!   session over UDP: Allocate, CreatePermission, Send/Data indications, ChannelBind, ChannelData both ways, Refresh;
//! - coturn's `turnutils_uclient` over TCP and TLS (TURNS), with channels and with Send indications (`-s`),
//!   client-to-client (`-y`) and through a `turnutils_peer` echo peer, with zero loss; and over IPv6 (`-x`);
//! - TURNS certificate reload on SIGHUP, observed with `openssl s_client`.
//!
//! The coturn and openssl tools are needed for some tests; without them those tests print a SKIPPED line, or fail
//! when `CI` is set.

mod common;

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use common::coturn::{
    UCLIENT_SERIAL, UclientLoad, free_udp_port_pair, relayed_packets as relayed, start_echo_peer, uclient_load,
    uclient_load_sized,
};
use common::process::{run_bounded, skip, tools_available};
use common::{
    Daemon, TurnUdpClient, assert_alive, join_as, metric, ready_addr, recv_datagram, sighup, start_with_ready,
    turn_crate_client, turn_credentials,
};

const ARRIVAL: Duration = Duration::from_secs(3);
const QUIET: Duration = Duration::from_millis(800);

fn coturn_available(test: &str) -> bool {
    common::coturn::coturn_available(test, &["turnutils_uclient", "turnutils_peer"])
}

fn counter(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or(0.0)
}

/// Books a call open now, joins as host, and returns the TURN (username, credential).
async fn fresh_credentials(d: &Daemon) -> (String, String) {
    let booking = d.booking_now(60, 1800).await;
    let (_, username, credential) = turn_credentials(&join_as(d, &booking, "host").await);
    (username, credential)
}

/// How uclient reaches the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Tcp,
    Tls,
    Udp6,
}

/// Runs one uclient load (4 clients x 200 messages of 170 B every 5 ms) against `server` with fresh credentials and
/// checks that every message came back and that the relay's metrics account for the relayed packets; for TCP/TLS
/// also that the allocations went with the connections.
async fn uclient_run(d: &Daemon, server: SocketAddr, transport: Transport, mode_args: &[&str], test: &str) {
    let _serial = UCLIENT_SERIAL.lock().await;
    let (username, credential) = fresh_credentials(d).await;
    let mut args = match transport {
        Transport::Tcp => vec!["-t", "-X"],
        Transport::Tls => vec!["-t", "-S", "-X"],
        Transport::Udp6 => vec!["-x"],
    };
    args.extend_from_slice(mode_args);
    uclient_load(d, server, &args, &username, &credential, test).await;

    // RFC 8656 §3.1: an allocation over TCP/TLS ends with its connection; uclient has exited.
    let label = match transport {
        Transport::Tcp => "tcp",
        Transport::Tls => "tls",
        Transport::Udp6 => return,
    };
    let series = format!("duet_turn_allocations_active{{transport=\"{label}\"}}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = d.metrics().await;
        let active = counter(&text, &series);
        if active == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{test}: {series} is {active} 5 s after uclient exited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// TLS material
// ---------------------------------------------------------------------------------------------------------------

/// A self-signed certificate for 127.0.0.1 / localhost with common name `cn` and serial `serial`: (cert PEM, key PEM).
fn self_signed(cn: &str, serial: u64) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("certificate parameters");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    params.serial_number = Some(rcgen::SerialNumber::from(serial));
    let key = rcgen::KeyPair::generate().expect("generate key");
    let cert = params.self_signed(&key).expect("self-sign");
    (cert.pem(), key.serialize_pem())
}

/// Writes cert.pem / key.pem (0600) into `dir`; returns their paths.
fn write_pair(dir: &Path, pair: &(String, String)) -> (PathBuf, PathBuf) {
    common::write_tls_pair(dir, &pair.0, &pair.1)
}

/// Config for TCP and TLS listeners on 127.0.0.1:0 with the given certificate files.
fn stream_config(cert: &Path, key: &Path) -> String {
    format!(
        "[turn]\nallocations_per_credential = 10\nlisten_tcp = [\"127.0.0.1:0\"]\nlisten_tls = [\"127.0.0.1:0\"]\n\
         tls_cert = {:?}\ntls_key = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    )
}

/// A daemon with UDP, TCP and TLS listeners (fresh self-signed certificate); the TCP and TLS addresses from its ready
/// line. The temporary directory holds the certificate.
fn stream_daemon() -> (Daemon, SocketAddr, SocketAddr, tempfile::TempDir) {
    stream_daemon_with("")
}

/// [`stream_daemon`] with `extra` TOML after the listener config (later keys win).
fn stream_daemon_with(extra: &str) -> (Daemon, SocketAddr, SocketAddr, tempfile::TempDir) {
    let tls_dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_pair(tls_dir.path(), &self_signed("duet-test", 1));
    let (d, ready) = start_with_ready(&format!("{}{extra}", stream_config(&cert, &key)));
    let tcp = ready_addr(&ready, "turn_tcp").unwrap_or_else(|| panic!("ready line without turn_tcp: {ready}"));
    let tls = ready_addr(&ready, "turn_tls").unwrap_or_else(|| panic!("ready line without turn_tls: {ready}"));
    (d, tcp, tls, tls_dir)
}

// ---------------------------------------------------------------------------------------------------------------
// The `turn` crate
// ---------------------------------------------------------------------------------------------------------------

/// The `turn` crate's own client (`turn::client::Client`) does a Binding and an Allocate against Duet with the
/// join credentials (its 401 -> REALM/NONCE -> MESSAGE-INTEGRITY flow), and the daemon counts the allocation.
///
/// The crate's `RelayConn` (the allocation's `send_to`/`recv_from`, which create permissions and bind channels
/// automatically) is only usable through the `webrtc_util::Conn` trait, and `webrtc-util` is not a dev-dependency of
/// this package, so the data path is driven with the crate's codecs in the next tests.
#[tokio::test]
async fn turn_crate_client_binds_and_allocates() {
    let d = Daemon::start("");
    let (username, credential) = fresh_credentials(&d).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = socket.local_addr().unwrap();
    let client = turn_crate_client(d.turn_udp, socket, &username, &credential, "").await;

    let mapped = tokio::time::timeout(Duration::from_secs(10), client.send_binding_request())
        .await
        .expect("Binding through the turn crate timed out")
        .expect("Binding through the turn crate");
    assert_eq!(mapped, local, "XOR-MAPPED-ADDRESS seen by the turn crate");

    let relay = tokio::time::timeout(Duration::from_secs(10), client.allocate())
        .await
        .expect("Allocate through the turn crate timed out")
        .unwrap_or_else(|e| panic!("Allocate through the turn crate failed: {e}"));
    let text = d.metrics().await;
    assert_eq!(
        metric(&text, "duet_turn_allocations_active{transport=\"udp\"}"),
        Some(1.0),
        "the turn crate's allocation is active in the daemon:\n{text}"
    );
    drop(relay);
    client.close().await.unwrap();
}

/// A full relay session over UDP built from the `turn` crate's codecs (RFC 8656): Allocate (relayed address from the
/// configured port range), CreatePermission, Send indication -> peer, peer -> Data indication (XOR-PEER-ADDRESS is
/// the peer), ChannelBind, then ChannelData both ways for payloads of several lengths (the server uses ChannelData
/// towards the client once a channel is bound, RFC 8656 §12), a Send indication still works on a bound peer, and
/// Refresh with LIFETIME 0 ends relaying. Relayed packet counters match exactly.
#[tokio::test]
async fn turn_codec_session_relays_both_ways_over_indications_and_channel() {
    let d = Daemon::start("[turn]\nrelay_ports = \"50000-50999\"\n");
    let (username, credential) = fresh_credentials(&d).await;
    let before = d.metrics().await;
    let mut c = TurnUdpClient::connect(d.turn_udp, &username, &credential).await;
    let relayed = c.allocate().await.unwrap_or_else(|code| panic!("Allocate refused with {code}"));
    assert_eq!(relayed.ip().to_string(), "127.0.0.1", "XOR-RELAYED-ADDRESS IP");
    assert!((50000..=50999).contains(&relayed.port()), "relayed port {} outside relay_ports", relayed.port());

    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    c.create_permission(&[peer_addr]).await.unwrap_or_else(|code| panic!("CreatePermission refused with {code}"));

    // Send indication -> peer, and the peer's answer as a Data indication.
    c.send_indication(peer_addr, b"hello peer via Send").await;
    let Some((got, from)) = recv_datagram(&peer, ARRIVAL).await else {
        let text = d.metrics().await;
        let counters: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("duet_turn_drops_total") || l.starts_with("duet_turn_relayed_packets_total"))
            .collect();
        panic!(
            "the peer received nothing for the first Send indication to {peer_addr} on the new allocation \
             {relayed}; relay counters:\n{}",
            counters.join("\n")
        );
    };
    assert_eq!((got.as_slice(), from), (&b"hello peer via Send"[..], relayed), "Send indication -> peer");
    peer.send_to(b"hello client via Data", relayed).await.unwrap();
    let got = c.recv_relayed(ARRIVAL).await.expect("the client received the peer's answer");
    assert_eq!(
        got,
        common::Relayed { peer: Some(peer_addr), channel: None, data: b"hello client via Data".to_vec() },
        "without a channel the server relays to the client in a Data indication"
    );

    // Channel: ChannelData both ways; lengths around the 4-byte padding boundary and a large one.
    c.channel_bind(0x4001, peer_addr).await.unwrap_or_else(|code| panic!("ChannelBind refused with {code}"));
    let sizes = [1usize, 3, 4, 5, 13, 500, 1200];
    for (i, &n) in sizes.iter().enumerate() {
        let out: Vec<u8> = (0..n).map(|k| (k * 7 + i) as u8).collect();
        c.send_channel_data(0x4001, &out).await;
        let (got, from) = recv_datagram(&peer, ARRIVAL)
            .await
            .unwrap_or_else(|| panic!("the peer received nothing for ChannelData of {n} bytes"));
        assert_eq!((got, from), (out.clone(), relayed), "ChannelData of {n} bytes -> peer");
        let back: Vec<u8> = out.iter().rev().map(|b| b ^ 0xff).collect();
        peer.send_to(&back, relayed).await.unwrap();
        let got = c.recv_relayed(ARRIVAL).await.unwrap_or_else(|| panic!("no {n}-byte answer over the channel"));
        assert_eq!(
            got,
            common::Relayed { peer: None, channel: Some(0x4001), data: back },
            "peer -> client on a bound channel must come as ChannelData on that channel ({n} bytes)"
        );
    }
    c.send_indication(peer_addr, b"Send still works on a bound peer").await;
    let (got, _) = recv_datagram(&peer, ARRIVAL).await.expect("Send indication after ChannelBind");
    assert_eq!(got, b"Send still works on a bound peer");

    let after = d.metrics().await;
    let to_peer = relayed_delta(&before, &after, "to_peer");
    let to_client = relayed_delta(&before, &after, "to_client");
    assert_eq!(
        (to_peer, to_client),
        (sizes.len() as f64 + 2.0, sizes.len() as f64 + 1.0),
        "duet_turn_relayed_packets_total (to_peer, to_client) must count each relayed datagram once"
    );

    // Refresh with LIFETIME 0 deletes the allocation: nothing is relayed any more.
    assert_eq!(c.refresh(0).await, Ok(0), "Refresh with LIFETIME 0");
    peer.send_to(b"after delete", relayed).await.unwrap();
    assert_eq!(c.recv_relayed(QUIET).await, None, "relayed after the allocation was deleted");
    c.send_channel_data(0x4001, b"after delete").await;
    assert_eq!(recv_datagram(&peer, QUIET).await, None, "relayed to the peer after the allocation was deleted");
}

fn relayed_delta(before: &str, after: &str, direction: &str) -> f64 {
    relayed(after, direction) - relayed(before, direction)
}

/// Client to client through two allocations (as uclient `-y`): each side permits the other's relayed address; a
/// Send indication arrives as a Data indication naming the sender's relayed address, and channels work both ways.
#[tokio::test]
async fn turn_codec_client_to_client_through_two_allocations() {
    let d = Daemon::start("");
    let booking = d.booking_now(60, 1800).await;
    let (_, h_user, h_cred) = turn_credentials(&join_as(&d, &booking, "host").await);
    let (_, g_user, g_cred) = turn_credentials(&join_as(&d, &booking, "guest").await);
    let mut host = TurnUdpClient::connect(d.turn_udp, &h_user, &h_cred).await;
    let mut guest = TurnUdpClient::connect(d.turn_udp, &g_user, &g_cred).await;
    let host_relay = host.allocate().await.unwrap_or_else(|code| panic!("host Allocate: {code}"));
    let guest_relay = guest.allocate().await.unwrap_or_else(|code| panic!("guest Allocate: {code}"));
    host.create_permission(&[guest_relay]).await.unwrap_or_else(|code| panic!("host CreatePermission: {code}"));
    guest.create_permission(&[host_relay]).await.unwrap_or_else(|code| panic!("guest CreatePermission: {code}"));

    host.send_indication(guest_relay, b"host to guest").await;
    let got = guest.recv_relayed(ARRIVAL).await.expect("the guest received the host's data");
    assert_eq!(got, common::Relayed { peer: Some(host_relay), channel: None, data: b"host to guest".to_vec() });

    host.channel_bind(0x4000, guest_relay).await.unwrap_or_else(|code| panic!("host ChannelBind: {code}"));
    guest.channel_bind(0x7ffe, host_relay).await.unwrap_or_else(|code| panic!("guest ChannelBind: {code}"));
    for i in 0..20u8 {
        host.send_channel_data(0x4000, &[i; 160]).await;
        let got = guest.recv_relayed(ARRIVAL).await.unwrap_or_else(|| panic!("message {i} host -> guest lost"));
        assert_eq!(got, common::Relayed { peer: None, channel: Some(0x7ffe), data: vec![i; 160] });
        guest.send_channel_data(0x7ffe, &[!i; 161]).await;
        let got = host.recv_relayed(ARRIVAL).await.unwrap_or_else(|| panic!("message {i} guest -> host lost"));
        assert_eq!(got, common::Relayed { peer: None, channel: Some(0x4000), data: vec![!i; 161] });
    }
}

// ---------------------------------------------------------------------------------------------------------------
// TCP / TLS listeners
// ---------------------------------------------------------------------------------------------------------------

/// The ready line names the TCP and TLS listeners (null when not configured), and joins hand out
/// `turn:…?transport=tcp` and `turns:…?transport=tcp` URLs for them next to the UDP one.
#[tokio::test]
async fn ready_line_and_ice_servers_name_tcp_and_tls_listeners() {
    let (plain, ready) = start_with_ready("");
    assert!(ready["turn_tcp"].is_null(), "turn_tcp must be null without TCP listeners: {ready}");
    assert!(ready["turn_tls"].is_null(), "turn_tls must be null without TLS listeners: {ready}");
    drop(plain);

    let (d, tcp, tls, _tls_dir) = stream_daemon();
    assert!(tcp.ip().is_loopback() && tcp.port() != 0, "turn_tcp {tcp}");
    assert!(tls.ip().is_loopback() && tls.port() != 0 && tls != tcp, "turn_tls {tls}");
    let booking = d.booking_now(60, 1800).await;
    let join = join_as(&d, &booking, "guest").await;
    let urls: Vec<String> = join["ice_servers"]
        .as_array()
        .expect("ice_servers")
        .iter()
        .filter(|s| s.get("username").is_some())
        .flat_map(|s| s["urls"].as_array().cloned().unwrap_or_default())
        .filter_map(|u| u.as_str().map(str::to_string))
        .collect();
    for want in [
        format!("turn:127.0.0.1:{}?transport=udp", d.turn_udp.port()),
        format!("turn:127.0.0.1:{}?transport=tcp", tcp.port()),
        format!("turns:127.0.0.1:{}?transport=tcp", tls.port()),
    ] {
        assert!(urls.contains(&want), "ice_servers TURN urls {urls:?} lack {want}: {}", join["ice_servers"]);
    }
}

async fn stream_uclient(transport: Transport, mode_args: &[&str], test: &str) {
    if !coturn_available(test) {
        return;
    }
    let (d, tcp, tls, _tls_dir) = stream_daemon();
    let server = if transport == Transport::Tls { tls } else { tcp };
    uclient_run(&d, server, transport, mode_args, test).await;
}

async fn stream_uclient_echo(transport: Transport, send: bool, test: &str) {
    if !coturn_available(test) {
        return;
    }
    let port = free_udp_port_pair("127.0.0.1");
    let _peer = start_echo_peer("127.0.0.1", port);
    let port = port.to_string();
    let mut args = vec!["-e", "127.0.0.1", "-r", &port];
    if send {
        args.push("-s");
    }
    stream_uclient(transport, &args, test).await;
}

#[tokio::test]
async fn uclient_tcp_client_to_client_over_channels() {
    stream_uclient(Transport::Tcp, &["-y"], "uclient_tcp_client_to_client_over_channels").await;
}

#[tokio::test]
async fn uclient_tcp_client_to_client_over_send_indications() {
    stream_uclient(Transport::Tcp, &["-y", "-s"], "uclient_tcp_client_to_client_over_send_indications").await;
}

#[tokio::test]
async fn uclient_tcp_echo_peer_over_channels() {
    stream_uclient_echo(Transport::Tcp, false, "uclient_tcp_echo_peer_over_channels").await;
}

#[tokio::test]
async fn uclient_tcp_echo_peer_over_send_indications() {
    stream_uclient_echo(Transport::Tcp, true, "uclient_tcp_echo_peer_over_send_indications").await;
}

#[tokio::test]
async fn uclient_tls_client_to_client_over_channels() {
    stream_uclient(Transport::Tls, &["-y"], "uclient_tls_client_to_client_over_channels").await;
}

#[tokio::test]
async fn uclient_tls_client_to_client_over_send_indications() {
    stream_uclient(Transport::Tls, &["-y", "-s"], "uclient_tls_client_to_client_over_send_indications").await;
}

#[tokio::test]
async fn uclient_tls_echo_peer_over_channels() {
    stream_uclient_echo(Transport::Tls, false, "uclient_tls_echo_peer_over_channels").await;
}

#[tokio::test]
async fn uclient_tls_echo_peer_over_send_indications() {
    stream_uclient_echo(Transport::Tls, true, "uclient_tls_echo_peer_over_send_indications").await;
}

// ---------------------------------------------------------------------------------------------------------------
// Many clients behind one address (issue 7 item 8)
// ---------------------------------------------------------------------------------------------------------------

/// Room for 50 uclient allocations on one credential and one source IP.
const MANY_CLIENTS_CONFIG: &str = "[turn]\nallocations_per_credential = 200\n";

/// Issue 7 item 8: coturn's `turnutils_uclient` with 20, then 50 clients at once from 127.0.0.1 (like clients behind
/// one NAT address), 5 messages each through a `turnutils_peer` echo peer, over `transport` (`None`: UDP). Every
/// message must come back within 60 s. Before the fix the 401 replies beyond 10 per second per source were dropped,
/// which over TCP/TLS (no retransmission) left the extra clients waiting forever.
async fn many_clients_from_one_address(transport: Option<Transport>, test: &str) {
    if !coturn_available(test) {
        return;
    }
    let port = free_udp_port_pair("127.0.0.1");
    let _peer = start_echo_peer("127.0.0.1", port);
    let port = port.to_string();
    let (d, tcp, tls, _tls_dir) = stream_daemon_with(MANY_CLIENTS_CONFIG);
    let (server, mut args) = match transport {
        None => (d.turn_udp, vec!["-X"]),
        Some(Transport::Tcp) => (tcp, vec!["-t", "-X"]),
        Some(Transport::Tls) => (tls, vec!["-t", "-S", "-X"]),
        Some(Transport::Udp6) => unreachable!("IPv4 loopback only"),
    };
    args.extend(["-e", "127.0.0.1", "-r", &port]);
    let _serial = UCLIENT_SERIAL.lock().await;
    for clients in [20, 50] {
        let (username, credential) = fresh_credentials(&d).await;
        let load = UclientLoad { clients, messages: 5, limit: Duration::from_secs(60) };
        uclient_load_sized(&d, server, &args, &username, &credential, &load, &format!("{test} ({clients} clients)"))
            .await;
    }
}

#[tokio::test]
async fn uclient_20_and_50_clients_from_one_address_over_udp() {
    many_clients_from_one_address(None, "uclient_20_and_50_clients_from_one_address_over_udp").await;
}

#[tokio::test]
async fn uclient_20_and_50_clients_from_one_address_over_tcp() {
    many_clients_from_one_address(Some(Transport::Tcp), "uclient_20_and_50_clients_from_one_address_over_tcp").await;
}

#[tokio::test]
async fn uclient_20_and_50_clients_from_one_address_over_tls() {
    many_clients_from_one_address(Some(Transport::Tls), "uclient_20_and_50_clients_from_one_address_over_tls").await;
}

// ---------------------------------------------------------------------------------------------------------------
// IPv6
// ---------------------------------------------------------------------------------------------------------------

/// A daemon whose only TURN listener is [::1] (IPv6 relays on ::1, RFC 6156), or `None` with a SKIPPED line when
/// [::1] cannot be bound here.
fn ipv6_daemon(test: &str) -> Option<Daemon> {
    if let Err(e) = StdUdpSocket::bind("[::1]:0") {
        skip(test, &format!("cannot bind a UDP socket on [::1] ({e})"));
        return None;
    }
    let d = Daemon::start("[turn]\nallocations_per_credential = 10\nlisten_udp = [\"[::1]:0\"]\n");
    assert!(d.turn_udp.is_ipv6(), "turn_udp must be the [::1] listener, got {}", d.turn_udp);
    Some(d)
}

#[tokio::test]
async fn uclient_ipv6_client_to_client_over_channels() {
    let test = "uclient_ipv6_client_to_client_over_channels";
    if !coturn_available(test) {
        return;
    }
    let Some(d) = ipv6_daemon(test) else { return };
    uclient_run(&d, d.turn_udp, Transport::Udp6, &["-y"], test).await;
}

#[tokio::test]
async fn uclient_ipv6_echo_peer_over_send_indications() {
    let test = "uclient_ipv6_echo_peer_over_send_indications";
    if !coturn_available(test) {
        return;
    }
    let Some(d) = ipv6_daemon(test) else { return };
    let port = free_udp_port_pair("::1");
    let _peer = start_echo_peer("::1", port);
    uclient_run(&d, d.turn_udp, Transport::Udp6, &["-s", "-e", "::1", "-r", &port.to_string()], test).await;
}

// ---------------------------------------------------------------------------------------------------------------
// SIGHUP: TURNS certificate reload
// ---------------------------------------------------------------------------------------------------------------

/// The subject and serial of the certificate served at `addr`, read with `openssl s_client` and `openssl x509`.
fn served_certificate(addr: SocketAddr, scratch: &Path) -> String {
    let run = run_bounded(
        Command::new("openssl").args(["s_client", "-connect", &addr.to_string(), "-showcerts"]),
        Duration::from_secs(15),
    );
    let begin = run.stdout.find("-----BEGIN CERTIFICATE-----");
    let end = run.stdout.find("-----END CERTIFICATE-----");
    let (Some(begin), Some(end)) = (begin, end) else {
        panic!("openssl s_client got no certificate from {addr} ({}):\n{}\n{}", run.status, run.stdout, run.stderr);
    };
    let pem = &run.stdout[begin..end + "-----END CERTIFICATE-----".len()];
    let file = scratch.join("served.pem");
    std::fs::write(&file, format!("{pem}\n")).unwrap();
    let x509 = run_bounded(
        Command::new("openssl").args(["x509", "-noout", "-subject", "-serial", "-in"]).arg(&file),
        Duration::from_secs(15),
    );
    x509.assert_success("openssl x509");
    // "subject=CN = duet-cert-a" (OpenSSL 3) or "subject=CN=duet-cert-a": drop the spaces.
    x509.stdout.replace(' ', "")
}

/// Polls the served certificate until it names `cn` (10 s at most).
fn wait_for_served(addr: SocketAddr, scratch: &Path, cn: &str, after: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let served = served_certificate(addr, scratch);
        if served.contains(&format!("CN={cn}")) {
            return served;
        }
        assert!(Instant::now() < deadline, "10 s {after}, the TLS listener still serves:\n{served}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Issue 3 ("certificate and key from config, reloaded on SIGHUP"): the TURNS listener serves certificate A; after
/// the files are replaced by B and SIGHUP, new handshakes get B; a broken or mismatched pair on a later SIGHUP is
/// refused and B stays in service (config.toml.example: "a bad pair keeps the running one"); the relay still works
/// over TLS afterwards.
#[tokio::test]
async fn sighup_swaps_turns_certificate() {
    let test = "sighup_swaps_turns_certificate";
    if !tools_available(test, &["openssl"], "apt-get install openssl") {
        return;
    }
    let tls_dir = tempfile::tempdir().unwrap();
    let a = self_signed("duet-cert-a", 0xA1A1);
    let b = self_signed("duet-cert-b", 0xB2B2);
    let (cert, key) = write_pair(tls_dir.path(), &a);
    let (mut d, ready) = start_with_ready(&stream_config(&cert, &key));
    let tls = ready_addr(&ready, "turn_tls").unwrap_or_else(|| panic!("ready line without turn_tls: {ready}"));
    let scratch = tls_dir.path().to_path_buf();

    let served = tokio::task::spawn_blocking({
        let scratch = scratch.clone();
        move || served_certificate(tls, &scratch)
    })
    .await
    .unwrap();
    assert!(served.contains("CN=duet-cert-a"), "certificate A must be served at start:\n{served}");
    assert!(served.to_ascii_uppercase().contains("SERIAL=A1A1"), "serial of certificate A:\n{served}");

    write_pair(tls_dir.path(), &b);
    sighup(&d);
    let served = tokio::task::spawn_blocking({
        let scratch = scratch.clone();
        move || wait_for_served(tls, &scratch, "duet-cert-b", "after SIGHUP with certificate B")
    })
    .await
    .unwrap();
    assert!(served.to_ascii_uppercase().contains("SERIAL=B2B2"), "serial of certificate B:\n{served}");
    assert_alive(&mut d);

    // A broken pair, then a mismatched one: each SIGHUP keeps B.
    for (what, cert_pem, key_pem) in [
        ("an unparsable certificate", "not a certificate\n".to_string(), b.1.clone()),
        ("certificate A with key B", a.0.clone(), b.1.clone()),
    ] {
        std::fs::write(&cert, cert_pem).unwrap();
        std::fs::write(&key, key_pem).unwrap();
        sighup(&d);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_alive(&mut d);
        let served = tokio::task::spawn_blocking({
            let scratch = scratch.clone();
            move || served_certificate(tls, &scratch)
        })
        .await
        .unwrap();
        assert!(served.contains("CN=duet-cert-b"), "after SIGHUP with {what}, certificate B must stay:\n{served}");
    }

    if coturn_available(test) {
        uclient_run(&d, tls, Transport::Tls, &["-y"], "TLS relay after the certificate reloads").await;
    }
}
