//! The hardening checklist of research/turn.md §3.2 (items 1–17, 20–22 as far as they belong to
//! the sans-IO core) and the error codes of issue 3, each asserted on behaviour a client or an
//! operator would notice. Every test names the checklist item(s) it covers.

mod common;

use std::time::Duration;

use common::*;
use duet_relay::stun::{Attribute, Class, Message, MessageEncoder, Method, TransactionId, attr, error_code};
use duet_relay::{Command, IpNet, PeerPolicy, Transport};

const HOUR: u64 = 3600;

fn send_indication(peer: &str, data: &[u8]) -> Vec<u8> {
    let mut e = MessageEncoder::new(Class::Indication, Method::SEND, TransactionId([7; 12]));
    e.attribute(&Attribute::XorPeerAddress(addr(peer))).attribute(&Attribute::Data(data));
    e.finish().unwrap()
}

fn perm(peer: &str) -> [Attribute<'_>; 1] {
    [Attribute::XorPeerAddress(addr(peer))]
}

fn bind(ch: u16, peer: &str) -> [Attribute<'_>; 2] {
    [Attribute::ChannelNumber(ch), Attribute::XorPeerAddress(addr(peer))]
}

/// (code, reason phrase) of an error response.
fn error_attr(msg: &[u8]) -> (u16, String) {
    match Message::decode(msg).unwrap().get(attr::ERROR_CODE) {
        Some(Ok(Attribute::ErrorCode { code, reason })) => (code, reason.to_string()),
        other => panic!("no ERROR-CODE: {other:?}"),
    }
}

/// A client on an IPv6 relay (the learnt nonce comes from a first IPv4 allocation).
fn v6_client(h: &mut Harness) -> Client {
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    c.allocate(h);
    let mut c6 = Client::new("192.0.2.51:40000", "b1", "guest", UNIX0 + HOUR);
    c6.nonce = c.nonce.clone();
    let req = c6.request(Method::ALLOCATE, &[Attribute::RequestedTransport(17), Attribute::RequestedAddressFamily(2)]);
    let (_, cmds) = h.input(c6.five_tuple, &req);
    assert_eq!(class(&only_message(&h.bind_relays(cmds))), Class::SuccessResponse);
    c6
}

/// Items 1–7: the IPv4 deny list. Every address is refused by CreatePermission *and*
/// ChannelBind with 403, and nothing can be sent to it afterwards.
#[test]
fn checklist_1_to_7_ipv4_deny_list() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    c.allocate(&mut h);
    let denied = [
        "127.0.0.1:22",         // 1 loopback
        "127.255.255.254:22",   // 1
        "0.0.0.0:22",           // 2 this network
        "0.1.2.3:22",           // 2
        "169.254.169.254:80",   // 3 cloud metadata
        "169.254.1.1:80",       // 3
        "10.1.2.3:5432",        // 4 RFC 1918
        "172.16.0.1:1",         // 4
        "172.31.255.254:1",     // 4
        "192.168.1.1:1",        // 4
        "100.64.0.1:1",         // 5 CGNAT
        "198.18.0.1:1",         // 5 benchmarking
        "192.0.2.1:1",          // 5 TEST-NET-1
        "198.51.100.1:1",       // 5 TEST-NET-2
        "203.0.113.1:1",        // 5 TEST-NET-3
        "192.0.0.8:1",          // 5
        "192.88.99.1:1",        // 5 / 7 6to4 relay anycast
        "240.0.0.1:1",          // 5
        "255.255.255.255:1",    // 5 broadcast
        "224.0.0.251:5353",     // 6 multicast
        "239.255.255.250:1900", // 6
        "8.8.8.8:0",            // port 0
    ];
    for (i, peer) in denied.iter().enumerate() {
        let resp = c.call(&mut h, Method::CREATE_PERMISSION, &perm(peer));
        assert_eq!(error(&resp), Some(403), "CreatePermission {peer}");
        let resp = c.call(&mut h, Method::CHANNEL_BIND, &bind(0x4000 + i as u16, peer));
        assert_eq!(error(&resp), Some(403), "ChannelBind {peer}");
        let (t, _) = h.input(c.five_tuple, &send_indication(peer, b"x"));
        assert!(t.is_none(), "{peer} reachable");
    }
    assert_eq!(h.server.stats().peer_denied, 2 * denied.len() as u64);
    // Public unicast passes.
    assert_eq!(class(&c.call(&mut h, Method::CREATE_PERMISSION, &perm("8.8.8.8:53"))), Class::SuccessResponse);
}

/// Items 1–7 on an IPv6 relay: canonicalised IPv4-mapped, IPv4-compatible, NAT64 and 6to4
/// forms of forbidden IPv4 addresses, ULA, link-local, multicast, Teredo and the other special
/// IPv6 ranges.
#[test]
fn checklist_1_to_7_ipv6_deny_list_after_canonicalising() {
    let mut h = Harness::new(config());
    let mut c = v6_client(&mut h);
    let denied = [
        "[::ffff:127.0.0.1]:22",       // 1 v4-mapped loopback (CVE-2026-27624)
        "[::127.0.0.1]:22",            // 1 v4-compatible
        "[64:ff9b::7f00:1]:22",        // 1 NAT64
        "[2002:7f00:1::]:22",          // 1 6to4
        "[::1]:22",                    // 1
        "[::]:22",                     // 2
        "[::ffff:0.0.0.0]:22",         // 2
        "[::ffff:169.254.169.254]:80", // 3
        "[64:ff9b::a9fe:a9fe]:80",     // 3 metadata via NAT64
        "[fe80::1]:1",                 // 3
        "[::ffff:10.0.0.1]:1",         // 4
        "[2002:c0a8:101::1]:1",        // 4 6to4 of 192.168.1.1
        "[fd00::1]:1",                 // 4 ULA
        "[fc00::1]:1",                 // 4 ULA
        "[ff02::1]:1",                 // 6
        "[ff0e::1]:1",                 // 6
        "[2001::1]:1",                 // 7 Teredo
        "[2002:808:808::]:1",          // 7 6to4 (public v4 inside, prefix still denied)
        "[64:ff9b::808:808]:1",        // 7 NAT64
        "[64:ff9b:1::1]:1",            // 7
        "[100::1]:1",                  // 7 discard
        "[2001:db8::1]:1",             // 7 documentation
        "[3fff::1]:1",                 // 7
        "[5f00::1]:1",                 // 7
        "[fec0::1]:1",                 // 7 site-local
    ];
    for (i, peer) in denied.iter().enumerate() {
        let resp = c.call(&mut h, Method::CREATE_PERMISSION, &perm(peer));
        assert_eq!(error(&resp), Some(403), "CreatePermission {peer}");
        let resp = c.call(&mut h, Method::CHANNEL_BIND, &bind(0x4100 + i as u16, peer));
        assert_eq!(error(&resp), Some(403), "ChannelBind {peer}");
    }
    assert_eq!(
        class(&c.call(&mut h, Method::CREATE_PERMISSION, &perm("[2606:4700::1111]:443"))),
        Class::SuccessResponse
    );
}

/// Items 4 and 8, allow-list override: an allow entry admits exactly what it names (also in
/// its IPv4-mapped form); other private ranges, link-local, `0.0.0.0` and the server's own
/// listener stay refused; a deny entry beats an allow entry.
#[test]
fn checklist_4_8_allow_list_override_is_narrow() {
    let mut cfg = config();
    cfg.peer_policy = PeerPolicy {
        allow: vec!["10.0.0.0/8".parse().unwrap(), "0.0.0.0/0".parse().unwrap(), "fd00::/8".parse().unwrap()],
        deny: vec!["10.9.0.0/16".parse::<IpNet>().unwrap(), "8.8.8.0/24".parse().unwrap()],
        own_addresses: vec![addr("10.0.0.5:3478")],
    };
    cfg.peer_policy.allow.retain(|n| n.prefix != 0); // keep "0.0.0.0/0" out for the first half
    let mut h = Harness::new(cfg.clone());
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    c.allocate(&mut h);
    assert_eq!(class(&c.call(&mut h, Method::CREATE_PERMISSION, &perm("10.1.2.3:5000"))), Class::SuccessResponse);
    for peer in ["192.168.1.1:1", "172.16.0.1:1", "169.254.169.254:80", "10.9.1.1:1", "10.0.0.5:3478", "8.8.8.8:53"] {
        assert_eq!(error(&c.call(&mut h, Method::CREATE_PERMISSION, &perm(peer))), Some(403), "{peer}");
    }
    // Even "allow everything" never opens 0.0.0.0/8 or the own listener.
    cfg.peer_policy.allow.push("0.0.0.0/0".parse().unwrap());
    let mut h = Harness::new(cfg);
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    c.allocate(&mut h);
    for peer in ["0.0.0.0:5000", "0.0.0.1:5000", "10.0.0.5:3478"] {
        assert_eq!(error(&c.call(&mut h, Method::CREATE_PERMISSION, &perm(peer))), Some(403), "{peer}");
    }
    assert_eq!(class(&c.call(&mut h, Method::CREATE_PERMISSION, &perm("192.168.1.1:1"))), Class::SuccessResponse);
}

/// Item 10: every TURN method needs long-term credentials, even from a 5-tuple that already
/// holds an allocation; an unauthenticated request changes nothing.
#[test]
fn checklist_10_auth_required_for_every_turn_method() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    let relay = c.allocate(&mut h);
    let requests: [(Method, Vec<Attribute<'_>>); 5] = [
        (Method::ALLOCATE, vec![Attribute::RequestedTransport(17)]),
        (Method::REFRESH, vec![Attribute::Lifetime(0)]),
        (Method::CREATE_PERMISSION, perm("8.8.4.4:1").to_vec()),
        (Method::CHANNEL_BIND, bind(0x4000, "8.8.4.4:1").to_vec()),
        (Method::REFRESH, vec![]),
    ];
    for (method, attrs) in &requests {
        let req = c.unauthenticated(*method, attrs);
        let (t, cmds) = h.input(c.five_tuple, &req);
        assert!(t.is_none());
        let resp = only_message(&cmds);
        let m = Message::decode(&resp).unwrap();
        assert_eq!(error(&resp), Some(401), "{method:?}");
        assert!(matches!(m.get(attr::REALM), Some(Ok(Attribute::Realm(REALM)))));
        assert!(matches!(m.get(attr::NONCE), Some(Ok(Attribute::Nonce(_)))));
        assert!(!m.has_message_integrity());
    }
    // Nothing happened: the allocation is alive, no permission or channel exists.
    assert_eq!(h.server.allocation_count(), 1);
    assert!(h.input(c.five_tuple, &send_indication("8.8.4.4:1", b"x")).0.is_none());
    assert!(h.input(c.five_tuple, &channel_data(0x4000, b"x")).0.is_none());
    assert_eq!(h.server.handle_peer_input(h.now, relay, addr("8.8.4.4:1"), 1), None);
    // MESSAGE-INTEGRITY without USERNAME/REALM/NONCE: 400 (RFC 8489 §9.2.4), no state.
    let mut e = MessageEncoder::new(Class::Request, Method::ALLOCATE, TransactionId([9; 12]));
    e.attribute(&Attribute::RequestedTransport(17)).message_integrity(&c.key());
    let (_, cmds) = h.input(c.five_tuple, &e.finish().unwrap());
    assert_eq!(error(&only_message(&cmds)), Some(400));
    // A wrong REALM is 401 even with the right password for that realm.
    let mut other_realm = Client::new("192.0.2.52:1", "b1", "host", UNIX0 + HOUR);
    other_realm.nonce = c.nonce.clone();
    let mut e = MessageEncoder::new(Class::Request, Method::ALLOCATE, TransactionId([8; 12]));
    e.attribute(&Attribute::RequestedTransport(17))
        .attribute(&Attribute::Username(&other_realm.username))
        .attribute(&Attribute::Realm("evil"))
        .attribute(&Attribute::Nonce(other_realm.nonce.as_deref().unwrap()))
        .message_integrity(&duet_relay::long_term_key(&other_realm.username, "evil", &other_realm.password));
    let (_, cmds) = h.input(other_realm.five_tuple, &e.finish().unwrap());
    assert_eq!(error(&only_message(&cmds)), Some(401));
    assert_eq!(h.server.allocation_count(), 1);
}

/// Item 11: the HMAC and the expiry are checked on every CreatePermission and ChannelBind
/// too (coturn checks them only at Allocate).
#[test]
fn checklist_11_hmac_and_expiry_on_every_request() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + 1000);
    c.allocate(&mut h);
    let good = c.password.clone();
    c.password = duet_relay::rest_password(b"guessed", &c.username);
    assert_eq!(error(&c.call(&mut h, Method::CREATE_PERMISSION, &perm("8.8.4.4:1"))), Some(401));
    assert_eq!(error(&c.call(&mut h, Method::CHANNEL_BIND, &bind(0x4000, "8.8.4.4:1"))), Some(401));
    assert!(h.input(c.five_tuple, &send_indication("8.8.4.4:1", b"x")).0.is_none(), "nothing was installed");
    c.password = good;
    assert_eq!(class(&c.call(&mut h, Method::CREATE_PERMISSION, &perm("8.8.4.4:1"))), Class::SuccessResponse);
    // At the credential expiry, before the teardown timer had a chance to run.
    h.now += Duration::from_secs(1000);
    assert_eq!(error(&c.call(&mut h, Method::CREATE_PERMISSION, &perm("8.8.8.8:1"))), Some(401));
    assert_eq!(error(&c.call(&mut h, Method::CHANNEL_BIND, &bind(0x4000, "8.8.4.4:1"))), Some(401));
    assert_eq!(h.server.stats().auth_failures, 4);
}

/// Item 12: revocation is immediate for data in both directions and for requests of the
/// torn-down 5-tuple, and the credential expiry timer also ends an allocation that holds
/// permissions and channels.
#[test]
fn checklist_12_revoke_and_hard_end_stop_data_at_once() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + 300);
    let relay = c.allocate(&mut h);
    assert_eq!(class(&c.call(&mut h, Method::CHANNEL_BIND, &bind(0x4000, "8.8.4.4:1"))), Class::SuccessResponse);
    assert!(h.input(c.five_tuple, &channel_data(0x4000, b"x")).0.is_some());
    let cmds = h.advance(Duration::from_secs(300));
    assert_eq!(freed(&cmds), vec![relay], "hard end tears the allocation down");
    assert!(h.input(c.five_tuple, &channel_data(0x4000, b"x")).0.is_none());
    assert_eq!(h.server.handle_peer_input(h.now, relay, addr("8.8.4.4:1"), 1), None);

    let mut c = Client::new("192.0.2.50:40001", "b2", "host", UNIX0 + HOUR);
    let relay = c.allocate(&mut h);
    assert_eq!(class(&c.call(&mut h, Method::CHANNEL_BIND, &bind(0x4000, "8.8.4.4:1"))), Class::SuccessResponse);
    assert_eq!(h.server.revoke_booking(h.now, "b2", UNIX0 + HOUR), 1);
    assert_eq!(freed(&h.drain()), vec![relay]);
    assert!(h.input(c.five_tuple, &channel_data(0x4000, b"x")).0.is_none());
    assert_eq!(h.server.handle_peer_input(h.now, relay, addr("8.8.4.4:1"), 1), None);
    assert_eq!(error(&c.call(&mut h, Method::REFRESH, &[])), Some(401), "revoked credential");
}

/// Item 16: nonces are stateless (a nonce issued by one server instance verifies on another
/// with the same secret, e.g. after a restart) and unauthenticated floods leave no state.
#[test]
fn checklist_16_stateless_nonce_and_no_state_before_auth() {
    let mut a = Harness::new(config());
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    let req = c.unauthenticated(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    let (_, cmds) = a.input(c.five_tuple, &req);
    c.learn_nonce(&only_message(&cmds));
    let mut b = Harness::new(config());
    let req = c.request(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    let (_, cmds) = b.input(c.five_tuple, &req);
    assert!(matches!(cmds.as_slice(), [Command::BindRelay { .. }]), "{cmds:?}");

    // 20 000 spoofed sources: every one is challenged, nothing is remembered.
    let flood = c.unauthenticated(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    let mut h = Harness::new(config());
    for i in 0..20_000u32 {
        let ip = std::net::Ipv4Addr::from(0x0808_0000 + i);
        let from = duet_relay::FiveTuple {
            transport: Transport::Udp,
            server: addr(LISTENER),
            client: std::net::SocketAddr::new(ip.into(), 5000),
        };
        let (_, cmds) = h.input(from, &flood);
        assert_eq!(cmds.len(), 1);
    }
    assert_eq!(h.server.poll_timeout(), None, "no timers");
    assert_eq!(h.server.allocation_count(), 0);
    let dbg = format!("{:?}", h.server);
    assert!(dbg.contains("pending: 0") && dbg.contains("timers: 0") && dbg.contains("commands: 0"), "{dbg}");
}

/// Item 16: the per-source limit covers every unauthenticated reply (400, 420, 401), not just
/// challenges, so malformed requests cannot be used for reflection either.
#[test]
fn checklist_16_rate_limit_covers_all_unauthenticated_errors() {
    let mut cfg = config();
    cfg.max_unauthenticated_replies_per_source_per_sec = 2;
    cfg.unauthenticated_reply_burst_per_source = 2;
    let mut h = Harness::new(cfg);
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    let unknown = Attribute::Unknown { typ: 0x0003, value: &[0, 0, 0, 0] };
    let reqs = [
        c.unauthenticated(Method::BINDING, &[unknown]),
        c.unauthenticated(Method::DATA, &[]), // not a request method we serve: 400
        c.unauthenticated(Method::ALLOCATE, &[]),
        c.unauthenticated(Method::BINDING, &[unknown]),
    ];
    let answered: usize = reqs.iter().map(|r| h.input(c.five_tuple, r).1.len()).sum();
    assert_eq!(answered, 2);
    assert_eq!(h.server.stats().drops_rate_limited, 2);
    // Plain Binding requests are not rate-limited this way (they are the STUN service).
    let binding = c.unauthenticated(Method::BINDING, &[]);
    assert_eq!(h.input(c.five_tuple, &binding).1.len(), 1);
}

/// Item 17: no RFC 5780 (CHANGE-REQUEST is an unknown comprehension-required attribute → 420;
/// no OTHER-ADDRESS / RESPONSE-ORIGIN), no RFC 3489 MAPPED-ADDRESS, no SOFTWARE by default, in
/// Binding and TURN responses alike.
#[test]
fn checklist_17_no_rfc5780_no_software() {
    const CHANGE_REQUEST: u16 = 0x0003;
    const RESPONSE_ORIGIN: u16 = 0x802B;
    const OTHER_ADDRESS: u16 = 0x802C;
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    let req = c.unauthenticated(Method::BINDING, &[Attribute::Unknown { typ: CHANGE_REQUEST, value: &[0, 0, 0, 6] }]);
    let resp = only_message(&h.input(c.five_tuple, &req).1);
    assert_eq!(error(&resp), Some(420));
    let Some(Ok(Attribute::UnknownAttributes(list))) = Message::decode(&resp).unwrap().get(attr::UNKNOWN_ATTRIBUTES)
    else {
        panic!("no UNKNOWN-ATTRIBUTES");
    };
    assert_eq!(duet_relay::stun::unknown_attribute_types(list).collect::<Vec<_>>(), vec![CHANGE_REQUEST]);

    let binding = only_message(&h.input(c.five_tuple, &c.unauthenticated(Method::BINDING, &[])).1);
    let req = c.unauthenticated(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    let challenge = only_message(&h.input(c.five_tuple, &req).1);
    c.learn_nonce(&challenge);
    let req = c.request(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    let (_, cmds) = h.input(c.five_tuple, &req);
    let allocated = only_message(&h.bind_relays(cmds));
    for msg in [&binding, &challenge, &allocated, &resp] {
        let m = Message::decode(msg).unwrap();
        for typ in [RESPONSE_ORIGIN, OTHER_ADDRESS, attr::MAPPED_ADDRESS, attr::SOFTWARE] {
            assert!(m.get(typ).is_none(), "attribute {typ:#06x} in {:?}", m.method());
        }
    }
}

/// Item 17 and the error-code list: each of 400, 401, 403, 420, 437, 438, 440, 441,
/// 442, 443, 486, 508 is produced by the situation the RFC names, carries exactly the standard
/// reason phrase (nothing about the user, booking or peer), and carries MESSAGE-INTEGRITY
/// exactly when the request was authenticated.
#[test]
fn every_error_code_with_fixed_reason_phrase() {
    let mut cfg = config();
    cfg.relay_families = vec![duet_relay::AddressFamily::V4];
    cfg.max_allocations_per_credential = 1;
    cfg.max_permissions_per_allocation = 1;
    let mut h = Harness::new(cfg);
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    let mut seen = Vec::new();
    let key = c.key();
    let check = |resp: Vec<u8>, want: u16, authenticated: bool, seen: &mut Vec<u16>| {
        let (code, reason) = error_attr(&resp);
        assert_eq!(code, want);
        assert_eq!(reason, error_code::reason(code), "{code}");
        assert!(!reason.is_empty());
        for secret in ["b1", "host", "192.0.2", "8.8", "duet"] {
            assert!(!reason.contains(secret), "{code}: {reason}");
        }
        let m = Message::decode(&resp).unwrap();
        assert_eq!(m.has_message_integrity(), authenticated, "{code}");
        if authenticated {
            assert_eq!(m.verify_integrity(&key), Ok(()));
        }
        seen.push(code);
    };

    // 401 and 420 before authentication.
    let r = only_message(&h.input(c.five_tuple, &c.unauthenticated(Method::ALLOCATE, &[])).1);
    c.learn_nonce(&r);
    check(r, 401, false, &mut seen);
    let unknown = [Attribute::RequestedTransport(17), Attribute::Unknown { typ: 0x7fff, value: b"" }];
    let r = only_message(&h.input(c.five_tuple, &c.request(Method::ALLOCATE, &unknown)).1);
    check(r, 420, false, &mut seen);
    // 400, 442, 440 on Allocate.
    check(c.call(&mut h, Method::ALLOCATE, &[]), 400, true, &mut seen);
    check(c.call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(6)]), 442, true, &mut seen);
    let v6 = [Attribute::RequestedTransport(17), Attribute::RequestedAddressFamily(2)];
    check(c.call(&mut h, Method::ALLOCATE, &v6), 440, true, &mut seen);
    // 437 without allocation.
    check(c.call(&mut h, Method::REFRESH, &[]), 437, true, &mut seen);
    c.allocate(&mut h);
    // 403, 443, 508 on CreatePermission.
    check(c.call(&mut h, Method::CREATE_PERMISSION, &perm("10.0.0.1:1")), 403, true, &mut seen);
    check(c.call(&mut h, Method::CREATE_PERMISSION, &perm("[2606:4700::1]:1")), 443, true, &mut seen);
    assert_eq!(class(&c.call(&mut h, Method::CREATE_PERMISSION, &perm("8.8.8.8:1"))), Class::SuccessResponse);
    check(c.call(&mut h, Method::CREATE_PERMISSION, &perm("8.8.4.4:1")), 508, true, &mut seen);
    // 486: a second allocation of the same credential from another port.
    let mut same = Client::new("192.0.2.50:40001", "b1", "host", UNIX0 + HOUR);
    same.nonce = c.nonce.clone();
    check(same.call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(17)]), 486, true, &mut seen);
    // 438 with a nonce from another server.
    let old = c.nonce.replace("0000000000000001AAAAAAAAAAAAAAAA".into());
    check(c.call(&mut h, Method::REFRESH, &[]), 438, true, &mut seen);
    c.nonce = old;

    // 441: another valid credential on this 5-tuple (its own key signs the answer).
    let mut intruder = Client::new("192.0.2.50:40000", "b2", "guest", UNIX0 + HOUR);
    intruder.nonce = c.nonce.clone();
    let r = intruder.call(&mut h, Method::REFRESH, &[]);
    let (code, reason) = error_attr(&r);
    assert_eq!((code, reason.as_str()), (441, error_code::reason(441)));
    assert_eq!(Message::decode(&r).unwrap().verify_integrity(&intruder.key()), Ok(()));
    seen.push(code);

    seen.sort();
    assert_eq!(seen, vec![400, 401, 403, 420, 437, 438, 440, 441, 442, 443, 486, 508]);
}

/// Item 20: permissions are enforced for clients on TCP and TLS exactly as on UDP (pion's
/// TURN-TCP permission bypass, #570).
#[test]
fn checklist_20_permissions_enforced_on_tcp_and_tls() {
    for transport in [Transport::Tcp, Transport::Tls] {
        let mut h = Harness::new(config());
        let mut c = Client::with_transport(transport, "192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
        let relay = c.allocate(&mut h);
        assert!(h.input(c.five_tuple, &send_indication("8.8.4.4:1", b"x")).0.is_none());
        assert!(h.input(c.five_tuple, &channel_data(0x4000, b"x")).0.is_none());
        assert_eq!(h.server.handle_peer_input(h.now, relay, addr("8.8.4.4:1"), 1), None);
        assert_eq!(error(&c.call(&mut h, Method::CREATE_PERMISSION, &perm("127.0.0.1:1"))), Some(403));
        assert_eq!(error(&c.call(&mut h, Method::CHANNEL_BIND, &bind(0x4000, "10.0.0.1:1"))), Some(403));
        assert_eq!(h.server.stats().drops_no_permission, 2, "{transport:?}");
    }
}

/// Item 21: bounded parsers and username sanitising: an over-long USERNAME (> 512 bytes,
/// RFC 8489 §14.3) or one that is not UTF-8 makes the request malformed (400), before any key
/// is derived; a MESSAGE-INTEGRITY off by one bit anywhere is refused.
#[test]
fn checklist_21_username_bounds_and_integrity_bit_flips() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    let r = only_message(&h.input(c.five_tuple, &c.unauthenticated(Method::ALLOCATE, &[])).1);
    c.learn_nonce(&r);
    let long = format!("{}:{}:p", UNIX0 + HOUR, "b".repeat(600));
    let mut e = MessageEncoder::new(Class::Request, Method::ALLOCATE, TransactionId([1; 12]));
    e.attribute(&Attribute::RequestedTransport(17))
        .attribute(&Attribute::Unknown { typ: attr::USERNAME, value: long.as_bytes() })
        .attribute(&Attribute::Realm(REALM))
        .attribute(&Attribute::Nonce(c.nonce.as_deref().unwrap()))
        .message_integrity(&[0; 16]);
    let (_, cmds) = h.input(c.five_tuple, &e.finish().unwrap());
    assert_eq!(error(&only_message(&cmds)), Some(400));
    let mut e = MessageEncoder::new(Class::Request, Method::ALLOCATE, TransactionId([2; 12]));
    e.attribute(&Attribute::RequestedTransport(17))
        .attribute(&Attribute::Unknown { typ: attr::USERNAME, value: &[0xff, 0xfe, b':', b'1'] })
        .attribute(&Attribute::Realm(REALM))
        .attribute(&Attribute::Nonce(c.nonce.as_deref().unwrap()))
        .message_integrity(&[0; 16]);
    let (_, cmds) = h.input(c.five_tuple, &e.finish().unwrap());
    assert_eq!(error(&only_message(&cmds)), Some(400));

    c.fingerprint = false;
    let good = c.request(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    let mi_value = good.len() - 20;
    for byte in [0, 7, 13, 19] {
        for bit in [0, 7] {
            let mut bad = good.clone();
            bad[mi_value + byte] ^= 1 << bit;
            let (_, cmds) = h.input(c.five_tuple, &bad);
            assert_eq!(error(&only_message(&cmds)), Some(401), "byte {byte} bit {bit}");
        }
    }
    assert_eq!(h.server.allocation_count(), 0);
}

/// Item 22: no usernames, booking ids, participant ids or passwords in `Stats` or in the
/// `Debug` output of the server (metrics and logs).
#[test]
fn checklist_22_no_usernames_in_stats_or_debug() {
    let mut cfg = config();
    cfg.static_credentials = vec![duet_relay::StaticCredential {
        username: "legacy-vy-user".into(),
        password: "legacy-pass".into(),
        max_allocations: 2,
    }];
    let mut h = Harness::new(cfg);
    let mut c = Client::new("192.0.2.50:40000", "booking-7f3a", "participant-x9", UNIX0 + HOUR);
    c.allocate(&mut h);
    let mut s = Client::new("192.0.2.51:40000", "x", "y", UNIX0 + HOUR);
    s.username = "legacy-vy-user".into();
    s.password = "legacy-pass".into();
    s.allocate(&mut h);
    h.server.revoke_booking(h.now, "booking-7f3a", UNIX0 + HOUR);
    let texts = [format!("{:?}", h.server.stats()), format!("{:?}", h.server)];
    for text in &texts {
        for needle in ["booking-7f3a", "participant-x9", "legacy-vy-user", "legacy-pass", &c.password] {
            assert!(!text.contains(needle), "{needle} leaked: {text}");
        }
    }
}

/// Item 17 (amplification): a response to an unauthenticated request is never larger than
/// a small constant, whatever the request carries.
#[test]
fn checklist_17_unauthenticated_replies_are_small() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    let padding = vec![0u8; 1000];
    let unknown: Vec<Attribute<'_>> =
        (0..16u16).map(|i| Attribute::Unknown { typ: 0x7000 + i, value: &padding[..40] }).collect();
    for req in [
        c.unauthenticated(Method::ALLOCATE, &[Attribute::Data(&padding)]),
        c.unauthenticated(Method::BINDING, &unknown),
        c.unauthenticated(Method::REFRESH, &[Attribute::Software("x")]),
    ] {
        let resp = only_message(&h.input(c.five_tuple, &req).1);
        assert!(resp.len() <= 120, "{} bytes", resp.len());
    }
}
