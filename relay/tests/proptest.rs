//! Property tests: decoders never panic on arbitrary bytes; encode → decode round-trips; the
//! server survives arbitrary input sequences with its bookkeeping intact.

mod common;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use common::*;
use duet_relay::channel::parse_channel_data;
use duet_relay::stun::{Attribute, Class, Message, MessageEncoder, Method, TransactionId};
use duet_relay::{Command, PeerPolicy, stream_frame_len};
use proptest::prelude::*;

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<u32>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (any::<u128>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

#[derive(Debug, Clone)]
enum OwnedAttr {
    Xor(u8, SocketAddr),
    Mapped(SocketAddr),
    Text(u8, String),
    Bytes(Vec<u8>),
    Error(u16, String),
    U32(u8, u32),
    U8(u8, u8),
    EvenPort(bool),
    DontFragment,
    Token([u8; 8]),
    Icmp(u8, u8, u32),
    Unknown(u16, Vec<u8>),
    PasswordAlgorithm(u16, Vec<u8>),
}

impl OwnedAttr {
    fn borrow(&self) -> Attribute<'_> {
        match self {
            OwnedAttr::Xor(0, a) => Attribute::XorMappedAddress(*a),
            OwnedAttr::Xor(1, a) => Attribute::XorPeerAddress(*a),
            OwnedAttr::Xor(_, a) => Attribute::XorRelayedAddress(*a),
            OwnedAttr::Mapped(a) => Attribute::MappedAddress(*a),
            OwnedAttr::Text(0, s) => Attribute::Username(s),
            OwnedAttr::Text(1, s) => Attribute::Realm(s),
            OwnedAttr::Text(2, s) => Attribute::Nonce(s),
            OwnedAttr::Text(_, s) => Attribute::Software(s),
            OwnedAttr::Bytes(b) => Attribute::Data(b),
            OwnedAttr::Error(code, r) => Attribute::ErrorCode { code: *code, reason: r },
            OwnedAttr::U32(0, v) => Attribute::Lifetime(*v),
            OwnedAttr::U32(_, v) => Attribute::ChannelNumber(*v as u16),
            OwnedAttr::U8(0, v) => Attribute::RequestedTransport(*v),
            OwnedAttr::U8(1, v) => Attribute::RequestedAddressFamily(*v),
            OwnedAttr::U8(_, v) => Attribute::AdditionalAddressFamily(*v),
            OwnedAttr::EvenPort(r) => Attribute::EvenPort(*r),
            OwnedAttr::DontFragment => Attribute::DontFragment,
            OwnedAttr::Token(t) => Attribute::ReservationToken(*t),
            OwnedAttr::Icmp(t, c, d) => Attribute::Icmp { typ: *t, code: *c, data: *d },
            OwnedAttr::Unknown(t, v) => Attribute::Unknown { typ: *t, value: v },
            OwnedAttr::PasswordAlgorithm(a, p) => Attribute::PasswordAlgorithm { algorithm: *a, parameters: p },
        }
    }
}

fn owned_attr() -> impl Strategy<Value = OwnedAttr> {
    prop_oneof![
        (0u8..3, socket_addr()).prop_map(|(k, a)| OwnedAttr::Xor(k, a)),
        socket_addr().prop_map(OwnedAttr::Mapped),
        (0u8..4, "\\PC{0,40}").prop_map(|(k, s)| OwnedAttr::Text(k, s)),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(OwnedAttr::Bytes),
        (300u16..700, "[a-zA-Z ]{0,30}").prop_map(|(c, r)| OwnedAttr::Error(c, r)),
        (0u8..2, any::<u32>()).prop_map(|(k, v)| OwnedAttr::U32(k, v)),
        (0u8..3, any::<u8>()).prop_map(|(k, v)| OwnedAttr::U8(k, v)),
        any::<bool>().prop_map(OwnedAttr::EvenPort),
        Just(OwnedAttr::DontFragment),
        any::<[u8; 8]>().prop_map(OwnedAttr::Token),
        (any::<u8>(), any::<u8>(), any::<u32>()).prop_map(|(t, c, d)| OwnedAttr::Icmp(t, c, d)),
        // Unknown types outside every type this crate knows.
        (0x7000u16..0x7100, proptest::collection::vec(any::<u8>(), 0..40)).prop_map(|(t, v)| OwnedAttr::Unknown(t, v)),
        (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..20))
            .prop_map(|(a, p)| OwnedAttr::PasswordAlgorithm(a, p)),
    ]
}

fn class() -> impl Strategy<Value = Class> {
    prop_oneof![Just(Class::Request), Just(Class::Indication), Just(Class::SuccessResponse), Just(Class::ErrorResponse),]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(m) = Message::decode(&bytes) {
            for a in m.attributes() {
                let _ = a;
            }
            let _ = m.verify_integrity(b"key");
            let _ = m.verify_fingerprint();
        }
        let _ = parse_channel_data(&bytes);
        let _ = stream_frame_len(&bytes);
    }

    #[test]
    fn decode_never_panics_on_stun_shaped_bytes(
        typ in 0u16..0x3fff,
        body in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        // A valid header with arbitrary attribute bytes exercises the TLV walk.
        let len = body.len() & !3;
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&typ.to_be_bytes());
        bytes.extend_from_slice(&(len as u16).to_be_bytes());
        bytes.extend_from_slice(&0x2112_A442u32.to_be_bytes());
        bytes.extend_from_slice(&[1; 12]);
        bytes.extend_from_slice(&body[..len]);
        if let Ok(m) = Message::decode(&bytes) {
            for a in m.attributes() {
                let _ = a;
            }
            let _ = m.verify_integrity(b"key");
            let _ = m.verify_fingerprint();
        }
    }

    #[test]
    fn encode_decode_roundtrip(
        class in class(),
        method in 0u16..0x1000,
        tid in any::<[u8; 12]>(),
        attrs in proptest::collection::vec(owned_attr(), 0..8),
        integrity in any::<bool>(),
        fingerprint in any::<bool>(),
    ) {
        let mut e = MessageEncoder::new(class, Method(method), TransactionId(tid));
        for a in &attrs {
            e.attribute(&a.borrow());
        }
        if integrity {
            e.message_integrity(b"secret key");
        }
        if fingerprint {
            e.fingerprint();
        }
        let bytes = e.finish().unwrap();
        let m = Message::decode(&bytes).unwrap();
        prop_assert_eq!(m.class(), class);
        prop_assert_eq!(m.method(), Method(method));
        prop_assert_eq!(m.transaction_id(), TransactionId(tid));
        let decoded: Vec<Attribute<'_>> = m.attributes().map(|a| a.unwrap()).collect();
        let n = attrs.len();
        prop_assert_eq!(decoded.len(), n + usize::from(integrity) + usize::from(fingerprint));
        for (d, a) in decoded.iter().zip(&attrs) {
            prop_assert_eq!(*d, a.borrow());
        }
        if integrity {
            prop_assert_eq!(m.verify_integrity(b"secret key"), Ok(()));
            prop_assert!(m.verify_integrity(b"other").is_err());
        }
        if fingerprint {
            prop_assert_eq!(m.verify_fingerprint(), Ok(()));
        }
    }

    #[test]
    fn peer_policy_never_allows_unspecified(ip in any::<u32>(), port in any::<u16>()) {
        let mut p = PeerPolicy::allow_loopback();
        p.allow.push("0.0.0.0/0".parse().unwrap());
        p.allow.push("::/0".parse().unwrap());
        let v4 = Ipv4Addr::from(ip);
        let mapped = SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), port);
        let plain = SocketAddr::new(IpAddr::V4(v4), port);
        // Mapped and plain forms always get the same verdict.
        prop_assert_eq!(p.check(mapped), p.check(plain));
        if v4.octets()[0] == 0 || port == 0 {
            prop_assert!(p.check(plain).is_err());
        }
    }
}

/// One step of a random client/peer/time script.
#[derive(Debug, Clone)]
enum Step {
    Garbage(usize, Vec<u8>),
    Allocate(usize),
    Permission(usize, u8),
    Bind(usize, u16, u8),
    Refresh(usize, u32),
    ChannelData(usize, u16),
    Send(usize, u8),
    Peer(usize, u8),
    Close(usize),
    Revoke(usize),
    Advance(u16),
    BindFails,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0usize..4, proptest::collection::vec(any::<u8>(), 0..80)).prop_map(|(c, b)| Step::Garbage(c, b)),
        (0usize..4).prop_map(Step::Allocate),
        (0usize..4, 0u8..6).prop_map(|(c, p)| Step::Permission(c, p)),
        (0usize..4, 0x3ffeu16..0x4004, 0u8..6).prop_map(|(c, ch, p)| Step::Bind(c, ch, p)),
        (0usize..4, prop_oneof![Just(0u32), Just(60), Just(600), Just(100_000)]).prop_map(|(c, l)| Step::Refresh(c, l)),
        (0usize..4, 0x3ffeu16..0x4004).prop_map(|(c, ch)| Step::ChannelData(c, ch)),
        (0usize..4, 0u8..6).prop_map(|(c, p)| Step::Send(c, p)),
        (0usize..4, 0u8..6).prop_map(|(c, p)| Step::Peer(c, p)),
        (0usize..4).prop_map(Step::Close),
        (0usize..4).prop_map(Step::Revoke),
        (0u16..700).prop_map(Step::Advance),
        Just(Step::BindFails),
    ]
}

const PEERS: [&str; 6] =
    ["8.8.8.8:1000", "8.8.4.4:2000", "127.0.0.1:3000", "[2606:4700::1]:53", "0.0.0.0:1", "1.1.1.1:3478"];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn server_survives_random_scripts(steps in proptest::collection::vec(step(), 1..60)) {
        let mut cfg = config();
        cfg.max_allocations_per_credential = 2;
        cfg.max_permissions_per_allocation = 3;
        cfg.max_channels_per_allocation = 2;
        let mut h = Harness::new(cfg);
        let mut clients: Vec<Client> = (0..4)
            .map(|i| {
                let booking = if i < 2 { "b1" } else { "b2" };
                Client::new(&format!("192.0.2.{}:4000{i}", 10 + i), booking, &format!("p{i}"), UNIX0 + 2000)
            })
            .collect();
        // Learn a nonce for everyone.
        for c in clients.iter_mut() {
            let req = c.unauthenticated(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
            let (_, cmds) = h.input(c.five_tuple, &req);
            c.learn_nonce(&only_message(&cmds));
        }
        let mut live: HashSet<SocketAddr> = HashSet::new();
        let mut pending = Vec::new();
        let mut next_port = 50_000u16;
        let mut relay_of: Vec<Option<SocketAddr>> = vec![None; 4];
        for s in steps {
            let mut cmds = Vec::new();
            match s {
                Step::Garbage(c, b) => cmds.extend(h.input(clients[c].five_tuple, &b).1),
                Step::Allocate(c) => cmds.extend(clients[c].exchange(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(17)])),
                Step::Permission(c, p) => cmds.extend(clients[c].exchange(&mut h, Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(addr(PEERS[p as usize]))])),
                Step::Bind(c, ch, p) => cmds.extend(clients[c].exchange(&mut h, Method::CHANNEL_BIND, &[Attribute::ChannelNumber(ch), Attribute::XorPeerAddress(addr(PEERS[p as usize]))])),
                Step::Refresh(c, l) => cmds.extend(clients[c].exchange(&mut h, Method::REFRESH, &[Attribute::Lifetime(l)])),
                Step::ChannelData(c, ch) => {
                    let mut b = vec![0u8; 8];
                    b[..2].copy_from_slice(&ch.to_be_bytes());
                    b[3] = 4;
                    let (t, more) = h.input(clients[c].five_tuple, &b);
                    if let Some((relay, _, _)) = t {
                        prop_assert!(live.contains(&relay));
                    }
                    cmds.extend(more);
                }
                Step::Send(c, p) => {
                    let mut e = MessageEncoder::new(Class::Indication, Method::SEND, TransactionId([2; 12]));
                    e.attribute(&Attribute::XorPeerAddress(addr(PEERS[p as usize]))).attribute(&Attribute::Data(b"x"));
                    let (t, more) = h.input(clients[c].five_tuple, &e.finish().unwrap());
                    if let Some((relay, peer, _)) = t {
                        prop_assert!(live.contains(&relay));
                        prop_assert!(PeerPolicy::default().check(peer).is_ok());
                    }
                    cmds.extend(more);
                }
                Step::Peer(c, p) => {
                    if let Some(relay) = relay_of[c] {
                        let _ = h.server.handle_peer_input(h.now, relay, addr(PEERS[p as usize]), 10);
                    }
                }
                Step::Close(c) => {
                    h.server.handle_client_closed(h.now, clients[c].five_tuple);
                }
                Step::Revoke(c) => {
                    let booking = if c < 2 { "b1" } else { "b2" };
                    h.server.revoke_booking(h.now, booking, UNIX0 + 2000);
                }
                Step::Advance(secs) => cmds.extend(h.advance(Duration::from_secs(u64::from(secs)))),
                Step::BindFails => {
                    if let Some(p) = pending.pop() {
                        h.server.handle_relay_bound(h.now, p, Err(()));
                    }
                }
            }
            cmds.extend(h.drain());
            let mut queue = cmds;
            while !queue.is_empty() {
                let mut next = Vec::new();
                for c in queue {
                    match c {
                        Command::BindRelay { pending: p, .. } => {
                            if next_port.is_multiple_of(4) {
                                pending.push(p);
                            } else {
                                let bound = SocketAddr::new("198.51.100.10".parse().unwrap(), next_port);
                                h.server.handle_relay_bound(h.now, p, Ok((bound, bound)));
                                prop_assert!(live.insert(bound));
                                next.extend(h.drain());
                            }
                            next_port += 1;
                        }
                        Command::FreeRelay { relay } => {
                            prop_assert!(live.remove(&relay), "double or unknown free {relay}");
                        }
                        Command::SendToClient { to, message } => {
                            prop_assert!(Message::decode(&message).is_ok());
                            if let Some(i) = clients.iter().position(|c| c.five_tuple == to) {
                                let m = Message::decode(&message).unwrap();
                                if let Some(Ok(Attribute::XorRelayedAddress(a))) = m.get(duet_relay::stun::attr::XOR_RELAYED_ADDRESS) {
                                    relay_of[i] = Some(a);
                                }
                            }
                        }
                    }
                }
                queue = next;
            }
            // Bound-but-freed-on-arrival sockets (cancelled) are inserted then removed above.
            let s = h.server.stats();
            prop_assert_eq!(
                h.server.allocation_count() as u64,
                s.allocations_active_udp + s.allocations_active_tcp + s.allocations_active_tls
            );
            prop_assert_eq!(h.server.allocation_count(), live.len());
        }
    }
}
