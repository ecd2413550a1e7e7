//! Arbitrary sequences of driver events through `Server` on virtual time: client datagrams
//! (raw bytes, or well-formed requests with valid MESSAGE-INTEGRITY so that the fuzzer reaches
//! allocations, permissions and channels), ChannelData and Send indications, peer datagrams,
//! relay-bind results, timeouts, client closes, revocations and reloads. Checks that nothing
//! panics and that the bookkeeping the driver sees stays consistent.
#![no_main]

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use duet_relay::channel::write_channel_data_header;
use duet_relay::stun::{Attribute, Class, Message, MessageEncoder, Method, TransactionId, attr};
use duet_relay::{
    AddressFamily, ChannelNumber, Command, FiveTuple, PeerPolicy, PendingAllocation, Server, ServerConfig,
    StaticCredential, Transport, long_term_key, rest_password,
};
use libfuzzer_sys::fuzz_target;

const UNIX0: u64 = 1_700_000_000;
const REALM: &str = "duet";
const SECRET: &[u8] = b"fuzz-secret";

#[derive(Arbitrary, Debug)]
enum Op {
    /// Arbitrary bytes from client `who`.
    Raw {
        who: u8,
        bytes: Vec<u8>,
    },
    /// A well-formed request from client `who`.
    Request {
        who: u8,
        method: u8,
        attrs: Vec<FAttr>,
        auth: bool,
        fingerprint: bool,
        tid: u8,
    },
    /// ChannelData from client `who`.
    ChannelData {
        who: u8,
        channel: u16,
        len: u16,
        pad: u8,
    },
    /// A Send indication from client `who`.
    Send {
        who: u8,
        peer: u8,
        len: u16,
    },
    /// A datagram on relay socket `relay` (index into known relays) from peer `peer`.
    Peer {
        relay: u8,
        peer: u8,
        len: u16,
    },
    /// Completes the `idx`-th outstanding BindRelay.
    Bound {
        idx: u8,
        ok: bool,
        port: u16,
        reuse: bool,
    },
    /// Virtual time passes (ms); fires due timers like the driver.
    Advance {
        ms: u32,
    },
    /// Calls handle_timeout right now, with a wall clock that may have stepped.
    Timeout {
        unix_step: i16,
    },
    Close {
        who: u8,
    },
    Revoke {
        booking: u8,
        until: u16,
    },
    Secrets {
        which: u8,
    },
    Statics {
        which: u8,
    },
}

#[derive(Arbitrary, Debug)]
enum FAttr {
    Transport(u8),
    Lifetime(u32),
    Family(u8),
    Additional(u8),
    EvenPort(bool),
    Token([u8; 8]),
    Channel(u16),
    PeerAddr(u8),
    Data(u8),
    DontFragment,
    Unknown(u16, u8),
}

struct Identity {
    five_tuple: FiveTuple,
    username: String,
    password: String,
}

fn peer_pool(i: u8) -> SocketAddr {
    let list: [&str; 12] = [
        "8.8.8.8:53",
        "8.8.4.4:6000",
        "127.0.0.1:5000",
        "10.0.0.1:1",
        "0.0.0.0:1",
        "169.254.169.254:80",
        "[::ffff:127.0.0.1]:22",
        "[2606:4700::1111]:443",
        "[::]:1",
        "[64:ff9b::7f00:1]:1",
        "1.1.1.1:0",
        "203.0.113.1:3478",
    ];
    list[usize::from(i) % list.len()].parse().unwrap()
}

fn identities() -> Vec<Identity> {
    let server: SocketAddr = "203.0.113.1:3478".parse().unwrap();
    let mk = |transport, client: &str, username: String, password: String| Identity {
        five_tuple: FiveTuple { transport, server, client: client.parse().unwrap() },
        username,
        password,
    };
    let rest = |u: String| {
        let p = rest_password(SECRET, &u);
        (u, p)
    };
    let (u0, p0) = rest(format!("{}:b1:host", UNIX0 + 3600));
    let (u1, p1) = rest(format!("{}:b1:guest", UNIX0 + 3600));
    let (u2, p2) = rest(format!("{}:b2", UNIX0 + 120));
    let (u3, p3) = rest(format!("{}:b3:x", UNIX0 + 1));
    vec![
        mk(Transport::Udp, "192.0.2.50:40000", u0.clone(), p0.clone()),
        mk(Transport::Tcp, "192.0.2.50:40001", u0, p0),
        mk(Transport::Udp, "[2001:db8::5]:40000", u1, p1),
        mk(Transport::Tls, "192.0.2.51:1", u2, p2),
        mk(Transport::Udp, "192.0.2.52:1", u3, p3),
        mk(Transport::Udp, "192.0.2.53:1", "vy-user".into(), "vy-pass".into()),
        mk(Transport::Udp, "192.0.2.53:2", "vy-user".into(), "wrong".into()),
    ]
}

fn statics(which: u8) -> Vec<StaticCredential> {
    match which % 3 {
        0 => Vec::new(),
        1 => vec![StaticCredential { username: "vy-user".into(), password: "vy-pass".into(), max_allocations: 2 }],
        _ => vec![StaticCredential { username: "vy-user".into(), password: "changed".into(), max_allocations: 1 }],
    }
}

struct World {
    server: Server,
    t0: Instant,
    now: Instant,
    unix_offset: i64,
    ids: Vec<Identity>,
    nonce: Option<String>,
    pending: Vec<PendingAllocation>,
    relays: Vec<SocketAddr>,
    bound: HashSet<SocketAddr>,
    next_port: u16,
}

impl World {
    fn unix(&self) -> Duration {
        let secs = (UNIX0 as i64 + (self.now - self.t0).as_secs() as i64 + self.unix_offset).max(0);
        Duration::from_secs(secs as u64)
    }

    fn drain(&mut self) {
        while let Some(cmd) = self.server.poll_command() {
            match cmd {
                Command::SendToClient { message, .. } => {
                    let m = Message::decode(&message).expect("server output decodes");
                    if let Some(Ok(Attribute::Nonce(n))) = m.get(attr::NONCE) {
                        self.nonce = Some(n.to_string());
                    }
                }
                Command::BindRelay { pending, .. } => self.pending.push(pending),
                Command::FreeRelay { relay } => {
                    assert!(self.bound.remove(&relay), "FreeRelay of a socket that is not bound: {relay}");
                }
            }
        }
    }

    fn request(&self, who: usize, method: u8, attrs: &[FAttr], auth: bool, fp: bool, tid: u8) -> Option<Vec<u8>> {
        let id = &self.ids[who];
        let method = match method % 6 {
            0 => Method::BINDING,
            1 => Method::ALLOCATE,
            2 => Method::REFRESH,
            3 => Method::CREATE_PERMISSION,
            4 => Method::CHANNEL_BIND,
            _ => Method::SEND,
        };
        let data = [0x55u8; 300];
        let mut e = MessageEncoder::new(Class::Request, method, TransactionId([tid; 12]));
        for a in attrs.iter().take(20) {
            let a = match *a {
                FAttr::Transport(p) => Attribute::RequestedTransport(p),
                FAttr::Lifetime(l) => Attribute::Lifetime(l),
                FAttr::Family(f) => Attribute::RequestedAddressFamily(f),
                FAttr::Additional(f) => Attribute::AdditionalAddressFamily(f),
                FAttr::EvenPort(r) => Attribute::EvenPort(r),
                FAttr::Token(t) => Attribute::ReservationToken(t),
                FAttr::Channel(c) => Attribute::ChannelNumber(c),
                FAttr::PeerAddr(p) => Attribute::XorPeerAddress(peer_pool(p)),
                FAttr::Data(n) => Attribute::Data(&data[..usize::from(n)]),
                FAttr::DontFragment => Attribute::DontFragment,
                FAttr::Unknown(t, n) => Attribute::Unknown { typ: t, value: &data[..usize::from(n % 64)] },
            };
            e.attribute(&a);
        }
        if auth {
            e.attribute(&Attribute::Username(&id.username))
                .attribute(&Attribute::Realm(REALM))
                .attribute(&Attribute::Nonce(self.nonce.as_deref().unwrap_or("none")))
                .message_integrity(&long_term_key(&id.username, REALM, &id.password));
        }
        if fp {
            e.fingerprint();
        }
        e.finish().ok()
    }

    fn check(&self) {
        let s = self.server.stats();
        let active = s.allocations_active_udp + s.allocations_active_tcp + s.allocations_active_tls;
        assert_eq!(active as usize, self.server.allocation_count());
        assert!(self.bound.len() >= self.server.allocation_count());
        if let Some(t) = self.server.poll_timeout() {
            let _ = t;
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let t0 = Instant::now();
    let mut config = ServerConfig::new(REALM, vec![SECRET.to_vec()], [3; 32]);
    config.relay_families = vec![AddressFamily::V4, AddressFamily::V6];
    config.peer_policy = PeerPolicy::default();
    config.max_allocations_per_credential = 2;
    config.max_allocations_total = 5;
    config.max_permissions_per_allocation = 3;
    config.max_channels_per_allocation = 2;
    config.max_bytes_per_second_per_allocation = Some(50_000);
    config.max_bytes_per_second_total = Some(120_000);
    config.static_credentials = statics(1);
    let mut w = World {
        server: Server::new(config, t0, Duration::from_secs(UNIX0)),
        t0,
        now: t0,
        unix_offset: 0,
        ids: identities(),
        nonce: None,
        pending: Vec::new(),
        relays: Vec::new(),
        bound: HashSet::new(),
        next_port: 50_000,
    };
    for op in ops.into_iter().take(200) {
        let n = w.ids.len();
        match op {
            Op::Raw { who, bytes } => {
                let ft = w.ids[usize::from(who) % n].five_tuple;
                if let Some(t) = w.server.handle_client_input(w.now, ft, &bytes) {
                    assert!(w.bound.contains(&t.relay));
                }
            }
            Op::Request { who, method, attrs, auth, fingerprint, tid } => {
                let who = usize::from(who) % n;
                if let Some(req) = w.request(who, method, &attrs, auth, fingerprint, tid) {
                    let ft = w.ids[who].five_tuple;
                    let _ = w.server.handle_client_input(w.now, ft, &req);
                }
            }
            Op::ChannelData { who, channel, len, pad } => {
                let ft = w.ids[usize::from(who) % n].five_tuple;
                let len = usize::from(len % 2048);
                let mut buf = vec![0u8; 4 + len + usize::from(pad % 4)];
                buf[..2].copy_from_slice(&channel.to_be_bytes());
                buf[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                if let Some(ch) = ChannelNumber::new(channel) {
                    write_channel_data_header(&mut buf, ch, len as u16);
                }
                if let Some(t) = w.server.handle_client_input(w.now, ft, &buf) {
                    assert!(w.bound.contains(&t.relay));
                    assert_eq!(t.payload.len(), len);
                }
            }
            Op::Send { who, peer, len } => {
                let ft = w.ids[usize::from(who) % n].five_tuple;
                let data = vec![1u8; usize::from(len % 2048)];
                let mut e = MessageEncoder::new(Class::Indication, Method::SEND, TransactionId([1; 12]));
                e.attribute(&Attribute::XorPeerAddress(peer_pool(peer))).attribute(&Attribute::Data(&data));
                let pkt = e.finish().unwrap();
                if let Some(t) = w.server.handle_client_input(w.now, ft, &pkt) {
                    assert_eq!(t.peer, peer_pool(peer));
                    assert_eq!(t.payload, &data[..]);
                }
            }
            Op::Peer { relay, peer, len } => {
                let relay = if w.relays.is_empty() {
                    "198.51.100.10:1".parse().unwrap()
                } else {
                    w.relays[usize::from(relay) % w.relays.len()]
                };
                let _ = w.server.handle_peer_input(w.now, relay, peer_pool(peer), usize::from(len));
            }
            Op::Bound { idx, ok, port, reuse } => {
                if w.pending.is_empty() {
                    continue;
                }
                let pending = w.pending.remove(usize::from(idx) % w.pending.len());
                let result = if ok {
                    let addr = if reuse && !w.relays.is_empty() {
                        w.relays[usize::from(port) % w.relays.len()]
                    } else {
                        w.next_port = w.next_port.wrapping_add(1).max(1024);
                        let ip: IpAddr = if port % 3 == 0 {
                            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10).into()
                        } else {
                            Ipv4Addr::new(198, 51, 100, 10).into()
                        };
                        SocketAddr::new(ip, w.next_port)
                    };
                    w.relays.push(addr);
                    // A reused address models a buggy driver or a stale token: the server must
                    // answer 508 and must not free the live socket (checked in `drain`).
                    w.bound.insert(addr);
                    Ok((addr, addr))
                } else {
                    Err(())
                };
                w.server.handle_relay_bound(w.now, pending, result);
            }
            Op::Advance { ms } => {
                let end = w.now + Duration::from_millis(u64::from(ms % 4_000_000));
                while let Some(t) = w.server.poll_timeout() {
                    if t > end {
                        break;
                    }
                    w.now = w.now.max(t);
                    let unix = w.unix();
                    w.server.handle_timeout(w.now, unix);
                    w.drain();
                }
                w.now = end;
            }
            Op::Timeout { unix_step } => {
                w.unix_offset += i64::from(unix_step);
                let unix = w.unix();
                w.server.handle_timeout(w.now, unix);
            }
            Op::Close { who } => {
                let ft = w.ids[usize::from(who) % n].five_tuple;
                w.server.handle_client_closed(w.now, ft);
            }
            Op::Revoke { booking, until } => {
                let b = ["b1", "b2", "b3", "vy-user", ""][usize::from(booking) % 5];
                w.server.revoke_booking(w.now, b, UNIX0 + u64::from(until));
            }
            Op::Secrets { which } => {
                let secrets = match which % 3 {
                    0 => vec![SECRET.to_vec()],
                    1 => vec![b"other".to_vec(), SECRET.to_vec()],
                    _ => Vec::new(),
                };
                w.server.set_auth_secrets(secrets);
            }
            Op::Statics { which } => {
                w.server.set_static_credentials(statics(which));
            }
        }
        w.drain();
        w.check();
    }
    if report() {
        // Which states this input reached (FUZZ_REPORT=1 with -runs=0 over the corpus).
        let s = w.server.stats();
        eprintln!(
            "REACHED allocs={} to_peer={} to_client={} bw_drops={} peer_denied={} revoked={} cred_expired={} quota={} capacity={} stale={}",
            s.allocations_created,
            s.relayed_packets_to_peer,
            s.relayed_packets_to_client,
            s.drops_bandwidth,
            s.peer_denied,
            s.allocations_revoked,
            s.allocations_credential_expired,
            s.quota_refusals,
            s.capacity_refusals,
            s.stale_nonces,
        );
    }
});

fn report() -> bool {
    static REPORT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REPORT.get_or_init(|| std::env::var_os("FUZZ_REPORT").is_some())
}
