//! Bandwidth caps (research/turn.md §3.2 item 15) and legacy static long-term credentials
//! (DESIGN §4, item 13 quotas), on virtual time.

mod common;

use std::time::Duration;

use common::*;
use duet_relay::channel::write_channel_data_header;
use duet_relay::server::{BANDWIDTH_MIN_BURST, bandwidth_burst};
use duet_relay::stun::{Attribute, Class, Message, MessageEncoder, Method, TransactionId};
use duet_relay::{ChannelNumber, ClientDelivery, Server, ServerConfig, StaticCredential};

const HOUR: u64 = 3600;
const PEER: &str = "8.8.4.4:6000";

fn channel_data(ch: u16, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; 4 + len];
    write_channel_data_header(&mut buf, ChannelNumber::new(ch).unwrap(), len as u16);
    buf
}

fn send_indication(peer: &str, len: usize) -> Vec<u8> {
    let data = vec![0u8; len];
    let mut e = MessageEncoder::new(Class::Indication, Method::SEND, TransactionId([7; 12]));
    e.attribute(&Attribute::XorPeerAddress(addr(peer))).attribute(&Attribute::Data(&data));
    e.finish().unwrap()
}

/// A client with a channel 0x4000 bound to `PEER`; returns its relay address.
fn channel_client(h: &mut Harness, client: &str, booking: &str) -> (Client, std::net::SocketAddr) {
    let mut c = Client::new(client, booking, "host", UNIX0 + 10 * HOUR);
    let relay = c.allocate(h);
    let bind = [Attribute::ChannelNumber(0x4000), Attribute::XorPeerAddress(addr(PEER))];
    assert_eq!(class(&c.call(h, Method::CHANNEL_BIND, &bind)), Class::SuccessResponse);
    (c, relay)
}

/// How many of `n` ChannelData datagrams of `len` bytes sent at the current instant pass.
fn burst_to_peer(h: &mut Harness, c: &Client, n: usize, len: usize) -> usize {
    let pkt = channel_data(0x4000, len);
    (0..n).filter(|_| h.input(c.five_tuple, &pkt).0.is_some()).count()
}

fn burst_to_client(h: &mut Harness, relay: std::net::SocketAddr, n: usize, len: usize) -> usize {
    (0..n).filter(|_| h.server.handle_peer_input(h.now, relay, addr(PEER), len).is_some()).count()
}

#[test]
fn burst_sizes() {
    assert_eq!(bandwidth_burst(0), 0);
    assert_eq!(bandwidth_burst(1), BANDWIDTH_MIN_BURST);
    assert_eq!(bandwidth_burst(1_000_000), 1_000_000);
    assert_eq!(bandwidth_burst(u64::MAX), u64::MAX);
    let cfg = ServerConfig::new("duet", vec![b"s".to_vec()], [0; 32]);
    assert_eq!((cfg.max_bytes_per_second_per_allocation, cfg.max_bytes_per_second_total), (None, None));
    assert!(cfg.static_credentials.is_empty());
}

/// Item 15: the per-allocation cap is a token bucket of one second's worth of bytes that
/// refills at the configured rate; each direction has its own bucket; dropped datagrams are
/// counted and not reported as relayed.
#[test]
fn per_allocation_cap_each_direction() {
    let mut cfg = config();
    cfg.max_bytes_per_second_per_allocation = Some(100_000);
    let mut h = Harness::new(cfg);
    let (c, relay) = channel_client(&mut h, "192.0.2.50:40000", "b1");
    // Burst: exactly 100 datagrams of 1000 bytes, the 101st is dropped.
    assert_eq!(burst_to_peer(&mut h, &c, 150, 1000), 100);
    assert_eq!(h.server.stats().drops_bandwidth, 50);
    assert_eq!(h.server.stats().relayed_bytes_to_peer, 100_000);
    // The other direction is not affected.
    assert_eq!(burst_to_client(&mut h, relay, 150, 1000), 100);
    assert_eq!(h.server.stats().drops_bandwidth, 100);
    assert_eq!(h.server.stats().relayed_bytes_to_client, 100_000);
    // 10 ms later, 1000 bytes more may pass in each direction.
    h.now += Duration::from_millis(10);
    assert_eq!(burst_to_peer(&mut h, &c, 5, 1000), 1);
    assert_eq!(burst_to_client(&mut h, relay, 5, 1000), 1);
    // Sustained: 50 ms steps of 5000 bytes at exactly the rate all pass.
    for _ in 0..40 {
        h.now += Duration::from_millis(50);
        assert_eq!(burst_to_peer(&mut h, &c, 5, 1000), 5);
    }
    // A long pause refills only up to the burst.
    h.now += Duration::from_secs(60);
    assert_eq!(burst_to_peer(&mut h, &c, 150, 1000), 100);
    // Send indications use the same bucket.
    let (t, _) = h.input(c.five_tuple, &send_indication(PEER, 10));
    assert!(t.is_none(), "bucket empty");
}

/// Item 15: a second allocation has its own bucket.
#[test]
fn per_allocation_cap_is_per_allocation() {
    let mut cfg = config();
    cfg.max_bytes_per_second_per_allocation = Some(100_000);
    let mut h = Harness::new(cfg);
    let (a, _) = channel_client(&mut h, "192.0.2.50:40000", "b1");
    let (b, _) = channel_client(&mut h, "192.0.2.51:40000", "b2");
    assert_eq!(burst_to_peer(&mut h, &a, 200, 1000), 100);
    assert_eq!(burst_to_peer(&mut h, &b, 200, 1000), 100);
}

/// Item 15: a small cap still lets a maximal datagram through (burst ≥ 64 KiB) and then
/// enforces the long-run rate.
#[test]
fn small_cap_keeps_large_datagrams_possible() {
    let mut cfg = config();
    cfg.max_bytes_per_second_per_allocation = Some(1_000);
    let mut h = Harness::new(cfg);
    let (c, _) = channel_client(&mut h, "192.0.2.50:40000", "b1");
    assert_eq!(burst_to_peer(&mut h, &c, 1, 65_535), 1);
    assert_eq!(burst_to_peer(&mut h, &c, 1, 100), 0);
    h.now += Duration::from_millis(100);
    assert_eq!(burst_to_peer(&mut h, &c, 1, 100), 1, "100 ms at 1000 B/s = 100 bytes (+1 left)");
    assert_eq!(burst_to_peer(&mut h, &c, 1, 2), 0);
}

/// Item 15: the total cap counts every allocation and both directions together.
#[test]
fn total_cap_across_allocations_and_directions() {
    let mut cfg = config();
    cfg.max_bytes_per_second_total = Some(200_000);
    let mut h = Harness::new(cfg);
    let (a, relay_a) = channel_client(&mut h, "192.0.2.50:40000", "b1");
    let (b, _) = channel_client(&mut h, "192.0.2.51:40000", "b2");
    assert_eq!(burst_to_peer(&mut h, &a, 120, 1000), 120);
    assert_eq!(burst_to_client(&mut h, relay_a, 50, 1000), 50);
    assert_eq!(burst_to_peer(&mut h, &b, 100, 1000), 30, "only 30 kB of the server budget left");
    assert_eq!(h.server.stats().drops_bandwidth, 70);
    h.now += Duration::from_millis(500);
    assert_eq!(burst_to_peer(&mut h, &b, 200, 1000), 100);
}

/// Item 15: a cap of 0 relays nothing; no cap relays everything.
#[test]
fn zero_cap_and_no_cap() {
    let mut cfg = config();
    cfg.max_bytes_per_second_per_allocation = Some(0);
    let mut h = Harness::new(cfg);
    let (c, relay) = channel_client(&mut h, "192.0.2.50:40000", "b1");
    assert_eq!(burst_to_peer(&mut h, &c, 3, 1), 0);
    assert_eq!(burst_to_client(&mut h, relay, 3, 1), 0);

    let mut h = Harness::new(config());
    let (c, relay) = channel_client(&mut h, "192.0.2.50:40000", "b1");
    assert_eq!(burst_to_peer(&mut h, &c, 2000, 1200), 2000);
    assert_eq!(burst_to_client(&mut h, relay, 2000, 1200), 2000);
    assert_eq!(h.server.stats().drops_bandwidth, 0);
}

/// Item 15: a capped datagram is dropped silently; the client's delivery for the next allowed
/// one is unchanged (channel stays bound).
#[test]
fn capped_peer_data_keeps_channel() {
    let mut cfg = config();
    cfg.max_bytes_per_second_per_allocation = Some(100_000);
    let mut h = Harness::new(cfg);
    let (c, relay) = channel_client(&mut h, "192.0.2.50:40000", "b1");
    assert_eq!(burst_to_client(&mut h, relay, 1, 100_000), 1);
    assert_eq!(h.server.handle_peer_input(h.now, relay, addr(PEER), 1), None);
    h.now += Duration::from_millis(1);
    assert_eq!(
        h.server.handle_peer_input(h.now, relay, addr(PEER), 100),
        Some(ClientDelivery::ChannelData { to: c.five_tuple, channel: ChannelNumber::new(0x4000).unwrap() })
    );
}

// ---------------------------------------------------------------------------------------
// Static credentials.

fn static_cred(username: &str, password: &str, max_allocations: u32) -> StaticCredential {
    StaticCredential { username: username.into(), password: password.into(), max_allocations }
}

fn static_client(client: &str, username: &str, password: &str) -> Client {
    let mut c = Client::new(client, "unused", "unused", 0);
    c.username = username.into();
    c.password = password.into();
    c
}

fn static_config() -> ServerConfig {
    let mut cfg = config();
    cfg.static_credentials = vec![static_cred("alice", "wonderland", 2), static_cred("al", "other", 1)];
    cfg
}

/// Static credentials authenticate with MD5(username:realm:password), have their own quota
/// (486 beyond it, independent of `max_allocations_per_credential`), and never expire.
#[test]
fn static_credential_allocates_with_own_quota_and_never_expires() {
    let mut cfg = static_config();
    cfg.max_allocations_per_credential = 10;
    let mut h = Harness::new(cfg);
    let mut a1 = static_client("192.0.2.50:1", "alice", "wonderland");
    let relay = a1.allocate(&mut h);
    let resp = a1.call(&mut h, Method::REFRESH, &[Attribute::Lifetime(3600)]);
    assert_eq!(Message::decode(&resp).unwrap().verify_integrity(&a1.key()), Ok(()));
    let mut a2 = static_client("192.0.2.50:2", "alice", "wonderland");
    a2.allocate(&mut h);
    let mut a3 = static_client("192.0.2.50:3", "alice", "wonderland");
    a3.nonce = a1.nonce.clone();
    assert_eq!(error(&a3.call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(17)])), Some(486));
    // "al" is a different credential (a prefix must not match) with quota 1.
    let mut b = static_client("192.0.2.60:1", "al", "other");
    b.allocate(&mut h);
    let mut b2 = static_client("192.0.2.60:2", "al", "other");
    b2.nonce = b.nonce.clone();
    assert_eq!(error(&b2.call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(17)])), Some(486));
    // Password of another static user, or alice's REST-style password: 401.
    let mut wrong = static_client("192.0.2.70:1", "al", "wonderland");
    wrong.nonce = a1.nonce.clone();
    assert_eq!(error(&wrong.call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(17)])), Some(401));
    assert_eq!(h.server.stats().quota_refusals, 2);

    // Keep alice's first allocation alive for a day of refreshes: no credential expiry.
    for _ in 0..30 {
        let cmds = h.advance(Duration::from_secs(3000));
        assert!(!freed(&cmds).contains(&relay));
        let cmds = a1.exchange(&mut h, Method::REFRESH, &[Attribute::Lifetime(3600)]);
        assert_eq!(class(&only_message(&cmds)), Class::SuccessResponse);
    }
    // The other allocations expired normally; alice's first one is still there.
    assert_eq!(h.server.allocation_count(), 1);
    // Two years later the credential still allocates.
    h.advance(Duration::from_secs(2 * 365 * 24 * 3600));
    assert_eq!(h.server.allocation_count(), 0);
    let mut later = static_client("192.0.2.50:9", "alice", "wonderland");
    later.allocate(&mut h);
    assert_eq!(h.server.stats().allocations_credential_expired, 0);
}

/// Static credentials obey every other control: per-source-IP and total quotas, the peer
/// policy, permission caps, stale nonces, and revocation of a booking does not touch them.
#[test]
fn static_credential_obeys_other_controls() {
    let mut cfg = static_config();
    cfg.max_allocations_per_source_ip = 1;
    cfg.max_permissions_per_allocation = 1;
    let mut h = Harness::new(cfg);
    let mut a = static_client("192.0.2.50:1", "alice", "wonderland");
    let relay = a.allocate(&mut h);
    let mut a2 = static_client("192.0.2.50:2", "alice", "wonderland");
    a2.nonce = a.nonce.clone();
    assert_eq!(error(&a2.call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(17)])), Some(486), "per IP");
    let p = |s: &str| [Attribute::XorPeerAddress(addr(s))];
    assert_eq!(error(&a.call(&mut h, Method::CREATE_PERMISSION, &p("127.0.0.1:1"))), Some(403));
    assert_eq!(error(&a.call(&mut h, Method::CREATE_PERMISSION, &p("[::ffff:169.254.169.254]:80"))), Some(443));
    assert_eq!(class(&a.call(&mut h, Method::CREATE_PERMISSION, &p("8.8.8.8:1"))), Class::SuccessResponse);
    assert_eq!(error(&a.call(&mut h, Method::CREATE_PERMISSION, &p("8.8.4.4:1"))), Some(508));
    assert_eq!(h.server.revoke_booking(h.now, "alice", UNIX0 + HOUR), 0);
    assert_eq!(h.server.revoke_booking(h.now, "", UNIX0 + HOUR), 0);
    h.now += Duration::from_secs(601);
    assert_eq!(error(&a.call(&mut h, Method::REFRESH, &[])), Some(438), "nonces still expire");
    let cmds = h.advance(Duration::ZERO);
    assert_eq!(freed(&cmds), vec![relay], "the allocation lifetime still applies");

    let mut cfg = static_config();
    cfg.max_allocations_total = 1;
    let mut h = Harness::new(cfg);
    static_client("192.0.2.50:1", "alice", "wonderland").allocate(&mut h);
    let mut b = static_client("192.0.2.51:1", "al", "other");
    let r = only_message(&h.input(b.five_tuple, &b.unauthenticated(Method::ALLOCATE, &[])).1);
    b.learn_nonce(&r);
    assert_eq!(error(&b.call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(17)])), Some(508));
}

/// Reload: removing a static credential tears its allocations down at once; a changed
/// password takes effect on the next request; a new credential works without restart.
#[test]
fn set_static_credentials_reloads() {
    let mut h = Harness::new(static_config());
    let mut a = static_client("192.0.2.50:1", "alice", "wonderland");
    a.allocate(&mut h);
    let mut b = static_client("192.0.2.51:1", "al", "other");
    let relay_b = b.allocate(&mut h);
    let mut rest = Client::new("192.0.2.52:1", "b1", "host", UNIX0 + HOUR);
    rest.allocate(&mut h);

    let n =
        h.server.set_static_credentials(vec![static_cred("alice", "new-password", 2), static_cred("carol", "c", 1)]);
    assert_eq!(n, 1, "al was removed");
    assert_eq!(freed(&h.drain()), vec![relay_b]);
    assert_eq!(h.server.allocation_count(), 2, "alice's and the REST allocation stay");
    assert_eq!(error(&b.call(&mut h, Method::REFRESH, &[])), Some(401));
    assert_eq!(error(&a.call(&mut h, Method::REFRESH, &[])), Some(401), "old password");
    a.password = "new-password".into();
    assert_eq!(class(&a.call(&mut h, Method::REFRESH, &[])), Class::SuccessResponse);
    let mut c = static_client("192.0.2.53:1", "carol", "c");
    c.allocate(&mut h);
    assert_eq!(h.server.allocation_count(), 3);
    assert_eq!(h.server.stats().allocations_revoked, 1);
}

/// A reload while a static allocation waits for its relay socket cancels it.
#[test]
fn set_static_credentials_cancels_pending() {
    let mut h = Harness::new(static_config());
    let mut a = static_client("192.0.2.50:1", "alice", "wonderland");
    let r = only_message(&h.input(a.five_tuple, &a.unauthenticated(Method::ALLOCATE, &[])).1);
    a.learn_nonce(&r);
    let req = a.request(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    let (_, cmds) = h.input(a.five_tuple, &req);
    assert_eq!(h.server.set_static_credentials(Vec::new()), 1);
    let cmds = h.bind_relays(cmds);
    assert_eq!(freed(&cmds).len(), 1);
    assert_eq!(h.server.allocation_count(), 0);
}

/// Without static credentials configured, a static-looking username is just an invalid REST
/// username (401); the config `Debug` hides passwords.
#[test]
fn no_static_credentials_by_default_and_debug_hides_passwords() {
    let mut h = Harness::new(config());
    let mut a = static_client("192.0.2.50:1", "alice", "wonderland");
    let r = only_message(&h.input(a.five_tuple, &a.unauthenticated(Method::ALLOCATE, &[])).1);
    a.learn_nonce(&r);
    assert_eq!(error(&a.call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(17)])), Some(401));
    let cfg = static_config();
    let text = format!("{cfg:?} {:?} {:?}", cfg.static_credentials, Server::new(cfg.clone(), h.now, h.unix_now()));
    assert!(!text.contains("wonderland"), "{text}");
}
