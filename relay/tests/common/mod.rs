//! Shared helpers for the scenario tests: a server on virtual time and a TURN client that
//! builds its requests with the crate's own encoder.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use duet_relay::stun::{Attribute, Class, Message, MessageEncoder, Method, TransactionId, attr, error_code};
use duet_relay::{
    AddressFamily, Command, FiveTuple, PeerPolicy, Server, ServerConfig, Transport, long_term_key, rest_password,
};

pub const SECRET: &[u8] = b"turn-secret";
pub const REALM: &str = "duet";
/// Unix time at the start of every scenario.
pub const UNIX0: u64 = 1_700_000_000;
pub const LISTENER: &str = "203.0.113.1:3478";

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub fn config() -> ServerConfig {
    let mut c = ServerConfig::new(REALM, vec![SECRET.to_vec()], [9; 32]);
    c.relay_families = vec![AddressFamily::V4, AddressFamily::V6];
    c.peer_policy = PeerPolicy::default();
    c.max_unauthenticated_replies_per_source_per_sec = 100;
    c
}

/// A relayed client → peer datagram: (relay, peer, payload).
pub type Relayed = (SocketAddr, SocketAddr, Vec<u8>);

/// A server on virtual time.
pub struct Harness {
    pub server: Server,
    pub t0: Instant,
    pub now: Instant,
    /// Next port handed out for relay sockets.
    pub next_relay_port: u16,
}

impl Harness {
    pub fn new(config: ServerConfig) -> Self {
        let t0 = Instant::now();
        Harness { server: Server::new(config, t0, Duration::from_secs(UNIX0)), t0, now: t0, next_relay_port: 50_000 }
    }

    pub fn unix_now(&self) -> Duration {
        Duration::from_secs(UNIX0) + (self.now - self.t0)
    }

    pub fn unix_secs(&self) -> u64 {
        self.unix_now().as_secs()
    }

    /// Advances virtual time, firing every timer on the way like a driver would.
    pub fn advance(&mut self, d: Duration) -> Vec<Command> {
        let end = self.now + d;
        let mut out = Vec::new();
        while let Some(t) = self.server.poll_timeout() {
            if t > end {
                break;
            }
            self.now = self.now.max(t);
            let unix = self.unix_now();
            self.server.handle_timeout(self.now, unix);
            out.extend(self.drain());
        }
        self.now = end;
        let unix = self.unix_now();
        self.server.handle_timeout(self.now, unix);
        out.extend(self.drain());
        out
    }

    pub fn drain(&mut self) -> Vec<Command> {
        std::iter::from_fn(|| self.server.poll_command()).collect()
    }

    /// Feeds a client packet; returns the relayed transmit (owned) and the commands.
    pub fn input(&mut self, from: FiveTuple, packet: &[u8]) -> (Option<Relayed>, Vec<Command>) {
        let t = self.server.handle_client_input(self.now, from, packet).map(|t| (t.relay, t.peer, t.payload.to_vec()));
        (t, self.drain())
    }

    /// Completes every BindRelay in `cmds` with a fresh port; returns the other commands.
    pub fn bind_relays(&mut self, cmds: Vec<Command>) -> Vec<Command> {
        let mut out = Vec::new();
        for c in cmds {
            match c {
                Command::BindRelay { pending, family, .. } => {
                    let ip = match family {
                        AddressFamily::V4 => "198.51.100.10",
                        AddressFamily::V6 => "2001:db8::10",
                    };
                    let port = self.next_relay_port;
                    self.next_relay_port += 2;
                    let bound = SocketAddr::new(ip.parse().unwrap(), port);
                    self.server.handle_relay_bound(self.now, pending, Ok((bound, bound)));
                    out.extend(self.drain());
                }
                other => out.push(other),
            }
        }
        out
    }
}

/// A TURN client with REST credentials.
pub struct Client {
    pub five_tuple: FiveTuple,
    pub username: String,
    pub password: String,
    pub nonce: Option<String>,
    pub fingerprint: bool,
    next_tid: u8,
}

impl Client {
    pub fn new(client: &str, booking: &str, participant: &str, expiry_unix: u64) -> Self {
        Self::with_transport(Transport::Udp, client, booking, participant, expiry_unix)
    }

    pub fn with_transport(
        transport: Transport,
        client: &str,
        booking: &str,
        participant: &str,
        expiry_unix: u64,
    ) -> Self {
        let username = format!("{expiry_unix}:{booking}:{participant}");
        let password = rest_password(SECRET, &username);
        Client {
            five_tuple: FiveTuple { transport, server: addr(LISTENER), client: addr(client) },
            username,
            password,
            nonce: None,
            fingerprint: true,
            next_tid: 1,
        }
    }

    pub fn tid(&mut self) -> TransactionId {
        self.next_tid = self.next_tid.wrapping_add(1);
        let mut t = [0x5a; 12];
        t[0] = self.next_tid;
        t[1..5].copy_from_slice(&self.five_tuple.client.port().to_be_bytes().repeat(2));
        TransactionId(t)
    }

    pub fn key(&self) -> [u8; 16] {
        long_term_key(&self.username, REALM, &self.password)
    }

    /// An authenticated request (USERNAME, REALM, NONCE, MI, FINGERPRINT).
    pub fn request(&mut self, method: Method, attrs: &[Attribute<'_>]) -> Vec<u8> {
        let tid = self.tid();
        self.request_with_tid(method, tid, attrs)
    }

    pub fn request_with_tid(&self, method: Method, tid: TransactionId, attrs: &[Attribute<'_>]) -> Vec<u8> {
        let mut e = MessageEncoder::new(Class::Request, method, tid);
        for a in attrs {
            e.attribute(a);
        }
        e.attribute(&Attribute::Username(&self.username))
            .attribute(&Attribute::Realm(REALM))
            .attribute(&Attribute::Nonce(self.nonce.as_deref().unwrap_or("none")))
            .message_integrity(&self.key());
        if self.fingerprint {
            e.fingerprint();
        }
        e.finish().unwrap()
    }

    /// A request without credentials (the first round trip).
    pub fn unauthenticated(&mut self, method: Method, attrs: &[Attribute<'_>]) -> Vec<u8> {
        let mut e = MessageEncoder::new(Class::Request, method, self.tid());
        for a in attrs {
            e.attribute(a);
        }
        e.finish().unwrap()
    }

    /// Learns the nonce from a 401/438 response.
    pub fn learn_nonce(&mut self, response: &[u8]) {
        let m = Message::decode(response).unwrap();
        if let Some(Ok(Attribute::Nonce(n))) = m.get(attr::NONCE) {
            self.nonce = Some(n.to_string());
        }
    }

    /// Allocate with the 401 round trip; returns the relay address from the success response.
    pub fn allocate(&mut self, h: &mut Harness) -> SocketAddr {
        let req = self.unauthenticated(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
        let (_, cmds) = h.input(self.five_tuple, &req);
        let resp = only_message(&cmds);
        assert_eq!(error(&resp), Some(error_code::UNAUTHENTICATED));
        self.learn_nonce(&resp);
        let req = self.request(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
        let (_, cmds) = h.input(self.five_tuple, &req);
        let cmds = h.bind_relays(cmds);
        let resp = only_message(&cmds);
        assert_eq!(class(&resp), Class::SuccessResponse, "allocate failed: {:?}", error(&resp));
        let m = Message::decode(&resp).unwrap();
        m.verify_integrity(&self.key()).unwrap();
        match m.get(attr::XOR_RELAYED_ADDRESS) {
            Some(Ok(Attribute::XorRelayedAddress(a))) => a,
            other => panic!("no relayed address: {other:?}"),
        }
    }

    /// Sends an authenticated request and returns the single response.
    pub fn call(&mut self, h: &mut Harness, method: Method, attrs: &[Attribute<'_>]) -> Vec<u8> {
        let req = self.request(method, attrs);
        let (_, cmds) = h.input(self.five_tuple, &req);
        only_message(&cmds)
    }

    /// Like a real client: sends an authenticated request, and on 438 learns the fresh nonce
    /// and retries once. Returns all commands of the final attempt.
    pub fn exchange(&mut self, h: &mut Harness, method: Method, attrs: &[Attribute<'_>]) -> Vec<Command> {
        let req = self.request(method, attrs);
        let (_, cmds) = h.input(self.five_tuple, &req);
        if let [Command::SendToClient { message, .. }] = cmds.as_slice()
            && error(message) == Some(error_code::STALE_NONCE)
        {
            self.learn_nonce(&message.clone());
            let req = self.request(method, attrs);
            return h.input(self.five_tuple, &req).1;
        }
        cmds
    }
}

/// The single SendToClient message among `cmds`.
pub fn only_message(cmds: &[Command]) -> Vec<u8> {
    let msgs: Vec<&Vec<u8>> = cmds
        .iter()
        .filter_map(|c| match c {
            Command::SendToClient { message, .. } => Some(message),
            _ => None,
        })
        .collect();
    assert_eq!(msgs.len(), 1, "expected one response, got {cmds:?}");
    msgs[0].clone()
}

pub fn class(msg: &[u8]) -> Class {
    Message::decode(msg).unwrap().class()
}

pub fn error(msg: &[u8]) -> Option<u16> {
    match Message::decode(msg).unwrap().get(attr::ERROR_CODE) {
        Some(Ok(Attribute::ErrorCode { code, .. })) => Some(code),
        _ => None,
    }
}

pub fn lifetime(msg: &[u8]) -> Option<u32> {
    match Message::decode(msg).unwrap().get(attr::LIFETIME) {
        Some(Ok(Attribute::Lifetime(l))) => Some(l),
        _ => None,
    }
}

pub fn freed(cmds: &[Command]) -> Vec<SocketAddr> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::FreeRelay { relay } => Some(*relay),
            _ => None,
        })
        .collect()
}

/// A ChannelData message (RFC 8656 §12.4) carrying `data` on channel `ch`.
pub fn channel_data(ch: u16, data: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 4 + data.len()];
    buf[4..].copy_from_slice(data);
    duet_relay::write_channel_data_header(&mut buf, duet_relay::ChannelNumber::new(ch).unwrap(), data.len() as u16);
    buf
}
