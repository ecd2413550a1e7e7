//! Scenario tests: permissions, channels, data in both directions, peer policy.

mod common;

use std::time::Duration;

use common::*;
use duet_relay::channel::{parse_channel_data, write_channel_data_header};
use duet_relay::stun::{Attribute, Class, Message, MessageEncoder, Method, TransactionId, attr};
use duet_relay::{ClientDelivery, PeerPolicy, Transport, encode_data_indication};

const HOUR: u64 = 3600;
const PEER: &str = "8.8.4.4:6000";

fn send_indication(peer: &str, data: &[u8]) -> Vec<u8> {
    let mut e = MessageEncoder::new(Class::Indication, Method::SEND, TransactionId([7; 12]));
    e.attribute(&Attribute::XorPeerAddress(addr(peer)))
        .attribute(&Attribute::DontFragment)
        .attribute(&Attribute::Data(data));
    e.finish().unwrap()
}

fn setup() -> (Harness, Client, std::net::SocketAddr) {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + 10 * HOUR);
    let relay = c.allocate(&mut h);
    (h, c, relay)
}

#[test]
fn send_indication_needs_permission_then_relays_both_ways() {
    let (mut h, mut c, relay) = setup();
    // Without permission: dropped, no response ever.
    let (t, cmds) = h.input(c.five_tuple, &send_indication(PEER, b"hi"));
    assert!(t.is_none() && cmds.is_empty());
    assert_eq!(h.server.handle_peer_input(h.now, relay, addr(PEER), 10), None);
    assert_eq!(h.server.stats().drops_no_permission, 2);

    let resp = c.call(&mut h, Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(addr(PEER))]);
    let m = Message::decode(&resp).unwrap();
    assert_eq!(m.class(), Class::SuccessResponse);
    assert_eq!(m.verify_integrity(&c.key()), Ok(()));

    let (t, cmds) = h.input(c.five_tuple, &send_indication(PEER, b"hello peer"));
    assert!(cmds.is_empty());
    assert_eq!(t, Some((relay, addr(PEER), b"hello peer".to_vec())));
    // The permission is per IP: another port of the same peer IP works too.
    let (t, _) = h.input(c.five_tuple, &send_indication("8.8.4.4:7000", b"x"));
    assert!(t.is_some());
    // Peer → client without a channel: a Data indication.
    let d = h.server.handle_peer_input(h.now, relay, addr("8.8.4.4:7000"), 5);
    assert_eq!(d, Some(ClientDelivery::DataIndication { to: c.five_tuple }));
    let mut out = Vec::new();
    encode_data_indication(addr("8.8.4.4:7000"), b"reply", &mut out);
    let m = Message::decode(&out).unwrap();
    assert_eq!((m.class(), m.method()), (Class::Indication, Method::DATA));
    assert_eq!(m.get(attr::DATA), Some(Ok(Attribute::Data(b"reply"))));
    // Another IP still has no permission.
    assert_eq!(h.server.handle_peer_input(h.now, relay, addr("8.8.8.8:6000"), 5), None);
    let s = h.server.stats();
    assert_eq!((s.relayed_packets_to_peer, s.relayed_bytes_to_peer), (2, 11));
    assert_eq!((s.relayed_packets_to_client, s.relayed_bytes_to_client), (1, 5));
}

#[test]
fn channel_bind_and_channel_data_both_ways() {
    let (mut h, mut c, relay) = setup();
    // Unbound channel: dropped.
    let (t, _) = h.input(c.five_tuple, &channel_data(0x4000, b"x"));
    assert!(t.is_none());
    assert_eq!(h.server.stats().drops_unknown_channel, 1);

    let resp = c.call(
        &mut h,
        Method::CHANNEL_BIND,
        &[Attribute::ChannelNumber(0x4000), Attribute::XorPeerAddress(addr(PEER))],
    );
    assert_eq!(class(&resp), Class::SuccessResponse);

    let (t, cmds) = h.input(c.five_tuple, &channel_data(0x4000, b"media"));
    assert!(cmds.is_empty());
    assert_eq!(t, Some((relay, addr(PEER), b"media".to_vec())));
    // Padded ChannelData (TCP framing) relays only the payload.
    let mut padded = channel_data(0x4000, b"abcde");
    padded.extend_from_slice(&[0, 0, 0]);
    let (t, _) = h.input(c.five_tuple, &padded);
    assert_eq!(t.map(|t| t.2), Some(b"abcde".to_vec()));

    // Peer → client goes as ChannelData; the driver writes the header in place.
    let d = h.server.handle_peer_input(h.now, relay, addr(PEER), 3);
    let Some(ClientDelivery::ChannelData { to, channel }) = d else { panic!("{d:?}") };
    assert_eq!((to, channel.get()), (c.five_tuple, 0x4000));
    let mut buf = [0u8, 0, 0, 0, b'a', b'b', b'c'];
    write_channel_data_header(&mut buf, channel, 3);
    assert_eq!(parse_channel_data(&buf), Ok((channel, &b"abc"[..])));
    // Same IP, other port: permission yes, channel no → Data indication.
    assert_eq!(
        h.server.handle_peer_input(h.now, relay, addr("8.8.4.4:6001"), 3),
        Some(ClientDelivery::DataIndication { to: c.five_tuple })
    );

    // Refreshing the same binding is fine; rebinding to another peer or channel is not.
    let same = [Attribute::ChannelNumber(0x4000), Attribute::XorPeerAddress(addr(PEER))];
    assert_eq!(class(&c.call(&mut h, Method::CHANNEL_BIND, &same)), Class::SuccessResponse);
    let other_peer = [Attribute::ChannelNumber(0x4000), Attribute::XorPeerAddress(addr("8.8.8.8:1"))];
    assert_eq!(error(&c.call(&mut h, Method::CHANNEL_BIND, &other_peer)), Some(400));
    let other_channel = [Attribute::ChannelNumber(0x4001), Attribute::XorPeerAddress(addr(PEER))];
    assert_eq!(error(&c.call(&mut h, Method::CHANNEL_BIND, &other_channel)), Some(400));
    let bad_number = [Attribute::ChannelNumber(0x3FFF), Attribute::XorPeerAddress(addr("8.8.8.8:1"))];
    assert_eq!(error(&c.call(&mut h, Method::CHANNEL_BIND, &bad_number)), Some(400));
    let reserved = [Attribute::ChannelNumber(0x8000), Attribute::XorPeerAddress(addr("8.8.8.8:1"))];
    assert_eq!(error(&c.call(&mut h, Method::CHANNEL_BIND, &reserved)), Some(400));
}

#[test]
fn channel_data_from_another_five_tuple_is_dropped() {
    let (mut h, mut c, _) = setup();
    c.call(&mut h, Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4000), Attribute::XorPeerAddress(addr(PEER))]);
    let mut spoof = c.five_tuple;
    spoof.client = addr("192.0.2.66:40000");
    let (t, _) = h.input(spoof, &channel_data(0x4000, b"x"));
    assert!(t.is_none());
    assert_eq!(h.server.stats().drops_no_allocation, 1);
    let (t, _) = h.input(spoof, &send_indication(PEER, b"x"));
    assert!(t.is_none());
}

#[test]
fn permissions_and_channels_expire() {
    let (mut h, mut c, relay) = setup();
    c.call(&mut h, Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4000), Attribute::XorPeerAddress(addr(PEER))]);
    // Let the permission (300 s) lapse; the allocation lives 600 s.
    h.advance(Duration::from_secs(301));
    assert_eq!(h.server.handle_peer_input(h.now, relay, addr(PEER), 1), None);
    let (t, _) = h.input(c.five_tuple, &channel_data(0x4000, b"x"));
    assert!(t.is_none(), "channel alone does not imply a live permission");
    // Refresh the permission: traffic flows on the channel again.
    let resp = only_message(&c.exchange(&mut h, Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(addr(PEER))]));
    assert_eq!(class(&resp), Class::SuccessResponse);
    assert_eq!(class(&c.call(&mut h, Method::REFRESH, &[])), Class::SuccessResponse);
    assert!(h.input(c.five_tuple, &channel_data(0x4000, b"x")).0.is_some());
    // After 600 s the channel is gone (permission refreshed at 301 s is still alive until 601).
    h.advance(Duration::from_secs(299));
    assert!(h.input(c.five_tuple, &channel_data(0x4000, b"x")).0.is_none());
    assert_eq!(
        h.server.handle_peer_input(h.now, relay, addr(PEER), 1),
        Some(ClientDelivery::DataIndication { to: c.five_tuple })
    );
}

#[test]
fn create_permission_errors() {
    let (mut h, mut c, _) = setup();
    assert_eq!(error(&c.call(&mut h, Method::CREATE_PERMISSION, &[])), Some(400));
    // IPv6 peer on an IPv4 relay.
    assert_eq!(
        error(&c.call(&mut h, Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(addr("[2606:4700::1]:1"))])),
        Some(443)
    );
    // One denied peer among several: 403 and none installed.
    let resp = c.call(
        &mut h,
        Method::CREATE_PERMISSION,
        &[Attribute::XorPeerAddress(addr("8.8.8.8:1")), Attribute::XorPeerAddress(addr("10.0.0.1:1"))],
    );
    assert_eq!(error(&resp), Some(403));
    let (t, _) = h.input(c.five_tuple, &send_indication("8.8.8.8:1", b"x"));
    assert!(t.is_none(), "no permission was installed");
    // Without an allocation: 437.
    let mut other = Client::new("192.0.2.51:1", "b1", "guest", UNIX0 + HOUR);
    other.nonce = c.nonce.clone();
    assert_eq!(
        error(&other.call(&mut h, Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(addr(PEER))])),
        Some(437)
    );
}

#[test]
fn peer_policy_blocks_internal_targets() {
    let (mut h, mut c, _) = setup();
    for peer in [
        "127.0.0.1:22",
        "[::ffff:127.0.0.1]:22",
        "0.0.0.0:22",
        "169.254.169.254:80",
        "10.1.2.3:5432",
        "100.64.0.1:1",
        "224.0.0.251:5353",
    ] {
        let resp = c.call(&mut h, Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(addr(peer))]);
        // ::ffff:127.0.0.1 on an IPv4 relay: family mismatch is reported first (443); it is
        // refused either way.
        let code = error(&resp);
        assert!(matches!(code, Some(403) | Some(443)), "{peer}: {code:?}");
        let bind = c.call(
            &mut h,
            Method::CHANNEL_BIND,
            &[Attribute::ChannelNumber(0x4010), Attribute::XorPeerAddress(addr(peer))],
        );
        assert!(matches!(error(&bind), Some(403) | Some(443)), "{peer}");
    }
    assert!(h.server.stats().peer_denied >= 12);
}

#[test]
fn peer_policy_on_ipv6_relay() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    c.allocate(&mut h); // learn a nonce
    let mut c6 = Client::new("192.0.2.51:40000", "b1", "guest", UNIX0 + HOUR);
    c6.nonce = c.nonce.clone();
    let req = c6.request(Method::ALLOCATE, &[Attribute::RequestedTransport(17), Attribute::RequestedAddressFamily(2)]);
    let (_, cmds) = h.input(c6.five_tuple, &req);
    h.bind_relays(cmds);
    for peer in ["[::ffff:127.0.0.1]:22", "[::]:22", "[::1]:22", "[fe80::1]:1", "[::ffff:169.254.169.254]:80"] {
        let resp = c6.call(&mut h, Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(addr(peer))]);
        assert_eq!(error(&resp), Some(403), "{peer}");
    }
    let resp = c6.call(&mut h, Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(addr("[2606:4700::1111]:443"))]);
    assert_eq!(class(&resp), Class::SuccessResponse);
}

#[test]
fn loopback_allowed_when_configured_except_own_listener() {
    let mut cfg = config();
    cfg.peer_policy = PeerPolicy::allow_loopback();
    cfg.peer_policy.own_addresses.push(addr("127.0.0.1:3478"));
    let mut h = Harness::new(cfg);
    let mut c = Client::new("127.0.0.1:40000", "b1", "host", UNIX0 + HOUR);
    c.allocate(&mut h);
    let ok = c.call(&mut h, Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(addr("127.0.0.1:5000"))]);
    assert_eq!(class(&ok), Class::SuccessResponse);
    // The TURN listener itself is never a peer (loop attack)...
    let own = c.call(
        &mut h,
        Method::CHANNEL_BIND,
        &[Attribute::ChannelNumber(0x4000), Attribute::XorPeerAddress(addr("127.0.0.1:3478"))],
    );
    assert_eq!(error(&own), Some(403));
    // ...and neither is 0.0.0.0 or the metadata service.
    for peer in ["0.0.0.0:5000", "169.254.169.254:80"] {
        let r = c.call(&mut h, Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(addr(peer))]);
        assert_eq!(error(&r), Some(403), "{peer}");
    }
}

#[test]
fn permission_and_channel_caps_508() {
    let mut cfg = config();
    cfg.max_permissions_per_allocation = 2;
    cfg.max_channels_per_allocation = 1;
    let mut h = Harness::new(cfg);
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    c.allocate(&mut h);
    let p = |s: &str| Attribute::XorPeerAddress(addr(s));
    assert_eq!(
        class(&c.call(&mut h, Method::CREATE_PERMISSION, &[p("8.8.8.8:1"), p("8.8.8.8:2")])),
        Class::SuccessResponse,
        "two addresses of one IP are one permission"
    );
    assert_eq!(class(&c.call(&mut h, Method::CREATE_PERMISSION, &[p("8.8.4.4:1")])), Class::SuccessResponse);
    assert_eq!(error(&c.call(&mut h, Method::CREATE_PERMISSION, &[p("1.1.1.1:1")])), Some(508));
    // Refreshing an existing permission is always allowed.
    assert_eq!(class(&c.call(&mut h, Method::CREATE_PERMISSION, &[p("8.8.4.4:9")])), Class::SuccessResponse);
    let bind = |ch: u16, peer: &str| [Attribute::ChannelNumber(ch), Attribute::XorPeerAddress(addr(peer))];
    assert_eq!(class(&c.call(&mut h, Method::CHANNEL_BIND, &bind(0x4000, "8.8.8.8:1"))), Class::SuccessResponse);
    assert_eq!(error(&c.call(&mut h, Method::CHANNEL_BIND, &bind(0x4001, "8.8.4.4:1"))), Some(508));
    assert_eq!(h.server.stats().capacity_refusals, 2);
}

#[test]
fn relay_input_on_unknown_socket_is_dropped() {
    let (mut h, _, _) = setup();
    assert_eq!(h.server.handle_peer_input(h.now, addr("198.51.100.10:1"), addr(PEER), 1), None);
    assert_eq!(h.server.stats().drops_no_allocation, 1);
}

#[test]
fn data_stops_after_refresh_zero() {
    let (mut h, mut c, relay) = setup();
    c.call(&mut h, Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(addr(PEER))]);
    c.call(&mut h, Method::REFRESH, &[Attribute::Lifetime(0)]);
    assert_eq!(h.server.handle_peer_input(h.now, relay, addr(PEER), 1), None);
    assert!(h.input(c.five_tuple, &send_indication(PEER, b"x")).0.is_none());
}

#[test]
fn allocation_events_carry_the_bytes_relayed_each_way() {
    let mut cfg = config();
    cfg.report_allocations = true;
    let mut h = Harness::new(cfg);
    let mut c = Client::new("192.0.2.50:40000", "b1", "p-guest", UNIX0 + 10 * HOUR);
    let relay = c.allocate(&mut h);
    let started_at = h.now;
    match h.server.poll_event() {
        Some(duet_relay::AllocationEvent::Started { booking, participant, transport, at }) => {
            assert_eq!((&*booking, &*participant, transport, at), ("b1", "p-guest", Transport::Udp, started_at));
        }
        other => panic!("expected Started, got {other:?}"),
    }
    c.call(&mut h, Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(addr(PEER))]);
    for _ in 0..3 {
        assert!(h.input(c.five_tuple, &send_indication(PEER, b"0123456789")).0.is_some());
    }
    assert!(h.server.handle_peer_input(h.now, relay, addr(PEER), 700).is_some());
    // Dropped data (no permission) is not counted.
    assert!(h.server.handle_peer_input(h.now, relay, addr("8.8.8.8:1"), 900).is_none());
    let usage = h.server.booking_usage("b1");
    assert_eq!(usage.len(), 1);
    assert_eq!((usage[0].bytes_to_peer, usage[0].bytes_to_client), (30, 700));
    assert!(h.server.booking_usage("b2").is_empty());
    h.advance(Duration::from_secs(5));
    c.call(&mut h, Method::REFRESH, &[Attribute::Lifetime(0)]);
    match h.server.poll_event() {
        Some(duet_relay::AllocationEvent::Ended {
            booking,
            participant,
            transport,
            bytes_to_peer,
            bytes_to_client,
            started,
            ended,
        }) => {
            assert_eq!((&*booking, &*participant, transport), ("b1", "p-guest", Transport::Udp));
            assert_eq!((bytes_to_peer, bytes_to_client), (30, 700));
            assert_eq!(ended - started, Duration::from_secs(5));
        }
        other => panic!("expected Ended, got {other:?}"),
    }
    assert_eq!(h.server.poll_event(), None);
}

#[test]
fn allocation_events_are_off_by_default() {
    let (mut h, _c, _relay) = setup();
    assert_eq!(h.server.poll_event(), None);
}
