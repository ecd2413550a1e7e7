//! Scenario tests: authentication, allocation lifecycle, quotas, revocation, on virtual time.

mod common;

use std::time::Duration;

use common::*;
use duet_relay::stun::{Attribute, Class, Message, MessageEncoder, Method, TransactionId, attr, error_code};
use duet_relay::{Command, ServerConfig, Transport};

const HOUR: u64 = 3600;

#[test]
fn binding_request_gets_reflexive_address_without_auth() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    let req = c.unauthenticated(Method::BINDING, &[]);
    let (_, cmds) = h.input(c.five_tuple, &req);
    let resp = only_message(&cmds);
    let m = Message::decode(&resp).unwrap();
    assert_eq!((m.class(), m.method()), (Class::SuccessResponse, Method::BINDING));
    assert_eq!(m.get(attr::XOR_MAPPED_ADDRESS), Some(Ok(Attribute::XorMappedAddress(c.five_tuple.client))));
    assert!(m.get(attr::MAPPED_ADDRESS).is_none(), "no RFC 3489 MAPPED-ADDRESS");
    assert!(m.get(attr::SOFTWARE).is_none(), "SOFTWARE is off by default");
    assert!(!m.has_fingerprint(), "no FINGERPRINT unless the request had one");

    // With FINGERPRINT in the request, the response carries a valid one.
    let mut e = MessageEncoder::new(Class::Request, Method::BINDING, TransactionId([3; 12]));
    e.fingerprint();
    let (_, cmds) = h.input(c.five_tuple, &e.finish().unwrap());
    let resp = only_message(&cmds);
    assert_eq!(Message::decode(&resp).unwrap().verify_fingerprint(), Ok(()));
    assert_eq!(h.server.stats().binding_requests, 2);

    // Binding indications (keepalives) are ignored.
    let e = MessageEncoder::new(Class::Indication, Method::BINDING, TransactionId([4; 12]));
    let (_, cmds) = h.input(c.five_tuple, &e.finish().unwrap());
    assert!(cmds.is_empty());
}

#[test]
fn full_allocate_401_then_200() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);

    let req = c.unauthenticated(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    let (_, cmds) = h.input(c.five_tuple, &req);
    let challenge = only_message(&cmds);
    let m = Message::decode(&challenge).unwrap();
    assert_eq!(m.class(), Class::ErrorResponse);
    assert_eq!(error(&challenge), Some(401));
    assert_eq!(m.get(attr::REALM), Some(Ok(Attribute::Realm(REALM))));
    assert!(matches!(m.get(attr::NONCE), Some(Ok(Attribute::Nonce(_)))));
    assert!(!m.has_message_integrity());
    c.learn_nonce(&challenge);

    let req = c.request(Method::ALLOCATE, &[Attribute::RequestedTransport(17), Attribute::DontFragment]);
    let (_, cmds) = h.input(c.five_tuple, &req);
    assert!(
        matches!(cmds.as_slice(), [Command::BindRelay { family: duet_relay::AddressFamily::V4, even_port: false, .. }]),
        "{cmds:?}"
    );
    assert_eq!(h.server.allocation_count(), 0, "not active before the socket is bound");
    let cmds = h.bind_relays(cmds);
    let resp = only_message(&cmds);
    let m = Message::decode(&resp).unwrap();
    assert_eq!(m.class(), Class::SuccessResponse);
    assert_eq!(m.verify_integrity(&c.key()), Ok(()));
    assert_eq!(m.verify_fingerprint(), Ok(()));
    assert_eq!(m.get(attr::XOR_RELAYED_ADDRESS), Some(Ok(Attribute::XorRelayedAddress(addr("198.51.100.10:50000")))));
    assert_eq!(m.get(attr::XOR_MAPPED_ADDRESS), Some(Ok(Attribute::XorMappedAddress(c.five_tuple.client))));
    assert_eq!(lifetime(&resp), Some(600));
    assert_eq!(h.server.allocation_count(), 1);
    let s = h.server.stats();
    assert_eq!((s.allocate_ok, s.allocations_created, s.allocations_active_udp), (1, 1, 1));
    assert_eq!(s.auth_challenges, 1);
}

#[test]
fn allocate_retransmit_replays_success_and_new_allocate_is_437() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    let req = c.unauthenticated(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    let (_, cmds) = h.input(c.five_tuple, &req);
    c.learn_nonce(&only_message(&cmds));
    let tid = c.tid();
    let req = c.request_with_tid(Method::ALLOCATE, tid, &[Attribute::RequestedTransport(17)]);
    let (_, cmds) = h.input(c.five_tuple, &req);
    // A retransmission while the relay socket is being bound is absorbed.
    let (_, again) = h.input(c.five_tuple, &req);
    assert!(again.is_empty(), "{again:?}");
    let first = only_message(&h.bind_relays(cmds));
    let (_, cmds) = h.input(c.five_tuple, &req);
    assert_eq!(only_message(&cmds), first, "retransmission replays the same success");
    assert_eq!(h.server.allocation_count(), 1);

    let resp = c.call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    assert_eq!(error(&resp), Some(error_code::ALLOCATION_MISMATCH));
    assert_eq!(Message::decode(&resp).unwrap().verify_integrity(&c.key()), Ok(()));
}

#[test]
fn allocate_attribute_errors() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    c.allocate(&mut h); // learns a nonce
    let mut c2 = Client::new("192.0.2.51:40000", "b1", "guest", UNIX0 + HOUR);
    c2.nonce = c.nonce.clone();
    assert_eq!(error(&c2.call(&mut h, Method::ALLOCATE, &[])), Some(400), "no REQUESTED-TRANSPORT");
    assert_eq!(
        error(&c2.call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(6)])),
        Some(442),
        "TCP relaying is not offered"
    );
    assert_eq!(
        error(&c2.call(
            &mut h,
            Method::ALLOCATE,
            &[Attribute::RequestedTransport(17), Attribute::RequestedAddressFamily(3)]
        )),
        Some(440)
    );
    assert_eq!(
        error(&c2.call(
            &mut h,
            Method::ALLOCATE,
            &[Attribute::RequestedTransport(17), Attribute::ReservationToken([1; 8])]
        )),
        Some(508),
        "we never hand out reservation tokens"
    );
    assert_eq!(
        error(&c2.call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(17), Attribute::EvenPort(true)])),
        Some(508),
        "we never reserve the next port"
    );
    // EVEN-PORT without R asks the driver for an even port.
    let req = c2.request(Method::ALLOCATE, &[Attribute::RequestedTransport(17), Attribute::EvenPort(false)]);
    let (_, cmds) = h.input(c2.five_tuple, &req);
    assert!(matches!(cmds.as_slice(), [Command::BindRelay { even_port: true, .. }]), "{cmds:?}");
    assert_eq!(h.server.stats().allocate_bad_request, 1);
    assert_eq!(h.server.stats().allocate_unsupported, 2);
}

#[test]
fn ipv6_relay_and_unsupported_family() {
    let mut cfg = config();
    cfg.relay_families = vec![duet_relay::AddressFamily::V4];
    let mut h = Harness::new(cfg);
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    c.allocate(&mut h);
    let mut c2 = Client::new("192.0.2.51:40000", "b1", "guest", UNIX0 + HOUR);
    c2.nonce = c.nonce.clone();
    let resp =
        c2.call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(17), Attribute::RequestedAddressFamily(2)]);
    assert_eq!(error(&resp), Some(440));

    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    c.allocate(&mut h);
    let mut c2 = Client::new("192.0.2.51:40000", "b1", "guest", UNIX0 + HOUR);
    c2.nonce = c.nonce.clone();
    let req = c2.request(Method::ALLOCATE, &[Attribute::RequestedTransport(17), Attribute::RequestedAddressFamily(2)]);
    let (_, cmds) = h.input(c2.five_tuple, &req);
    let resp = only_message(&h.bind_relays(cmds));
    let m = Message::decode(&resp).unwrap();
    assert!(matches!(
        m.get(attr::XOR_RELAYED_ADDRESS),
        Some(Ok(Attribute::XorRelayedAddress(a))) if a.is_ipv6()
    ));
}

#[test]
fn relay_bind_failure_answers_508_and_frees_quota() {
    let mut cfg = config();
    cfg.max_allocations_per_credential = 1;
    let mut h = Harness::new(cfg);
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    let req = c.unauthenticated(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    let (_, cmds) = h.input(c.five_tuple, &req);
    c.learn_nonce(&only_message(&cmds));
    let req = c.request(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    let (_, cmds) = h.input(c.five_tuple, &req);
    let [Command::BindRelay { pending, .. }] = cmds.as_slice() else { panic!("{cmds:?}") };
    h.server.handle_relay_bound(h.now, *pending, Err(()));
    let resp = only_message(&h.drain());
    assert_eq!(error(&resp), Some(508));
    // The quota slot is free again: the next Allocate succeeds.
    c.allocate(&mut h);
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn wrong_password_is_401_and_counted() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    let req = c.unauthenticated(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    let (_, cmds) = h.input(c.five_tuple, &req);
    c.learn_nonce(&only_message(&cmds));
    c.password = "not-the-password".into();
    let resp = c.call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    assert_eq!(error(&resp), Some(401));
    assert!(!Message::decode(&resp).unwrap().has_message_integrity());
    // A credential from another secret is refused the same way.
    c.password = duet_relay::rest_password(b"other-secret", &c.username);
    assert_eq!(error(&c.call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(17)])), Some(401));
    // A username not in REST format.
    c.username = "alice".into();
    c.password = duet_relay::rest_password(SECRET, "alice");
    assert_eq!(error(&c.call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(17)])), Some(401));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.stats().auth_failures, 3);
    assert_eq!(h.server.stats().allocate_auth_failed, 3);
}

#[test]
fn secret_rotation_accepts_old_and_new_then_drops_old() {
    let mut cfg = config();
    cfg.auth_secrets = vec![b"new".to_vec(), SECRET.to_vec()];
    let mut h = Harness::new(cfg);
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    c.allocate(&mut h);
    h.server.set_auth_secrets(vec![b"new".to_vec()]);
    let resp = c.call(&mut h, Method::REFRESH, &[Attribute::Lifetime(600)]);
    assert_eq!(error(&resp), Some(401), "the old secret no longer verifies");
}

#[test]
fn expired_credential_is_refused() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0);
    let req = c.unauthenticated(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    let (_, cmds) = h.input(c.five_tuple, &req);
    c.learn_nonce(&only_message(&cmds));
    let resp = c.call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    assert_eq!(error(&resp), Some(401));
    assert_eq!(h.server.stats().allocate_expired, 1);
}

#[test]
fn stale_nonce_gets_438_with_fresh_nonce() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + 10 * HOUR);
    let req = c.unauthenticated(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    let (_, cmds) = h.input(c.five_tuple, &req);
    c.learn_nonce(&only_message(&cmds));
    let old = c.nonce.clone();
    h.advance(Duration::from_secs(601));
    let resp = c.call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    assert_eq!(error(&resp), Some(error_code::STALE_NONCE));
    let m = Message::decode(&resp).unwrap();
    assert_eq!(m.get(attr::REALM), Some(Ok(Attribute::Realm(REALM))));
    c.learn_nonce(&resp);
    assert_ne!(c.nonce, old);
    // A forged nonce is treated the same way.
    let mut forged = c.clone_with_nonce("0000000000000000AAAAAAAAAAAAAAAA");
    assert_eq!(error(&forged.call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(17)])), Some(438));
    // With the fresh nonce the allocation goes through.
    let req = c.request(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    let (_, cmds) = h.input(c.five_tuple, &req);
    assert_eq!(class(&only_message(&h.bind_relays(cmds))), Class::SuccessResponse);
    assert_eq!(h.server.stats().stale_nonces, 2);
}

trait CloneWithNonce {
    fn clone_with_nonce(&self, nonce: &str) -> Client;
}

impl CloneWithNonce for Client {
    fn clone_with_nonce(&self, nonce: &str) -> Client {
        let mut c = Client::new(&self.five_tuple.client.to_string(), "x", "y", 0);
        c.username = self.username.clone();
        c.password = self.password.clone();
        c.nonce = Some(nonce.into());
        c
    }
}

#[test]
fn unknown_comprehension_required_attribute_gets_420() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    let req = c.unauthenticated(
        Method::ALLOCATE,
        &[
            Attribute::RequestedTransport(17),
            Attribute::Unknown { typ: 0x7777, value: b"x" },
            Attribute::Unknown { typ: 0xC001, value: b"optional" },
        ],
    );
    let (_, cmds) = h.input(c.five_tuple, &req);
    let resp = only_message(&cmds);
    assert_eq!(error(&resp), Some(420));
    let m = Message::decode(&resp).unwrap();
    let Some(Ok(Attribute::UnknownAttributes(list))) = m.get(attr::UNKNOWN_ATTRIBUTES) else {
        panic!("no UNKNOWN-ATTRIBUTES")
    };
    assert_eq!(duet_relay::stun::unknown_attribute_types(list).collect::<Vec<_>>(), vec![0x7777]);
}

#[test]
fn garbage_and_truncated_input_is_dropped_silently() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    let req = c.unauthenticated(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    let inputs: Vec<&[u8]> = vec![
        &[],
        &[0xff; 40],
        &req[..req.len() - 4],
        &req[..19],
        &[0x40, 0x00],
        &[0x40, 0x00, 0x00, 0x10, 1, 2],
        &[0x00, 0x01, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ];
    for i in &inputs {
        let (t, cmds) = h.input(c.five_tuple, i);
        assert!(t.is_none() && cmds.is_empty(), "{i:?} -> {cmds:?}");
    }
    // Corrupted FINGERPRINT: discarded, not answered.
    let mut bad = c.unauthenticated(Method::BINDING, &[]);
    let mut e = MessageEncoder::new(Class::Request, Method::BINDING, TransactionId([1; 12]));
    e.fingerprint();
    bad.clear();
    bad.extend(e.finish().unwrap());
    let n = bad.len();
    bad[n - 1] ^= 1;
    let (_, cmds) = h.input(c.five_tuple, &bad);
    assert!(cmds.is_empty());
    assert_eq!(h.server.stats().drops_malformed as usize, inputs.len() + 1);
}

#[test]
fn unauthenticated_replies_are_rate_limited_per_source() {
    let mut cfg = config();
    cfg.max_unauthenticated_replies_per_source_per_sec = 3;
    cfg.unauthenticated_reply_burst_per_source = 3;
    let mut h = Harness::new(cfg);
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    let mut answered = 0;
    for _ in 0..10 {
        let req = c.unauthenticated(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
        let (_, cmds) = h.input(c.five_tuple, &req);
        answered += cmds.len();
    }
    assert_eq!(answered, 3);
    assert_eq!(h.server.stats().drops_rate_limited, 7);
    // Another source is not affected (hash buckets may collide, but not for these two here
    // with overwhelming probability: check a handful).
    let mut others = 0;
    for port in 0..5u16 {
        let mut o = Client::new(&format!("192.0.2.{}:1000", 60 + port), "b1", "x", UNIX0 + HOUR);
        let req = o.unauthenticated(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
        others += h.input(o.five_tuple, &req).1.len();
    }
    assert!(others >= 4);
    // A second later the source is answered again.
    h.advance(Duration::from_secs(1));
    let req = c.unauthenticated(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    assert_eq!(h.input(c.five_tuple, &req).1.len(), 1);
}

/// Issue 7 item 8: replies on TCP/TLS are never suppressed (a stream's source is verified and a
/// dropped reply is never retransmitted), however tight the UDP limit.
#[test]
fn unauthenticated_replies_on_streams_are_never_rate_limited() {
    for transport in [Transport::Tcp, Transport::Tls] {
        let mut cfg = config();
        cfg.max_unauthenticated_replies_per_source_per_sec = 1;
        cfg.unauthenticated_reply_burst_per_source = 1;
        let mut h = Harness::new(cfg);
        let mut answered = 0;
        for port in 0..50u16 {
            let mut c =
                Client::with_transport(transport, &format!("192.0.2.50:{}", 40_000 + port), "b1", "host", UNIX0 + HOUR);
            for _ in 0..2 {
                let req = c.unauthenticated(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
                answered += h.input(c.five_tuple, &req).1.len();
            }
        }
        assert_eq!(answered, 100, "{transport:?}");
        assert_eq!(h.server.stats().drops_rate_limited, 0, "{transport:?}");
    }
}

/// Issue 7 item 8: with the default limit, 50 UDP clients behind one NAT address starting at
/// once (each with the 401 round trip of two allocations) all get their challenge, and every
/// one completes its Allocate.
#[test]
fn default_udp_limit_serves_fifty_clients_behind_one_address() {
    let mut cfg = ServerConfig::new(REALM, vec![SECRET.to_vec()], [9; 32]);
    cfg.max_allocations_per_source_ip = 200;
    cfg.max_allocations_per_credential = 200;
    let mut h = Harness::new(cfg);
    for port in 0..100u16 {
        let mut c = Client::new(&format!("198.51.100.9:{}", 20_000 + port), "b1", "host", UNIX0 + HOUR);
        c.allocate(&mut h);
    }
    assert_eq!(h.server.stats().drops_rate_limited, 0);
    assert_eq!(h.server.allocation_count(), 100);
}

/// Issue 7 item 9: a TCP/TLS connection counts as authenticated once a request on it passed
/// authentication (even if the request itself then fails), never before, never for UDP, and is
/// forgotten when it closes.
#[test]
fn stream_is_authenticated_after_first_verified_request() {
    let mut h = Harness::new(config());
    let mut c = Client::with_transport(Transport::Tcp, "192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    assert!(!h.server.is_authenticated(c.five_tuple));
    let req = c.unauthenticated(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    let resp = only_message(&h.input(c.five_tuple, &req).1);
    assert!(!h.server.is_authenticated(c.five_tuple), "a 401 challenge is not authentication");
    c.learn_nonce(&resp);
    let mut wrong = Client::with_transport(Transport::Tcp, "192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    wrong.password = "not-the-password".into();
    wrong.nonce = c.nonce.clone();
    let resp = wrong.call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    assert_eq!(error(&resp), Some(401));
    assert!(!h.server.is_authenticated(c.five_tuple), "a bad MESSAGE-INTEGRITY is not authentication");
    // Refresh without an allocation: 437, but the credentials were good.
    let resp = c.call(&mut h, Method::REFRESH, &[]);
    assert_eq!(error(&resp), Some(437));
    assert!(h.server.is_authenticated(c.five_tuple));
    h.server.handle_client_closed(h.now, c.five_tuple);
    assert!(!h.server.is_authenticated(c.five_tuple), "forgotten on close");

    let mut u = Client::new("192.0.2.51:40000", "b1", "host", UNIX0 + HOUR);
    u.allocate(&mut h);
    assert!(!h.server.is_authenticated(u.five_tuple), "UDP has no connection");
}

#[test]
fn refresh_extends_and_refresh_zero_deletes() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + 10 * HOUR);
    let relay = c.allocate(&mut h);
    h.advance(Duration::from_secs(500));
    let resp = only_message(&c.exchange(&mut h, Method::REFRESH, &[Attribute::Lifetime(99_999)]));
    assert_eq!(lifetime(&resp), Some(3600), "clamped to max_lifetime");
    let cmds = h.advance(Duration::from_secs(3000));
    assert!(freed(&cmds).is_empty(), "refreshed allocation survives its first lifetime");
    assert_eq!(h.server.allocation_count(), 1);

    let cmds = c.exchange(&mut h, Method::REFRESH, &[Attribute::Lifetime(0)]);
    assert_eq!(freed(&cmds), vec![relay]);
    assert_eq!(lifetime(&only_message(&cmds)), Some(0));
    assert_eq!(h.server.allocation_count(), 0);
    // A retransmitted Refresh 0 after deletion gets 437 (RFC 8656 §8: treat as success).
    let resp = c.call(&mut h, Method::REFRESH, &[Attribute::Lifetime(0)]);
    assert_eq!(error(&resp), Some(437));
    assert_eq!(h.server.stats().allocations_deleted, 1);
    assert_eq!(h.server.stats().allocations_active_udp, 0);
}

#[test]
fn refresh_without_allocation_is_437_and_wrong_user_is_441() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    c.allocate(&mut h);
    let mut other = Client::new("192.0.2.99:1", "b1", "host", UNIX0 + HOUR);
    other.nonce = c.nonce.clone();
    assert_eq!(error(&other.call(&mut h, Method::REFRESH, &[])), Some(437));
    // Same 5-tuple, different (valid) credential.
    let mut intruder = Client::new("192.0.2.50:40000", "b2", "guest", UNIX0 + HOUR);
    intruder.nonce = c.nonce.clone();
    assert_eq!(error(&intruder.call(&mut h, Method::REFRESH, &[])), Some(441));
}

#[test]
fn allocation_expires_without_refresh() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + 10 * HOUR);
    let relay = c.allocate(&mut h);
    let at = h.server.poll_timeout().unwrap();
    assert!(at <= h.now + Duration::from_secs(600));
    let cmds = h.advance(Duration::from_secs(599));
    assert!(freed(&cmds).is_empty());
    let cmds = h.advance(Duration::from_secs(2));
    assert_eq!(freed(&cmds), vec![relay]);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.stats().allocations_expired, 1);
    assert_eq!(h.server.poll_timeout(), None, "no timers left");
}

#[test]
fn allocation_torn_down_at_credential_expiry() {
    let mut h = Harness::new(config());
    // The booking's hard end is 200 s away; the allocation would live 600 s.
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + 200);
    let relay = c.allocate(&mut h);
    let cmds = h.advance(Duration::from_secs(199));
    assert!(freed(&cmds).is_empty());
    let cmds = h.advance(Duration::from_secs(2));
    assert_eq!(freed(&cmds), vec![relay], "torn down at hard_end_at by the timer");
    assert_eq!(h.server.stats().allocations_credential_expired, 1);
}

#[test]
fn an_extended_booking_keeps_its_allocations_until_the_new_hard_end() {
    let mut h = Harness::new(config());
    // Credentials issued under a hard end 200 s away; the booking is then extended to 500 s.
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + 200);
    let mut other = Client::new("192.0.2.52:40000", "b2", "host", UNIX0 + 200);
    let relay = c.allocate(&mut h);
    let other_relay = other.allocate(&mut h);
    assert_eq!(h.server.set_booking_end(h.now, "b1", UNIX0 + 500, UNIX0 + 500), 1);
    let cmds = h.advance(Duration::from_secs(201));
    assert_eq!(freed(&cmds), vec![other_relay], "only the other booking ends at the old hard end");
    // Refresh and a new allocation with the old credential work past the old hard end.
    let resp = c.call(&mut h, Method::REFRESH, &[]);
    assert_eq!(error(&resp), None);
    let mut late = Client::new("192.0.2.51:40000", "b1", "guest", UNIX0 + 200);
    let late_relay = late.allocate(&mut h);
    let cmds = h.advance(Duration::from_secs(298));
    assert!(freed(&cmds).is_empty(), "{cmds:?}");
    let cmds = h.advance(Duration::from_secs(2));
    let mut f = freed(&cmds);
    f.sort();
    let mut want = vec![relay, late_relay];
    want.sort();
    assert_eq!(f, want, "both end at the new hard end");
}

#[test]
fn a_shortened_booking_ends_early_and_old_credentials_stay_dead() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + 1000);
    let relay = c.allocate(&mut h);
    // Shortened to 100 s from now; the rule is kept until the old hard end (1000 s).
    h.server.set_booking_end(h.now, "b1", UNIX0 + 100, UNIX0 + 1000);
    let cmds = h.advance(Duration::from_secs(101));
    assert_eq!(freed(&cmds), vec![relay]);
    assert_eq!(h.server.stats().allocations_credential_expired, 1);
    let mut again = Client::new("192.0.2.50:40001", "b1", "host", UNIX0 + 1000);
    let req = again.unauthenticated(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    let (_, cmds) = h.input(again.five_tuple, &req);
    again.learn_nonce(&only_message(&cmds));
    let resp = again.call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    assert_eq!(error(&resp), Some(401), "a credential of the longer window does not work after the new end");
    assert_eq!(h.server.stats().allocate_expired, 1);
}

#[test]
fn revoking_a_participants_old_link_ends_only_its_allocations() {
    let mut h = Harness::new(config());
    let mut old = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    let mut guest = Client::new("192.0.2.51:40000", "b1", "guest", UNIX0 + HOUR);
    let old_relay = old.allocate(&mut h);
    guest.allocate(&mut h);
    assert_eq!(h.server.revoke_participant(h.now, "b1", "host", 1, UNIX0 + HOUR), 1);
    assert_eq!(freed(&h.drain()), vec![old_relay]);
    assert_eq!(h.server.allocation_count(), 1, "the guest keeps its allocation");
    let resp = old.call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    assert_eq!(error(&resp), Some(401), "the old link's credential is refused");
    // The rotated link's credential (epoch 1) works; a lower floor later changes nothing.
    let mut new = Client::new("192.0.2.50:40001", "b1", "host.1", UNIX0 + HOUR);
    new.allocate(&mut h);
    assert_eq!(h.server.revoke_participant(h.now, "b1", "host", 0, UNIX0 + HOUR), 0);
    assert_eq!(h.server.allocation_count(), 2);
    // A second rotation ends epoch 1 too.
    assert_eq!(h.server.revoke_participant(h.now, "b1", "host", 2, UNIX0 + HOUR), 1);
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn a_booking_moved_later_and_back_is_usable_again() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    let relay = c.allocate(&mut h);
    // Moved to a window opening in 30 minutes: torn down and refused.
    assert_eq!(h.server.set_booking_not_before(h.now, "b1", UNIX0 + 1800), 1);
    assert_eq!(freed(&h.drain()), vec![relay]);
    let mut again = Client::new("192.0.2.50:40001", "b1", "host", UNIX0 + HOUR);
    let req = again.unauthenticated(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    let (_, cmds) = h.input(again.five_tuple, &req);
    again.learn_nonce(&only_message(&cmds));
    let resp = again.call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    assert_eq!(error(&resp), Some(401), "refused before the new window");
    // Moved back to a window that is open now: the refusal is replaced, not kept at the later instant.
    assert_eq!(h.server.set_booking_not_before(h.now, "b1", UNIX0 - 60), 0);
    again.allocate(&mut h);
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn an_extension_keeps_old_links_refused_until_the_new_end() {
    let mut h = Harness::new(config());
    // The booking ends at +200 s; the guest's old link is revoked until then.
    h.server.revoke_participant(h.now, "b1", "guest", 1, UNIX0 + 200);
    // Extended to +500 s: the old credential (username expiry 200 s) now lives until 500 s, so must its refusal.
    h.server.set_booking_end(h.now, "b1", UNIX0 + 500, UNIX0 + 500);
    h.advance(Duration::from_secs(250));
    let mut old = Client::new("192.0.2.51:40000", "b1", "guest", UNIX0 + 200);
    let req = old.unauthenticated(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    let (_, cmds) = h.input(old.five_tuple, &req);
    old.learn_nonce(&only_message(&cmds));
    let resp = old.call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    assert_eq!(error(&resp), Some(401), "the revoked link's credential works again after the extension");
    let mut new = Client::new("192.0.2.51:40001", "b1", "guest.1", UNIX0 + 200);
    new.allocate(&mut h);
}

#[test]
fn expiry_is_checked_on_every_request() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + 1000);
    c.allocate(&mut h);
    // Refresh keeps it alive, but once the credential expires, requests are refused even
    // before the teardown timer would have fired.
    h.now += Duration::from_secs(1000);
    let resp = c.call(&mut h, Method::REFRESH, &[]);
    assert_eq!(error(&resp), Some(401));
}

#[test]
fn revoke_booking_tears_down_and_refuses_new_allocations() {
    let mut h = Harness::new(config());
    let mut host = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    let mut guest = Client::new("192.0.2.51:40000", "b1", "guest", UNIX0 + HOUR);
    let mut other = Client::new("192.0.2.52:40000", "b2", "host", UNIX0 + HOUR);
    let r1 = host.allocate(&mut h);
    let r2 = guest.allocate(&mut h);
    other.allocate(&mut h);
    let n = h.server.revoke_booking(h.now, "b1", UNIX0 + HOUR);
    assert_eq!(n, 2);
    let mut f = freed(&h.drain());
    f.sort();
    let mut want = vec![r1, r2];
    want.sort();
    assert_eq!(f, want);
    assert_eq!(h.server.allocation_count(), 1, "other bookings are untouched");
    // The same credentials can no longer allocate.
    let resp = host.call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    assert_eq!(error(&resp), Some(401));
    assert_eq!(h.server.stats().allocate_revoked, 1);
    assert_eq!(h.server.stats().allocations_revoked, 2);
}

#[test]
fn revoke_cancels_pending_allocation() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    let req = c.unauthenticated(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    let (_, cmds) = h.input(c.five_tuple, &req);
    c.learn_nonce(&only_message(&cmds));
    let req = c.request(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    let (_, cmds) = h.input(c.five_tuple, &req);
    assert_eq!(h.server.revoke_booking(h.now, "b1", UNIX0 + HOUR), 1);
    let cmds = h.bind_relays(cmds);
    assert_eq!(freed(&cmds).len(), 1, "the late socket is freed again");
    assert!(cmds.iter().all(|c| !matches!(c, Command::SendToClient { .. })));
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn per_credential_quota_486_and_total_capacity_508() {
    let mut cfg = config();
    cfg.max_allocations_per_credential = 2;
    cfg.max_allocations_total = 3;
    let mut h = Harness::new(cfg);
    let mut a = Client::new("192.0.2.50:1", "b1", "host", UNIX0 + HOUR);
    a.allocate(&mut h);
    let mut b = Client::new("192.0.2.50:2", "b1", "host", UNIX0 + HOUR);
    b.allocate(&mut h);
    let mut c = Client::new("192.0.2.50:3", "b1", "host", UNIX0 + HOUR);
    c.nonce = a.nonce.clone();
    assert_eq!(error(&c.call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(17)])), Some(486));
    let mut d = Client::new("192.0.2.51:1", "b2", "host", UNIX0 + HOUR);
    d.allocate(&mut h);
    let mut e = Client::new("192.0.2.52:1", "b3", "host", UNIX0 + HOUR);
    e.nonce = a.nonce.clone();
    assert_eq!(error(&e.call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(17)])), Some(508));
    let s = h.server.stats();
    assert_eq!((s.allocate_quota, s.allocate_capacity, s.quota_refusals), (1, 1, 1));
}

#[test]
fn per_source_ip_quota() {
    let mut cfg = config();
    cfg.max_allocations_per_source_ip = 1;
    let mut h = Harness::new(cfg);
    let mut a = Client::new("192.0.2.50:1", "b1", "host", UNIX0 + HOUR);
    a.allocate(&mut h);
    let mut b = Client::new("192.0.2.50:2", "b2", "guest", UNIX0 + HOUR);
    b.nonce = a.nonce.clone();
    assert_eq!(error(&b.call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(17)])), Some(486));
}

#[test]
fn tcp_close_frees_allocation() {
    let mut h = Harness::new(config());
    let mut c = Client::with_transport(Transport::Tcp, "192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    let relay = c.allocate(&mut h);
    assert_eq!(h.server.stats().allocations_active_tcp, 1);
    h.server.handle_client_closed(h.now, c.five_tuple);
    assert_eq!(freed(&h.drain()), vec![relay]);
    assert_eq!(h.server.stats().allocations_active_tcp, 0);
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn software_attribute_when_configured() {
    let mut cfg = config();
    cfg.software = Some("duet".into());
    let mut h = Harness::new(cfg);
    let mut c = Client::new("192.0.2.50:40000", "b1", "host", UNIX0 + HOUR);
    let req = c.unauthenticated(Method::BINDING, &[]);
    let resp = only_message(&h.input(c.five_tuple, &req).1);
    assert_eq!(Message::decode(&resp).unwrap().get(attr::SOFTWARE), Some(Ok(Attribute::Software("duet"))));
}
