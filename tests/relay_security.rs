//! Security controls of the TURN relay at process level (issue 3, "Security"): the peer policy (the daemon's own
//! listener addresses, special-purpose ranges after canonicalising IPv4-mapped and other embedded forms, `allow_peers`
//! and `deny_peers` from the config), the per-credential allocation quota, revocation of a cancelled booking's
//! credentials and allocations, per-allocation and total bandwidth caps, and TURN secret rotation on SIGHUP.
//!
//! Requests are built with the `stun` crate and the `turn` crate's attribute codecs (`common::TurnUdpClient`), signed
//! with long-term credentials (401 challenge, then MESSAGE-INTEGRITY keyed with MD5(username:realm:password)).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use tokio::net::UdpSocket;

use common::{
    Daemon, TurnUdpClient, cancel_booking, join_as, metric, metric_sum, ready_addr, recv_datagram, sighup,
    start_with_ready, turn_credentials,
};

/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(800);
/// How long an expected datagram may take.
const ARRIVAL: Duration = Duration::from_secs(3);

/// A booking open now and the (username, credential) of its participant with `role`.
async fn credentials(d: &Daemon, booking: &Value, role: &str) -> (String, String) {
    let (_, username, credential) = turn_credentials(&join_as(d, booking, role).await);
    (username, credential)
}

/// A fresh client of the relay's UDP listener that reuses `from`'s realm and nonce (the nonce is stateless and not
/// bound to the client address), so it needs no 401 round trip of its own: the daemon limits unauthenticated replies
/// to 10 per second per source IP, and every client here is 127.0.0.1.
async fn sibling(d: &Daemon, from: &TurnUdpClient, username: &str, password: &str) -> TurnUdpClient {
    let mut c = TurnUdpClient::connect(d.turn_udp, username, password).await;
    c.realm = from.realm.clone();
    c.nonce = from.nonce.clone();
    c
}

fn counter(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or(0.0)
}

fn drops(text: &str, reason: &str) -> f64 {
    counter(text, &format!("duet_turn_drops_total{{reason=\"{reason}\"}}"))
}

/// A free UDP port on [::1], or `None` (with the reason) when [::1] cannot be bound on this machine.
fn free_udp_port_v6() -> Result<u16, String> {
    let s = std::net::UdpSocket::bind("[::1]:0").map_err(|e| format!("cannot bind a UDP socket on [::1]: {e}"))?;
    Ok(s.local_addr().unwrap().port())
}

/// Sends `payload` from `peer` to `relayed` and checks that the client receives it, whichever way it comes (a Data
/// indication naming `peer`, or ChannelData on `channel`).
async fn assert_peer_to_client(c: &mut TurnUdpClient, peer: &UdpSocket, relayed: SocketAddr, payload: &[u8]) {
    peer.send_to(payload, relayed).await.unwrap();
    let got = c
        .recv_relayed(ARRIVAL)
        .await
        .unwrap_or_else(|| panic!("the client received nothing within {ARRIVAL:?} of the peer's datagram"));
    assert_eq!(got.data, payload, "payload relayed peer -> client: {got:?}");
    if let Some(from) = got.peer {
        assert_eq!(from, peer.local_addr().unwrap(), "XOR-PEER-ADDRESS of the Data indication");
    }
}

/// Sends `payload` over `channel` and checks that `peer` receives it from `relayed`.
async fn assert_client_to_peer(c: &TurnUdpClient, channel: u16, peer: &UdpSocket, relayed: SocketAddr, payload: &[u8]) {
    c.send_channel_data(channel, payload).await;
    let (got, from) = recv_datagram(peer, ARRIVAL)
        .await
        .unwrap_or_else(|| panic!("the peer received nothing within {ARRIVAL:?} of the client's ChannelData"));
    assert_eq!(got, payload, "payload relayed client -> peer");
    assert_eq!(from, relayed, "the peer must see the data come from the relayed address");
}

// ---------------------------------------------------------------------------------------------------------------
// Peer policy
// ---------------------------------------------------------------------------------------------------------------

/// CreatePermission and ChannelBind towards each `(what, addr)` must be refused with one of `codes`; returns the
/// descriptions of those that were not, and the number of 403 answers.
async fn refusals(
    c: &mut TurnUdpClient,
    cases: &[(String, SocketAddr)],
    codes: &[u16],
    next_channel: &mut u16,
) -> (Vec<String>, usize) {
    let mut wrong = Vec::new();
    let mut forbidden = 0;
    for (what, addr) in cases {
        let perm = c.create_permission(&[*addr]).await;
        *next_channel += 1;
        let bind = c.channel_bind(*next_channel, *addr).await;
        for (op, r) in [("CreatePermission", perm), ("ChannelBind", bind)] {
            match r {
                Err(code) if codes.contains(&code) => forbidden += usize::from(code == 403),
                other => wrong.push(format!("{op} to {what} ({addr}): got {other:?}, want an error in {codes:?}")),
            }
        }
    }
    (wrong, forbidden)
}

/// Issue 3 / research turn.md §3.2: the relay must not reach the server's own listeners (loop and SSRF attacks), cloud
/// metadata, RFC 1918, unspecified and other special-purpose addresses, also when written as IPv4-mapped, NAT64 or
/// 6to4 IPv6 (CVE-2020-26262 for 0.0.0.0 / [::], coturn CVE-2026-27624 for ::ffff:127.0.0.1). In the all-loopback
/// mode loopback peers are allowed, but never the daemon's own addresses. RFC 8656 §10.2 / §11.2: refused with 403
/// and, for a CreatePermission naming several peers, no permission is installed at all.
#[tokio::test]
async fn peer_policy_refuses_own_listeners_and_special_purpose_addresses() {
    let v6 = free_udp_port_v6();
    let extra = match &v6 {
        Ok(port) => {
            format!("[turn]\nlisten_udp = [\"127.0.0.1:0\", \"[::1]:{port}\"]\nlisten_tcp = [\"127.0.0.1:0\"]\n")
        }
        Err(_) => "[turn]\nlisten_tcp = [\"127.0.0.1:0\"]\n".to_string(),
    };
    let (d, ready) = start_with_ready(&extra);
    let tcp = ready_addr(&ready, "turn_tcp").expect("the ready line names the TURN TCP listener (turn_tcp)");
    assert!(d.turn_udp.is_ipv4(), "turn_udp in the ready line is the IPv4 listener: {ready}");
    let booking = d.booking_now(60, 1800).await;
    let (username, credential) = credentials(&d, &booking, "host").await;
    let before = d.metrics().await;

    let mut c = TurnUdpClient::connect(d.turn_udp, &username, &credential).await;
    let relayed = c.allocate().await.unwrap_or_else(|code| panic!("Allocate refused with {code}"));
    assert_eq!(relayed.ip().to_string(), "127.0.0.1", "relayed address of the all-loopback daemon");

    // A loopback peer is allowed in the all-loopback mode, and the relay works with it.
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    c.create_permission(&[peer_addr]).await.unwrap_or_else(|code| panic!("CreatePermission to {peer_addr}: {code}"));
    c.channel_bind(0x4000, peer_addr).await.unwrap_or_else(|code| panic!("ChannelBind to {peer_addr}: {code}"));
    assert_client_to_peer(&c, 0x4000, &peer, relayed, b"loopback peer allowed").await;
    assert_peer_to_client(&mut c, &peer, relayed, b"and back").await;

    let a = |s: &str| -> SocketAddr { s.parse().unwrap() };
    let v4_cases: Vec<(String, SocketAddr)> = vec![
        ("the daemon's TURN UDP listener".into(), d.turn_udp),
        ("the daemon's TURN TCP listener".into(), tcp),
        ("the daemon's HTTP listener".into(), d.http),
        ("the daemon's admin listener".into(), d.admin),
        ("cloud metadata".into(), a("169.254.169.254:80")),
        ("RFC 1918 10/8".into(), a("10.0.0.1:5000")),
        ("RFC 1918 172.16/12".into(), a("172.16.0.1:5000")),
        ("RFC 1918 192.168/16".into(), a("192.168.1.1:5000")),
        ("CGNAT 100.64/10".into(), a("100.64.0.1:5000")),
        ("the unspecified address".into(), a("0.0.0.0:5000")),
        ("multicast".into(), a("224.0.0.251:5353")),
        ("broadcast".into(), a("255.255.255.255:5000")),
    ];
    let mut channel = 0x4000;
    let (mut wrong, mut forbidden) = refusals(&mut c, &v4_cases, &[403], &mut channel).await;

    // IPv6 peers on an IPv4 allocation: RFC 8656 §10.2 answers 443 (Peer Address Family Mismatch); 403 is accepted
    // too, anything else (above all a success) is not.
    let mismatched: Vec<(String, SocketAddr)> = vec![
        ("::ffff:10.0.0.1 (IPv4-mapped RFC 1918)".into(), a("[::ffff:10.0.0.1]:5000")),
        ("[::] (unspecified)".into(), a("[::]:5000")),
    ];
    let (w, f) = refusals(&mut c, &mismatched, &[403, 443], &mut channel).await;
    wrong.extend(w);
    forbidden += f;

    // A CreatePermission naming an allowed and a forbidden peer is refused as a whole: no permission is installed for
    // the allowed one either (RFC 8656 §10.2).
    let peer2 = UdpSocket::bind("127.0.0.2:0").await.expect("bind 127.0.0.2 (Linux routes 127/8 to loopback)");
    let peer2_addr = peer2.local_addr().unwrap();
    match c.create_permission(&[peer2_addr, a("10.0.0.1:5000")]).await {
        Err(403) => forbidden += 1,
        other => wrong.push(format!("CreatePermission to {peer2_addr} and 10.0.0.1: got {other:?}, want Err(403)")),
    }
    peer2.send_to(b"no permission was installed", relayed).await.unwrap();
    if let Some(got) = c.recv_relayed(QUIET).await {
        wrong.push(format!(
            "a refused CreatePermission still installed a permission for {peer2_addr}: data came through: {got:?}"
        ));
    }

    // The same peer on the same IP with another port is fine: only the listener's exact address is refused.
    let own_ip_other_port = SocketAddr::new(d.turn_udp.ip(), peer_addr.port());
    if let Err(code) = c.create_permission(&[own_ip_other_port]).await {
        wrong.push(format!("CreatePermission to {own_ip_other_port} (the listener's IP, another port) got {code}"));
    }

    // IPv6 allocation (RFC 6156): IPv4-mapped and other embedded forms are judged as the IPv4 address they carry.
    match &v6 {
        Ok(v6_port) => {
            let mut c6 = sibling(&d, &c, &username, &credential).await;
            let relayed6 = c6
                .allocate_with(vec![Box::new(turn::proto::reqfamily::REQUESTED_FAMILY_IPV6)])
                .await
                .unwrap_or_else(|code| panic!("IPv6 Allocate (REQUESTED-ADDRESS-FAMILY IPv6) refused with {code}"));
            assert!(relayed6.is_ipv6(), "an IPv6 Allocate must get an IPv6 relayed address, got {relayed6}");
            let peer6 = UdpSocket::bind("[::1]:0").await.unwrap();
            let peer6_addr = peer6.local_addr().unwrap();
            c6.create_permission(&[peer6_addr])
                .await
                .unwrap_or_else(|code| panic!("CreatePermission to the IPv6 loopback peer {peer6_addr}: {code}"));
            peer6.send_to(b"v6 peer", relayed6).await.unwrap();
            match c6.recv_relayed(ARRIVAL).await {
                Some(got) => assert_eq!(got.data, b"v6 peer", "IPv6 peer -> client"),
                None => wrong.push(format!("nothing relayed from the IPv6 peer {peer6_addr} via {relayed6}")),
            }
            let v6_cases: Vec<(String, SocketAddr)> = vec![
                ("::ffff:10.0.0.1 (IPv4-mapped RFC 1918)".into(), a("[::ffff:10.0.0.1]:5000")),
                ("::ffff:169.254.169.254 (IPv4-mapped metadata)".into(), a("[::ffff:169.254.169.254]:80")),
                ("[::] (unspecified)".into(), a("[::]:5000")),
                ("::ffff:0.0.0.0".into(), a("[::ffff:0.0.0.0]:5000")),
                (
                    "::ffff:127.0.0.1 at the TURN UDP port (the daemon's own listener, IPv4-mapped)".into(),
                    SocketAddr::new("::ffff:127.0.0.1".parse().unwrap(), d.turn_udp.port()),
                ),
                ("the daemon's [::1] TURN UDP listener".into(), SocketAddr::new("::1".parse().unwrap(), *v6_port)),
                ("64:ff9b::a00:1 (NAT64 of 10.0.0.1)".into(), a("[64:ff9b::a00:1]:5000")),
                ("2002:a00:1:: (6to4 of 10.0.0.1)".into(), a("[2002:a00:1::]:5000")),
                ("fe80::1 (link-local)".into(), a("[fe80::1]:5000")),
                ("fd00::1 (ULA)".into(), a("[fd00::1]:5000")),
                ("ff02::1 (multicast)".into(), a("[ff02::1]:5000")),
            ];
            let mut ch6 = 0x4000;
            let (w, f) = refusals(&mut c6, &v6_cases, &[403], &mut ch6).await;
            wrong.extend(w);
            forbidden += f;
        }
        Err(reason) => eprintln!("SKIPPED (IPv6 part of the peer policy test): {reason}"),
    }

    let after = d.metrics().await;
    let denied = counter(&after, "duet_turn_peer_denied_total") - counter(&before, "duet_turn_peer_denied_total");
    assert!(wrong.is_empty(), "peer policy violations:\n{}", wrong.join("\n"));
    assert!(
        denied >= forbidden as f64,
        "{forbidden} requests were refused with 403 but duet_turn_peer_denied_total grew by {denied}"
    );
}

/// `allow_peers` admits a private range on purpose and `deny_peers` removes addresses the all-loopback mode would
/// allow (deny wins); neither list can make the unspecified address or the daemon's own listener reachable.
#[tokio::test]
async fn allow_peers_and_deny_peers_from_config() {
    let d = Daemon::start("[turn]\nallow_peers = [\"10.1.0.0/16\", \"0.0.0.0/8\"]\ndeny_peers = [\"127.0.0.2/32\"]\n");
    let booking = d.booking_now(60, 1800).await;
    let (username, credential) = credentials(&d, &booking, "guest").await;
    let mut c = TurnUdpClient::connect(d.turn_udp, &username, &credential).await;
    c.allocate().await.unwrap_or_else(|code| panic!("Allocate refused with {code}"));

    let a = |s: &str| -> SocketAddr { s.parse().unwrap() };
    let cases: Vec<(&str, SocketAddr, Result<(), u16>)> = vec![
        ("10.1.2.3, inside allow_peers 10.1.0.0/16", a("10.1.2.3:5000"), Ok(())),
        ("10.2.0.1, private and outside allow_peers", a("10.2.0.1:5000"), Err(403)),
        ("127.0.0.2, in deny_peers although loopback is allowed", a("127.0.0.2:5000"), Err(403)),
        ("127.0.0.1, loopback in the all-loopback mode", a("127.0.0.1:5000"), Ok(())),
        ("0.0.0.0, unspecified even when allow-listed", a("0.0.0.0:5000"), Err(403)),
        ("0.1.2.3, 'this network' even when allow-listed", a("0.1.2.3:5000"), Err(403)),
        ("the daemon's own TURN UDP listener", d.turn_udp, Err(403)),
    ];
    let mut wrong = Vec::new();
    for (i, (what, addr, want)) in cases.iter().enumerate() {
        let perm = c.create_permission(&[*addr]).await;
        let bind = c.channel_bind(0x4001 + i as u16, *addr).await;
        for (op, got) in [("CreatePermission", perm), ("ChannelBind", bind)] {
            if got != *want {
                wrong.push(format!("{op} to {what} ({addr}): got {got:?}, want {want:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "allow_peers / deny_peers not applied as configured:\n{}", wrong.join("\n"));
}

/// Issue 7 item 11: behind a 1:1 NAT with hairpinning, `public_ip` and the addresses of `public_host` reach the
/// server's own listeners, so with every TURN, HTTP and admin listener port they are refused as peers (403) like the
/// bound addresses; other ports on those IPs stay allowed (loopback is allowed in the all-loopback mode).
#[tokio::test]
async fn public_ip_and_public_host_are_denied_as_own_addresses() {
    let (d, ready) = start_with_ready(
        "[turn]\npublic_ip = \"127.0.0.2\"\npublic_host = \"127.0.0.3\"\nlisten_tcp = [\"127.0.0.1:0\"]\n",
    );
    let tcp = ready_addr(&ready, "turn_tcp").expect("the ready line names the TURN TCP listener (turn_tcp)");
    let booking = d.booking_now(60, 1800).await;
    let (username, credential) = credentials(&d, &booking, "host").await;
    let mut c = TurnUdpClient::connect(d.turn_udp, &username, &credential).await;
    let relayed = c.allocate().await.unwrap_or_else(|code| panic!("Allocate refused with {code}"));
    assert_eq!(relayed.ip().to_string(), "127.0.0.2", "XOR-RELAYED-ADDRESS carries public_ip");

    let mut cases: Vec<(String, SocketAddr)> = Vec::new();
    for ip in ["127.0.0.2", "127.0.0.3"] {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        for (what, port) in [
            ("TURN UDP", d.turn_udp.port()),
            ("TURN TCP", tcp.port()),
            ("HTTP", d.http.port()),
            ("admin", d.admin.port()),
        ] {
            cases.push((format!("{ip} at the {what} listener port"), SocketAddr::new(ip, port)));
        }
    }
    let mut channel = 0x4000;
    let (wrong, forbidden) = refusals(&mut c, &cases, &[403], &mut channel).await;
    assert!(wrong.is_empty(), "public addresses of the server reachable as peers:\n{}", wrong.join("\n"));
    assert_eq!(forbidden, 2 * cases.len());

    // Another port on the public IP is an ordinary (loopback) peer.
    let peer = UdpSocket::bind("127.0.0.2:0").await.expect("bind 127.0.0.2 (Linux routes 127/8 to loopback)");
    let peer_addr = peer.local_addr().unwrap();
    c.create_permission(&[peer_addr]).await.unwrap_or_else(|code| panic!("CreatePermission to {peer_addr}: {code}"));
}

/// Issue 7 item 12: each refusal is counted once, under its own name. 486 in `duet_turn_quota_refusals_total` only,
/// 508 in `duet_turn_capacity_refusals_total` only, 403 in `duet_turn_peer_denied_total` and not as a drop, and a
/// rate-limited unauthenticated request under one `duet_turn_drops_total` reason (`rate_limited`), so the sum over
/// reasons counts each dropped packet once.
#[tokio::test]
async fn metrics_count_each_refusal_once() {
    let d = Daemon::start("[turn]\nallocations_per_credential = 1\nmax_allocations = 1\n");
    let booking = d.booking_now(60, 1800).await;
    let (host_user, host_cred) = credentials(&d, &booking, "host").await;
    let (guest_user, guest_cred) = credentials(&d, &booking, "guest").await;
    let before = d.metrics().await;

    let mut c1 = TurnUdpClient::connect(d.turn_udp, &host_user, &host_cred).await;
    c1.allocate().await.unwrap_or_else(|code| panic!("1st Allocate refused with {code}"));
    let mut g = sibling(&d, &c1, &guest_user, &guest_cred).await;
    assert_eq!(g.allocate().await, Err(508), "max_allocations = 1: the 2nd allocation in total gets 508");
    let mut c2 = sibling(&d, &c1, &host_user, &host_cred).await;
    assert_eq!(c2.allocate().await, Err(486), "allocations_per_credential = 1: the host's 2nd gets 486");
    assert_eq!(c1.create_permission(&["10.0.0.1:5000".parse().unwrap()]).await, Err(403), "RFC 1918 peer");

    // A burst of unauthenticated Allocates from one UDP source, well over the per-source bucket.
    let flood = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let request = {
        let setters: Vec<Box<dyn stun::message::Setter>> = vec![
            Box::new(stun::agent::TransactionId::new()),
            Box::new(stun::message::MessageType::new(stun::message::METHOD_ALLOCATE, stun::message::CLASS_REQUEST)),
            Box::new(turn::proto::reqtrans::RequestedTransport { protocol: turn::proto::PROTO_UDP }),
        ];
        let mut m = stun::message::Message::new();
        m.build(&setters).unwrap();
        m.raw
    };
    const SENT: usize = 1000;
    for _ in 0..SENT {
        flood.send_to(&request, d.turn_udp).await.unwrap();
    }
    let mut replies = 0usize;
    while recv_datagram(&flood, QUIET).await.is_some() {
        replies += 1;
    }

    let after = d.metrics().await;
    let delta = |series: &str| counter(&after, series) - counter(&before, series);
    assert_eq!(delta("duet_turn_quota_refusals_total"), 1.0, "one 486:\n{after}");
    assert_eq!(delta("duet_turn_capacity_refusals_total"), 1.0, "one 508:\n{after}");
    assert_eq!(delta("duet_turn_peer_denied_total"), 1.0, "one 403:\n{after}");
    let rate_limited = drops(&after, "rate_limited") - drops(&before, "rate_limited");
    assert!(
        rate_limited >= 1.0 && rate_limited <= (SENT - replies) as f64,
        "{SENT} unauthenticated requests got {replies} replies; duet_turn_drops_total{{reason=\"rate_limited\"}} grew \
         by {rate_limited}"
    );
    let all_drops = metric_sum(&after, "duet_turn_drops_total") - metric_sum(&before, "duet_turn_drops_total");
    assert_eq!(
        all_drops, rate_limited,
        "only the rate-limited requests were dropped, each under one reason (the 403 is not a drop):\n{after}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// TCP connections (issue 7 item 9)
// ---------------------------------------------------------------------------------------------------------------

/// Issue 7 item 9: TCP client connections are capped per client IP and in total; a connection over a cap is closed
/// at once (before it can send anything), the admitted ones keep working, and each refusal is counted by reason.
#[tokio::test]
async fn stream_connection_caps_close_extra_connections_at_once() {
    let (d, ready) = start_with_ready(
        "[turn]\nlisten_tcp = [\"127.0.0.1:0\"]\nstream_connections_per_ip = 2\nmax_stream_connections = 3\n",
    );
    let tcp = ready_addr(&ready, "turn_tcp").expect("the ready line names the TURN TCP listener (turn_tcp)");
    let before = d.metrics().await;
    let (one, two) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
    let mut held = Vec::new();
    for from in [one, one, two] {
        let mut c = TurnUdpClient::connect_tcp_from(from, tcp, "", "").await;
        let resp = c.binding().await;
        assert_eq!(resp.typ.class, stun::message::CLASS_SUCCESS_RESPONSE, "Binding over an admitted connection");
        held.push(c);
    }
    let per_ip = TurnUdpClient::connect_tcp_from(one, tcp, "", "").await;
    assert!(per_ip.closed_by_relay(ARRIVAL).await, "a 3rd connection from 127.0.0.1 (per-IP cap 2) must be closed");
    let three = "127.0.0.3".parse().unwrap();
    let total = TurnUdpClient::connect_tcp_from(three, tcp, "", "").await;
    assert!(total.closed_by_relay(ARRIVAL).await, "a 4th connection in total (cap 3) must be closed");
    for c in &mut held {
        let resp = c.binding().await;
        assert_eq!(resp.typ.class, stun::message::CLASS_SUCCESS_RESPONSE, "admitted connections keep working");
    }
    let after = d.metrics().await;
    let refused = |reason: &str| {
        let series = format!("duet_turn_stream_refusals_total{{reason=\"{reason}\"}}");
        counter(&after, &series) - counter(&before, &series)
    };
    assert_eq!((refused("per_ip"), refused("max_connections")), (1.0, 1.0), "{after}");
    assert_eq!(counter(&after, "duet_turn_stream_connections"), 3.0, "{after}");
    // Closing one frees its place.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    while counter(&d.metrics().await, "duet_turn_stream_connections") > 2.0 {
        assert!(Instant::now() < deadline, "a closed connection must leave duet_turn_stream_connections");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut again = TurnUdpClient::connect_tcp_from(two, tcp, "", "").await;
    assert_eq!(again.binding().await.typ.class, stun::message::CLASS_SUCCESS_RESPONSE, "room again after a close");
}

/// Issue 7 item 9: a TCP connection that keeps sending (unauthenticated Binding requests) but never authenticates a
/// TURN request is closed at `auth_deadline` (2 s here; waited for up to 15 s), while one that authenticated (an
/// Allocate) lives on past it and keeps working.
#[tokio::test]
async fn unauthenticated_stream_is_closed_at_auth_deadline() {
    let (d, ready) = start_with_ready("[turn]\nlisten_tcp = [\"127.0.0.1:0\"]\nauth_deadline = \"2s\"\n");
    let tcp = ready_addr(&ready, "turn_tcp").expect("the ready line names the TURN TCP listener (turn_tcp)");
    let booking = d.booking_now(60, 1800).await;
    let (username, credential) = credentials(&d, &booking, "host").await;
    let start = Instant::now();
    let mut authed = TurnUdpClient::connect_tcp(tcp, &username, &credential).await;
    authed.allocate().await.unwrap_or_else(|code| panic!("Allocate over TCP refused with {code}"));
    let mut chatty = TurnUdpClient::connect_tcp(tcp, "", "").await;
    assert_eq!(chatty.binding().await.typ.class, stun::message::CLASS_SUCCESS_RESPONSE);
    let mut closed = false;
    while start.elapsed() < Duration::from_secs(15) {
        if !chatty.send_binding().await || chatty.closed_by_relay(Duration::from_millis(300)).await {
            closed = true;
            break;
        }
    }
    assert!(closed, "a connection that never authenticated was still open 15 s after it opened (auth_deadline 2s)");
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(start.elapsed())).await;
    assert_eq!(authed.refresh(600).await, Ok(600), "the authenticated connection lives on past the deadline");
    let text = d.metrics().await;
    assert!(counter(&text, "duet_turn_stream_auth_timeouts_total") >= 1.0, "{text}");
    assert_eq!(counter(&text, "duet_turn_allocations_active{transport=\"tcp\"}"), 1.0, "{text}");
}

/// Issue 7 item 9 (review): a client that never authenticates and never reads, while it makes the relay write (Binding
/// replies are never suppressed on TCP), cannot keep its connection past the auth deadline with a full TCP window:
/// the writer's stuck write is abandoned and the connection and its slot are released.
#[tokio::test]
async fn a_stream_that_never_reads_is_closed_after_the_auth_deadline() {
    let (d, ready) = start_with_ready("[turn]\nlisten_tcp = [\"127.0.0.1:0\"]\nauth_deadline = \"8s\"\n");
    let tcp = ready_addr(&ready, "turn_tcp").expect("the ready line names the TURN TCP listener (turn_tcp)");
    // A small receive buffer, so that the relay's replies fill this client's TCP window soon.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(tcp).await.unwrap();
    // Binding requests (RFC 8489 §6), 20 bytes each, never read back: paced batches, so the relay's writer keeps up
    // with its queue until the TCP window (the client reads nothing) is full and its write blocks.
    let mut batch = Vec::with_capacity(20 * 256);
    for i in 0..256u32 {
        batch.extend_from_slice(&[0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42]);
        batch.extend_from_slice(&[0u8; 8]);
        batch.extend_from_slice(&i.to_be_bytes());
    }
    let flood = async {
        use tokio::io::AsyncWriteExt;
        while let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(1), s.write_all(&batch)).await {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), flood).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let open = counter(&d.metrics().await, "duet_turn_stream_connections");
        if open == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "a stream that never reads is still open ({open} open)");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(s);
}

/// Issue 7 item 9: the read buffer of a TCP connection starts small and grows to the frame being received, so a
/// near-maximal Send indication (65 000 bytes of data) is relayed whole, and short frames after it still are.
#[tokio::test]
async fn stream_relays_a_near_maximal_frame_then_short_ones() {
    let (d, ready) = start_with_ready("[turn]\nlisten_tcp = [\"127.0.0.1:0\"]\n");
    let tcp = ready_addr(&ready, "turn_tcp").expect("the ready line names the TURN TCP listener (turn_tcp)");
    let booking = d.booking_now(60, 1800).await;
    let (username, credential) = credentials(&d, &booking, "host").await;
    let mut c = TurnUdpClient::connect_tcp(tcp, &username, &credential).await;
    let relayed = c.allocate().await.unwrap_or_else(|code| panic!("Allocate over TCP refused with {code}"));
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    c.create_permission(&[peer_addr]).await.unwrap_or_else(|code| panic!("CreatePermission refused with {code}"));
    for len in [65_000usize, 100, 1_200, 30_000, 4] {
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        c.send_indication(peer_addr, &payload).await;
        let (got, from) = recv_datagram(&peer, ARRIVAL)
            .await
            .unwrap_or_else(|| panic!("the peer received nothing for a Send indication of {len} bytes over TCP"));
        assert_eq!((got.len(), from), (len, relayed), "a {len}-byte payload relayed whole from the relayed address");
        assert_eq!(got, payload);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Quotas and revocation
// ---------------------------------------------------------------------------------------------------------------

/// RFC 8656 §7.2 / issue 3: allocations per credential are capped; over the cap Allocate gets 486 Allocation Quota
/// Reached (counted), another credential is not affected, and deleting an allocation frees its slot.
#[tokio::test]
async fn allocation_quota_per_credential_answers_486() {
    let d = Daemon::start("[turn]\nallocations_per_credential = 2\n");
    let booking = d.booking_now(60, 1800).await;
    let (username, credential) = credentials(&d, &booking, "host").await;
    let before = d.metrics().await;

    let mut c1 = TurnUdpClient::connect(d.turn_udp, &username, &credential).await;
    c1.allocate().await.unwrap_or_else(|code| panic!("1st Allocate refused with {code}"));
    let mut c2 = sibling(&d, &c1, &username, &credential).await;
    c2.allocate().await.unwrap_or_else(|code| panic!("2nd Allocate refused with {code}"));
    let mut c3 = sibling(&d, &c1, &username, &credential).await;
    assert_eq!(
        c3.allocate().await,
        Err(486),
        "the 3rd allocation of one credential with allocations_per_credential = 2 must get 486"
    );

    let (g_user, g_cred) = credentials(&d, &booking, "guest").await;
    let mut g = sibling(&d, &c1, &g_user, &g_cred).await;
    g.allocate().await.unwrap_or_else(|code| panic!("the guest's credential is a separate quota, got {code}"));

    assert_eq!(c1.refresh(0).await, Ok(0), "Refresh with LIFETIME 0 deletes the allocation");
    c3.allocate().await.unwrap_or_else(|code| panic!("after one allocation was deleted, Allocate got {code}"));

    let after = d.metrics().await;
    let quota = counter(&after, "duet_turn_allocations_total{result=\"quota\"}")
        - counter(&before, "duet_turn_allocations_total{result=\"quota\"}");
    assert_eq!(quota, 1.0, "duet_turn_allocations_total{{result=\"quota\"}} must count the 486:\n{after}");
    let refusals =
        counter(&after, "duet_turn_quota_refusals_total") - counter(&before, "duet_turn_quota_refusals_total");
    assert!(refusals >= 1.0, "duet_turn_quota_refusals_total must count the 486 (grew by {refusals})");
}

/// A client with `username` / `credential`, its allocation (the relayed address), and a loopback peer socket with
/// channel 0x4000 bound to it.
async fn allocation_with_channel(
    d: &Daemon,
    username: &str,
    credential: &str,
) -> (TurnUdpClient, SocketAddr, UdpSocket) {
    let mut c = TurnUdpClient::connect(d.turn_udp, username, credential).await;
    let relayed = c.allocate().await.unwrap_or_else(|code| panic!("Allocate refused with {code}"));
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    c.channel_bind(0x4000, peer_addr).await.unwrap_or_else(|code| panic!("ChannelBind refused with {code}"));
    (c, relayed, peer)
}

/// Issue 3: a cancelled booking's credentials are revoked at once: a new Allocate and a Refresh of the existing
/// allocation get 401, and the existing allocation stops relaying in both directions; other bookings are unaffected.
#[tokio::test]
async fn cancelled_booking_revokes_credentials_and_stops_relaying() {
    let d = Daemon::start("");
    let booking = d.booking_now(60, 1800).await;
    let booking_id = booking["id"].as_str().expect("booking id").to_string();
    let (username, credential) = credentials(&d, &booking, "host").await;
    let (g_user, g_cred) = credentials(&d, &booking, "guest").await;
    let other = d.booking_now(60, 1800).await;
    let (o_user, o_cred) = credentials(&d, &other, "guest").await;

    let (mut c, relayed, peer) = allocation_with_channel(&d, &username, &credential).await;
    assert_client_to_peer(&c, 0x4000, &peer, relayed, b"before the cancel").await;
    assert_peer_to_client(&mut c, &peer, relayed, b"before the cancel, back").await;
    let before = d.metrics().await;

    let (status, body) = cancel_booking(&d, &booking_id).await;
    assert_eq!(status, 200, "cancel: {body}");
    assert_eq!(body["status"], "cancelled", "cancel: {body}");

    // The allocation is torn down at once: nothing is relayed any more, either way.
    c.send_channel_data(0x4000, b"after the cancel").await;
    if let Some((got, from)) = recv_datagram(&peer, QUIET).await {
        panic!("the cancelled booking's allocation still relays client -> peer: {got:?} from {from}");
    }
    let _ = peer.send_to(b"after the cancel, back", relayed).await;
    if let Some(got) = c.recv_relayed(QUIET).await {
        panic!("the cancelled booking's allocation still relays peer -> client: {got:?}");
    }

    assert_eq!(c.refresh(600).await, Err(401), "Refresh with a cancelled booking's credentials must get 401");
    let mut again = sibling(&d, &c, &username, &credential).await;
    assert_eq!(again.allocate().await, Err(401), "a new Allocate with the cancelled booking's host credentials");
    let mut guest = sibling(&d, &c, &g_user, &g_cred).await;
    assert_eq!(guest.allocate().await, Err(401), "a new Allocate with the cancelled booking's guest credentials");

    let mut unrelated = sibling(&d, &c, &o_user, &o_cred).await;
    unrelated.allocate().await.unwrap_or_else(|code| panic!("another booking's credentials got {code}"));

    let after = d.metrics().await;
    assert_eq!(
        metric(&after, "duet_turn_allocations_active{transport=\"udp\"}"),
        Some(1.0),
        "only the other booking's allocation is alive after the cancel:\n{after}"
    );
    let revoked = counter(&after, "duet_turn_allocations_total{result=\"revoked\"}")
        - counter(&before, "duet_turn_allocations_total{result=\"revoked\"}");
    assert!(revoked >= 2.0, "the two Allocates with revoked credentials must be counted as revoked (+{revoked})");
}

// ---------------------------------------------------------------------------------------------------------------
// Bandwidth caps
// ---------------------------------------------------------------------------------------------------------------

const BURST_PACKETS: usize = 200;
const PACKET: usize = 1000;

/// Counts datagrams arriving on `sock` until none has come for `QUIET`.
async fn count_at_peer(sock: &UdpSocket) -> usize {
    let mut n = 0;
    while recv_datagram(sock, QUIET).await.is_some() {
        n += 1;
    }
    n
}

async fn count_at_client(c: &mut TurnUdpClient) -> usize {
    let mut n = 0;
    while c.recv_relayed(QUIET).await.is_some() {
        n += 1;
    }
    n
}

/// Sends `BURST_PACKETS` ChannelData of `PACKET` bytes, 10 at a time with a short pause (so that the kernel's
/// socket buffers, not the cap, are never what drops them).
async fn burst_from_client(c: &TurnUdpClient, channel: u16) {
    let payload = vec![0x5a; PACKET];
    for i in 0..BURST_PACKETS {
        c.send_channel_data(channel, &payload).await;
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Asserts the drop counter for bandwidth counted (most of) the `dropped` datagrams (sent minus received; a few may
/// have been lost elsewhere on a loaded machine); explains when the series does not exist at all.
fn assert_bandwidth_drops_counted(before: &str, after: &str, dropped: usize) {
    let series = "duet_turn_drops_total{reason=\"bandwidth\"}";
    let Some(now) = metric(after, series) else {
        let exported: Vec<&str> = after.lines().filter(|l| l.starts_with("duet_turn_drops_total")).collect();
        panic!(
            "no {series} series in /metrics although {dropped} datagrams were dropped by the bandwidth cap: the relay \
             core counts them (duet_relay::server::Stats::drops_bandwidth) but src/relay_io/mod.rs export_metrics \
             does not export that counter. Exported drop series:\n{}",
            exported.join("\n")
        );
    };
    let grown = now - metric(before, series).unwrap_or(0.0);
    assert!(grown >= dropped as f64 * 0.75, "{series} grew by {grown}, but {dropped} datagrams were dropped");
}

/// Issue 3 ("per-allocation ... bandwidth caps"): with max_bps_per_allocation = 20000 (token bucket of 64 KiB, the
/// minimum burst) a burst of 200 x 1000 bytes gets about 65 datagrams through in each direction and the rest is
/// dropped and counted; after a pause the bucket has refilled and data flows again (a cap, not a block).
#[tokio::test]
async fn bandwidth_cap_per_allocation_drops_and_counts() {
    let d = Daemon::start("[turn]\nmax_bps_per_allocation = 20000\n");
    let booking = d.booking_now(60, 1800).await;
    let (username, credential) = credentials(&d, &booking, "host").await;
    let (mut c, relayed, peer) = allocation_with_channel(&d, &username, &credential).await;
    let before = d.metrics().await;

    burst_from_client(&c, 0x4000).await;
    let to_peer = count_at_peer(&peer).await;

    let payload = vec![0xa5; PACKET];
    for i in 0..BURST_PACKETS {
        peer.send_to(&payload, relayed).await.unwrap();
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let to_client = count_at_client(&mut c).await;
    let after = d.metrics().await;

    for (dir, n) in [("client -> peer", to_peer), ("peer -> client", to_client)] {
        assert!(
            (40..=100).contains(&n),
            "{dir}: {n} of {BURST_PACKETS} x {PACKET} B went through a 20000 B/s cap with a 64 KiB burst; want \
             about 65 (at least 40, at most 100)"
        );
    }
    let relayed_to_peer = counter(&after, "duet_turn_relayed_packets_total{direction=\"to_peer\"}")
        - counter(&before, "duet_turn_relayed_packets_total{direction=\"to_peer\"}");
    assert_eq!(relayed_to_peer, to_peer as f64, "relayed to_peer packets must count only what passed the cap");

    // 1.5 s later the bucket holds 30 000 bytes again: 20 slow datagrams all get through.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 0..20u8 {
        assert_client_to_peer(&c, 0x4000, &peer, relayed, &[i; PACKET]).await;
    }

    assert_bandwidth_drops_counted(&before, &after, 2 * BURST_PACKETS - to_peer - to_client);
}

/// Issue 3 ("... and total bandwidth caps"): max_bps_total = 20000 is shared by all allocations: after one
/// allocation used the burst, another one gets (almost) nothing through.
#[tokio::test]
async fn bandwidth_cap_total_is_shared_by_allocations() {
    let d = Daemon::start("[turn]\nmax_bps_total = 20000\n");
    let booking = d.booking_now(60, 1800).await;
    let (h_user, h_cred) = credentials(&d, &booking, "host").await;
    let (g_user, g_cred) = credentials(&d, &booking, "guest").await;
    let mut a = TurnUdpClient::connect(d.turn_udp, &h_user, &h_cred).await;
    a.allocate().await.unwrap_or_else(|code| panic!("Allocate A refused with {code}"));
    let mut b = sibling(&d, &a, &g_user, &g_cred).await;
    b.allocate().await.unwrap_or_else(|code| panic!("Allocate B refused with {code}"));
    let peer_a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    a.channel_bind(0x4000, peer_a.local_addr().unwrap()).await.expect("ChannelBind A");
    b.channel_bind(0x4000, peer_b.local_addr().unwrap()).await.expect("ChannelBind B");
    let before = d.metrics().await;

    burst_from_client(&a, 0x4000).await;
    burst_from_client(&b, 0x4000).await;
    let (got_a, got_b) = (count_at_peer(&peer_a).await, count_at_peer(&peer_b).await);
    let after = d.metrics().await;
    assert!(
        got_a + got_b <= 100,
        "a 20000 B/s total cap with a 64 KiB burst let {got_a} + {got_b} of {} x {PACKET} B through; want about 65",
        2 * BURST_PACKETS
    );
    assert!(got_a >= 40, "the first allocation should get the burst through (about 65), got {got_a}");
    assert!(got_b <= 10, "the total cap was used up by the first allocation, yet the second got {got_b} through");
    assert_bandwidth_drops_counted(&before, &after, 2 * BURST_PACKETS - got_a - got_b);
}

// ---------------------------------------------------------------------------------------------------------------
// Secret rotation (SIGHUP)
// ---------------------------------------------------------------------------------------------------------------

/// coturn's TURN REST password: base64(HMAC-SHA1(secret, username)); Duet keys the HMAC with the secret's text.
fn rest_password(secret: &str, username: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn read_secrets(d: &Daemon) -> toml::Table {
    let path = d.data_dir.join("secrets.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    toml::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// Rewrites `turn_secrets` in secrets.toml in place (the file keeps its 0600 mode) and sends SIGHUP.
fn set_turn_secrets_and_reload(d: &Daemon, secrets: &[&str]) {
    let mut table = read_secrets(d);
    table.insert(
        "turn_secrets".into(),
        toml::Value::Array(secrets.iter().map(|s| toml::Value::String(s.to_string())).collect()),
    );
    let path = d.data_dir.join("secrets.toml");
    std::fs::write(&path, toml::to_string(&table).unwrap()).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    sighup(d);
}

fn new_secret() -> String {
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
}

/// README "Operations" / issue 3: several TURN secrets are valid at once. After a new secret is put first in
/// secrets.toml and SIGHUP, joins hand out credentials signed with the new one while credentials signed with the old
/// one keep allocating (and the allocation made with them keeps working); once the old secret is removed and SIGHUP
/// again, its credentials get 401 on every request. A credential signed with an unknown secret never works.
#[tokio::test]
async fn sighup_rotates_turn_secrets() {
    let d = Daemon::start("");
    let booking = d.booking_now(60, 1800).await;
    let secrets = read_secrets(&d);
    let old = secrets["turn_secrets"][0].as_str().expect("turn_secrets[0] in secrets.toml").to_string();
    let (h_user, h_old_cred) = credentials(&d, &booking, "host").await;
    assert_eq!(h_old_cred, rest_password(&old, &h_user), "join credentials are base64(HMAC-SHA1(turn_secrets[0]))");

    let mut forged = TurnUdpClient::connect(d.turn_udp, &h_user, &rest_password(&new_secret(), &h_user)).await;
    assert_eq!(forged.allocate().await, Err(401), "a credential signed with an unknown secret");

    let mut held = sibling(&d, &forged, &h_user, &h_old_cred).await;
    held.allocate().await.unwrap_or_else(|code| panic!("Allocate with the join credentials got {code}"));

    // Rotation: the new secret first, the old one still accepted.
    let new = new_secret();
    set_turn_secrets_and_reload(&d, &[&new, &old]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (g_user, g_new_cred) = loop {
        let (user, cred) = credentials(&d, &booking, "guest").await;
        if cred == rest_password(&new, &user) {
            break (user, cred);
        }
        assert_eq!(cred, rest_password(&old, &user), "a join credential signed with neither secret");
        assert!(Instant::now() < deadline, "10 s after SIGHUP joins still hand out credentials of the old secret");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (_, h_new_cred) = credentials(&d, &booking, "host").await;
    assert_eq!(h_new_cred, rest_password(&new, &h_user), "after the reload the host's credential uses the new secret");

    let mut with_old = sibling(&d, &forged, &h_user, &h_old_cred).await;
    with_old.allocate().await.unwrap_or_else(|code| panic!("old-secret credential after the rotation got {code}"));
    let mut with_new = sibling(&d, &forged, &g_user, &g_new_cred).await;
    with_new.allocate().await.unwrap_or_else(|code| panic!("new-secret credential after the rotation got {code}"));
    held.refresh(600).await.unwrap_or_else(|code| panic!("Refresh of the allocation made before the rotation: {code}"));

    // Retirement of the old secret.
    set_turn_secrets_and_reload(&d, &[&new]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut probe = sibling(&d, &forged, &h_user, &h_old_cred).await;
        match probe.allocate().await {
            Err(401) => break,
            Ok(_) => {
                assert!(Instant::now() < deadline, "10 s after removing the old secret its credentials still allocate");
                let _ = probe.refresh(0).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(code) => panic!("Allocate with a retired secret's credential: got {code}, want 401"),
        }
    }
    assert_eq!(held.refresh(600).await, Err(401), "every request is re-authenticated: the retired secret's Refresh");
    let mut still_new = sibling(&d, &forged, &g_user, &g_new_cred).await;
    still_new.allocate().await.unwrap_or_else(|code| panic!("new-secret credential after retiring the old got {code}"));
}
