//! The TURN server state machine (RFC 8656 with RFC 8489 long-term authentication).
//!
//! See the crate documentation for the run-loop contract. Internally every allocation lives in
//! one map keyed by an id, with redundant indices so that each relayed packet costs O(1) hash
//! lookups: client [`FiveTuple`] → allocation, relay address → allocation, and per allocation
//! peer IP → `Permission`, channel → `ChannelBinding`, peer address → channel.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use crate::auth::{NonceCodec, RestUsername, long_term_key, rest_password};
use crate::channel::{ChannelNumber, parse_channel_data};
use crate::policy::PeerPolicy;
use crate::ratelimit::SourceRateLimiter;
use crate::stun::{Attribute, Class, Message, MessageEncoder, Method, TransactionId, attr, error_code, family};

/// Lifetime of a permission (RFC 8656 §9: 300 s, not negotiable).
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// Lifetime of a channel binding (RFC 8656 §12: 600 s).
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// After a channel binding expires, neither its number nor its peer may be rebound to something
/// else for this long (RFC 8656 §12: 5 minutes).
pub const CHANNEL_REBIND_GUARD: Duration = Duration::from_secs(300);
/// XOR-PEER-ADDRESS attributes considered per CreatePermission; more → 508. Above every sane
/// `max_permissions_per_allocation`.
pub const MAX_PEERS_PER_REQUEST: usize = 16;
/// Unknown comprehension-required attribute types listed in a 420 response.
const MAX_UNKNOWN: usize = 16;
/// Deadlines further away than this are clamped (protects `Instant` arithmetic from overflow).
const MAX_HORIZON: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Smallest bucket size of a bandwidth cap, bytes: one maximal ChannelData / Send payload
/// (65 535 bytes) always fits, so a low cap slows a flow down instead of blocking large
/// datagrams forever.
pub const BANDWIDTH_MIN_BURST: u64 = 65_536;
/// Nanoseconds per second: token buckets count in byte-nanoseconds so that refills on
/// microsecond-spaced packets lose nothing to rounding.
const NANOS: u128 = 1_000_000_000;

/// The burst (bucket size, bytes) used for a bandwidth cap of `rate` bytes/s: one second's
/// worth of traffic, at least [`BANDWIDTH_MIN_BURST`]; 0 for a cap of 0 (nothing relayed).
pub const fn bandwidth_burst(rate: u64) -> u64 {
    if rate == 0 {
        0
    } else if rate < BANDWIDTH_MIN_BURST {
        BANDWIDTH_MIN_BURST
    } else {
        rate
    }
}

/// A legacy static long-term credential (RFC 8489 §9.2) for the `vy` drop-in mode (DESIGN §4).
///
/// The MESSAGE-INTEGRITY key is MD5(`username` ":" realm ":" `password`) (RFC 8489 §9.2.2;
/// the password is used as is, without OpaqueString processing, so keep it ASCII). It never
/// expires and names no booking, but obeys its own allocation quota (`max_allocations`,
/// beyond → 486) and every other control (per-source-IP and total quotas, peer policy,
/// permission/channel caps, bandwidth caps, nonces, rate limits). `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticCredential {
    /// USERNAME as sent by the client (at most 512 bytes to be usable, RFC 8489 §14.3).
    pub username: String,
    /// The long-term password.
    pub password: String,
    /// Concurrent allocations allowed for this username (0: none); beyond → 486.
    pub max_allocations: u32,
}

impl std::fmt::Debug for StaticCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticCredential")
            .field("username", &self.username)
            .field("password", &format_args!("hidden"))
            .field("max_allocations", &self.max_allocations)
            .finish()
    }
}

/// Settings of a [`Server`]. Build with [`ServerConfig::new`] and adjust fields. `Debug` hides
/// the secrets.
#[derive(Clone)]
pub struct ServerConfig {
    /// REALM sent in 401/438 and required in requests (RFC 8489 §14.9), e.g. `"duet"`.
    pub realm: String,
    /// TURN REST secrets; a credential made with any of them is accepted (rotation). With none,
    /// every authenticated request fails with 401.
    pub auth_secrets: Vec<Vec<u8>>,
    /// Key of the stateless nonce MAC.
    pub nonce_secret: [u8; 32],
    /// How long a nonce stays valid before 438 Stale Nonce (default 600 s).
    pub nonce_lifetime: Duration,
    /// SOFTWARE attribute value; `None` (default) sends none (research/turn.md §3.2 #17).
    pub software: Option<String>,
    /// Allocation lifetime when the client requests none (RFC 8656 §3.2: 600 s).
    pub default_lifetime: Duration,
    /// Upper bound on an allocation lifetime (default 3600 s).
    pub max_lifetime: Duration,
    /// Which peers permissions and channels may name.
    pub peer_policy: PeerPolicy,
    /// Allocations per username (credential); beyond → 486 (default 4).
    pub max_allocations_per_credential: u32,
    /// Allocations per client source IP; beyond → 486 (default 16).
    pub max_allocations_per_source_ip: u32,
    /// Allocations in total (including ones waiting for a relay socket); beyond → 508
    /// (default 10 000).
    pub max_allocations_total: u32,
    /// Permissions (peer IPs) per allocation; beyond → 508 (default 10).
    pub max_permissions_per_allocation: u32,
    /// Channel bindings per allocation; beyond → 508 (default 10).
    pub max_channels_per_allocation: u32,
    /// Replies to unauthenticated requests (401, 400, 420 before authentication) per source IP
    /// per second over UDP, the refill rate of a per-source token bucket of
    /// [`ServerConfig::unauthenticated_reply_burst_per_source`] replies; beyond it requests are
    /// dropped silently and counted in [`Stats::drops_rate_limited`] (default 20). IPv6 sources
    /// are keyed by their /64.
    ///
    /// Only UDP is limited: a UDP source address can be spoofed, so an unbounded reply stream
    /// could be aimed at a victim (a 401 is about 4 times a minimal request). Over TCP/TLS the
    /// handshake has verified the source, a reply goes only to the connection that asked, and a
    /// dropped reply would never be retransmitted (the client would wait forever), so replies on
    /// streams are never suppressed.
    pub max_unauthenticated_replies_per_source_per_sec: u32,
    /// Bucket size of the UDP unauthenticated-reply limit, replies (default 200): 50 clients
    /// behind one NAT address starting at once, each making up to 4 unauthenticated requests
    /// (the 401 round trip of an Allocate for RTP and RTCP, or of two allocations as coturn's
    /// `turnutils_uclient -y` does), are all answered. The most one spoofed source can draw is
    /// this burst once (200 × ~90 bytes of 401, about 18 KB), then
    /// `max_unauthenticated_replies_per_source_per_sec` replies per second.
    pub unauthenticated_reply_burst_per_source: u32,
    /// Relay address families the driver can bind; REQUESTED-ADDRESS-FAMILY outside → 440
    /// (default `[V4]`; RFC 8656 §7.2: without the attribute, IPv4 is allocated).
    pub relay_families: Vec<AddressFamily>,
    /// Bandwidth cap per allocation, payload bytes per second, applied to each direction
    /// (client → peer and peer → client) separately, like coturn's `max-bps`. Token bucket of
    /// [`bandwidth_burst`] bytes (one second's worth, at least 64 KiB) that starts full.
    /// Datagrams over the cap are dropped and counted in [`Stats::drops_bandwidth`].
    /// `None` (default): unlimited. Taken when an allocation is created.
    pub max_bytes_per_second_per_allocation: Option<u64>,
    /// Bandwidth cap of the whole server, payload bytes per second relayed in both directions
    /// together (coturn's `bps-capacity`). Token bucket of [`bandwidth_burst`] bytes.
    /// Over the cap: dropped and counted in [`Stats::drops_bandwidth`]. `None` (default):
    /// unlimited.
    pub max_bytes_per_second_total: Option<u64>,
    /// Queue an [`AllocationEvent`] when an allocation of a booking's credential (TURN REST
    /// username `<expiry>:<booking>:<participant>`) is created and when it ends, drained with
    /// [`Server::poll_event`] (default `false`: nothing is queued, so a driver that never
    /// drains does not grow memory). Allocations of static credentials are never reported.
    pub report_allocations: bool,
    /// Legacy static long-term credentials (DESIGN §4, `vy` drop-in mode only). Looked up
    /// before TURN REST credentials. Default: none. Reload with
    /// [`Server::set_static_credentials`].
    pub static_credentials: Vec<StaticCredential>,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("realm", &self.realm)
            .field("auth_secrets", &format_args!("[{} hidden]", self.auth_secrets.len()))
            .field("nonce_secret", &format_args!("hidden"))
            .field("nonce_lifetime", &self.nonce_lifetime)
            .field("software", &self.software)
            .field("default_lifetime", &self.default_lifetime)
            .field("max_lifetime", &self.max_lifetime)
            .field("peer_policy", &self.peer_policy)
            .field("max_allocations_per_credential", &self.max_allocations_per_credential)
            .field("max_allocations_per_source_ip", &self.max_allocations_per_source_ip)
            .field("max_allocations_total", &self.max_allocations_total)
            .field("max_permissions_per_allocation", &self.max_permissions_per_allocation)
            .field("max_channels_per_allocation", &self.max_channels_per_allocation)
            .field(
                "max_unauthenticated_replies_per_source_per_sec",
                &self.max_unauthenticated_replies_per_source_per_sec,
            )
            .field("unauthenticated_reply_burst_per_source", &self.unauthenticated_reply_burst_per_source)
            .field("relay_families", &self.relay_families)
            .field("max_bytes_per_second_per_allocation", &self.max_bytes_per_second_per_allocation)
            .field("max_bytes_per_second_total", &self.max_bytes_per_second_total)
            .field("report_allocations", &self.report_allocations)
            .field("static_credentials", &format_args!("[{} hidden]", self.static_credentials.len()))
            .finish()
    }
}

impl ServerConfig {
    /// A configuration with the defaults documented on each field and a default-deny peer
    /// policy ([`PeerPolicy::default`]).
    pub fn new(realm: impl Into<String>, auth_secrets: Vec<Vec<u8>>, nonce_secret: [u8; 32]) -> Self {
        ServerConfig {
            realm: realm.into(),
            auth_secrets,
            nonce_secret,
            nonce_lifetime: Duration::from_secs(600),
            software: None,
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            peer_policy: PeerPolicy::default(),
            max_allocations_per_credential: 4,
            max_allocations_per_source_ip: 16,
            max_allocations_total: 10_000,
            max_permissions_per_allocation: 10,
            max_channels_per_allocation: 10,
            max_unauthenticated_replies_per_source_per_sec: 20,
            unauthenticated_reply_burst_per_source: 200,
            relay_families: vec![AddressFamily::V4],
            max_bytes_per_second_per_allocation: None,
            max_bytes_per_second_total: None,
            report_allocations: false,
            static_credentials: Vec::new(),
        }
    }
}

/// Transport between client and server (RFC 8656 §2: the "transport" of the 5-tuple).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP (RFC 8656 §3.1).
    Tcp,
    /// TLS over TCP (TURNS).
    Tls,
}

/// The client side 5-tuple (RFC 8656 §2 "5-tuple"): transport + server listener address +
/// client address. Identifies at most one allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    /// Transport protocol.
    pub transport: Transport,
    /// The server's listener address the client talks to.
    pub server: SocketAddr,
    /// The client's address as seen by the server (its server-reflexive address).
    pub client: SocketAddr,
}

/// Client → peer datagram to send: the driver sends `payload` from the relay socket bound at
/// `relay` to `peer`. `payload` borrows the client's packet (no copy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerTransmit<'a> {
    /// Local address of the relay socket (as passed to [`Server::handle_relay_bound`] as `bound`).
    pub relay: SocketAddr,
    /// Destination peer.
    pub peer: SocketAddr,
    /// Application data to send as one UDP datagram.
    pub payload: &'a [u8],
}

/// Peer → client delivery chosen by the server for a datagram received on a relay socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientDelivery {
    /// Channel bound: the driver writes the 4-byte ChannelData header in place before the
    /// payload ([`crate::channel::write_channel_data_header`]) and sends 4 + len bytes (+ padding
    /// to 4 for TCP/TLS, RFC 8656 §12.5) to `to`.
    ChannelData {
        /// The allocation's client 5-tuple.
        to: FiveTuple,
        /// The channel bound to the peer.
        channel: ChannelNumber,
    },
    /// No channel, permission exists: the driver encodes a Data indication with
    /// [`encode_data_indication`] (RFC 8656 §11.4) and sends it to `to`.
    DataIndication {
        /// The allocation's client 5-tuple.
        to: FiveTuple,
    },
}

/// Encodes a Data indication (RFC 8656 §11.4) carrying `payload` from `peer` into `out`
/// (cleared first; its capacity is reused). The transaction ID is derived from the content
/// (indications need no random ID; the server has no RNG).
///
/// If the message would exceed 65 535 bytes of attributes (a near-64 KiB IPv6 datagram), `out`
/// is left empty and the datagram must be dropped.
pub fn encode_data_indication(peer: SocketAddr, payload: &[u8], out: &mut Vec<u8>) {
    let mut h = crc32fast::Hasher::new();
    h.update(&payload[..payload.len().min(64)]);
    let crc = h.finalize();
    let mut tid = [0u8; 12];
    tid[..4].copy_from_slice(&crc.to_be_bytes());
    tid[4..8].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    tid[8..10].copy_from_slice(&peer.port().to_be_bytes());
    tid[10..12].copy_from_slice(b"dt");
    let buf = std::mem::take(out);
    let mut enc = MessageEncoder::with_buffer(buf, Class::Indication, Method::DATA, TransactionId(tid));
    enc.attribute(&Attribute::XorPeerAddress(peer)).attribute(&Attribute::Data(payload));
    match enc.finish() {
        Ok(v) => *out = v,
        Err(_) => out.clear(),
    }
}

/// Work for the driver, drained with [`Server::poll_command`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Send a STUN message (response/error) to a client. Not the hot path.
    SendToClient {
        /// Destination 5-tuple (the connection for TCP/TLS).
        to: FiveTuple,
        /// The encoded STUN message.
        message: Vec<u8>,
    },
    /// An authenticated Allocate passed every check: bind a relay UDP socket of `family` (port
    /// from the driver's range; `even_port` asks for an even port per RFC 8656 §7.2 EVEN-PORT),
    /// then call [`Server::handle_relay_bound`] with `pending`.
    BindRelay {
        /// Token to pass back.
        pending: PendingAllocation,
        /// Address family of the relay socket.
        family: AddressFamily,
        /// Whether the port must be even.
        even_port: bool,
    },
    /// Close the relay socket bound at this address: its allocation is gone (expired,
    /// refreshed to 0, revoked, credential expired, client connection closed).
    FreeRelay {
        /// The `bound` address given to [`Server::handle_relay_bound`].
        relay: SocketAddr,
    },
}

/// A booking's allocation began or ended, for call reports (`meeting.ended` carries relayed bytes and the transport
/// each participant used). Queued only with [`ServerConfig::report_allocations`], drained with
/// [`Server::poll_event`]. Only allocations made with TURN REST credentials naming a booking are reported
/// (README, "Join window": username `<expiry-unix>:<booking-id>:<participant-id>`; the 2-part form reports an empty participant).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AllocationEvent {
    /// A relay socket was bound and the Allocate answered with success (RFC 8656 §7.2).
    Started {
        /// Booking id from the username.
        booking: Box<str>,
        /// Participant id from the username ("" in the 2-part form).
        participant: Box<str>,
        /// The client's transport to the server.
        transport: Transport,
        /// When, on the driver's monotonic clock (the `now` of the call that created it).
        at: Instant,
    },
    /// The allocation ended (lifetime passed, Refresh 0, credential expiry, revocation, client connection closed).
    Ended {
        /// Booking id from the username.
        booking: Box<str>,
        /// Participant id from the username ("" in the 2-part form).
        participant: Box<str>,
        /// The client's transport to the server.
        transport: Transport,
        /// Payload bytes relayed client → peer over the allocation's life (ChannelData and Send data).
        bytes_to_peer: u64,
        /// Payload bytes relayed peer → client over the allocation's life.
        bytes_to_client: u64,
        /// When it was created (as in [`AllocationEvent::Started`]).
        started: Instant,
        /// When it ended (the `now` of the call that ended it; for [`Server::set_static_credentials`], which takes no
        /// `now`, the last [`Server::handle_timeout`] instant, but static credentials are never reported).
        ended: Instant,
    },
}

/// Relayed bytes of one live allocation of a booking ([`Server::booking_usage`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocationUsage {
    /// Participant id from the username ("" in the 2-part form).
    pub participant: Box<str>,
    /// The client's transport to the server.
    pub transport: Transport,
    /// Payload bytes relayed client → peer so far.
    pub bytes_to_peer: u64,
    /// Payload bytes relayed peer → client so far.
    pub bytes_to_client: u64,
    /// When it was created (driver's monotonic clock).
    pub started: Instant,
}

/// Token for an Allocate waiting for its relay socket (see [`Command::BindRelay`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PendingAllocation(u64);

/// IP address family of a relay socket (RFC 8656 §7.2, RFC 6156).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl AddressFamily {
    /// The family of an address.
    pub fn of(addr: SocketAddr) -> Self {
        if addr.is_ipv4() { AddressFamily::V4 } else { AddressFamily::V6 }
    }

    fn code(self) -> u8 {
        match self {
            AddressFamily::V4 => family::IPV4,
            AddressFamily::V6 => family::IPV6,
        }
    }
}

/// Plain counters and gauges for the daemon's metrics exporter. All values are counts since
/// [`Server::new`] except the `allocations_active_*` gauges. No usernames, no per-client labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Binding requests answered (RFC 8489).
    pub binding_requests: u64,
    /// Allocations created (relay socket bound and success sent).
    pub allocations_created: u64,
    /// Gauge: active allocations whose client uses UDP.
    pub allocations_active_udp: u64,
    /// Gauge: active allocations whose client uses TCP.
    pub allocations_active_tcp: u64,
    /// Gauge: active allocations whose client uses TLS.
    pub allocations_active_tls: u64,
    /// Allocate results: success.
    pub allocate_ok: u64,
    /// Allocate results: 401 for a bad username format, wrong realm or wrong MESSAGE-INTEGRITY.
    pub allocate_auth_failed: u64,
    /// Allocate results: 401 because the credential's expiry has passed.
    pub allocate_expired: u64,
    /// Allocate results: 401 because the booking is revoked.
    pub allocate_revoked: u64,
    /// Allocate results: 486 Allocation Quota Reached.
    pub allocate_quota: u64,
    /// Allocate results: 508 Insufficient Capacity (total cap, relay bind failure, EVEN-PORT R).
    pub allocate_capacity: u64,
    /// Allocate results: 400 / 420 (malformed, missing REQUESTED-TRANSPORT, unknown attribute).
    pub allocate_bad_request: u64,
    /// Allocate results: 437 Allocation Mismatch (5-tuple already allocated).
    pub allocate_mismatch: u64,
    /// Allocate results: 440 / 442 (address family or transport not supported).
    pub allocate_unsupported: u64,
    /// Allocations ended because their lifetime passed.
    pub allocations_expired: u64,
    /// Allocations ended by Refresh with LIFETIME 0.
    pub allocations_deleted: u64,
    /// Allocations ended because the credential expiry (booking hard end) passed.
    pub allocations_credential_expired: u64,
    /// Allocations ended by [`Server::revoke_booking`].
    pub allocations_revoked: u64,
    /// Allocations ended because the client's TCP/TLS connection closed.
    pub allocations_client_closed: u64,
    /// Payload bytes relayed client → peer.
    pub relayed_bytes_to_peer: u64,
    /// Payload bytes relayed peer → client.
    pub relayed_bytes_to_client: u64,
    /// Datagrams relayed client → peer.
    pub relayed_packets_to_peer: u64,
    /// Datagrams relayed peer → client.
    pub relayed_packets_to_client: u64,
    /// Inputs dropped: not STUN/ChannelData, bad header, bad FINGERPRINT, unexpected class.
    pub drops_malformed: u64,
    /// Data dropped: no allocation for the 5-tuple / relay address.
    pub drops_no_allocation: u64,
    /// Data dropped: no (live) permission for the peer.
    pub drops_no_permission: u64,
    /// Unauthenticated UDP requests dropped silently by the reply rate limit
    /// ([`ServerConfig::max_unauthenticated_replies_per_source_per_sec`]); the one counter of
    /// that event.
    pub drops_rate_limited: u64,
    /// ChannelData dropped: channel not bound (or binding expired).
    pub drops_unknown_channel: u64,
    /// 401 challenges sent to requests without credentials (the normal first round trip).
    pub auth_challenges: u64,
    /// Authenticated requests refused (bad username, realm, MESSAGE-INTEGRITY, expired or revoked
    /// credential, wrong credentials for the allocation).
    pub auth_failures: u64,
    /// 438 Stale Nonce responses.
    pub stale_nonces: u64,
    /// 486 responses (per-credential and per-source-IP quotas).
    pub quota_refusals: u64,
    /// 508 responses: permission/channel caps, total allocation cap, relay port exhaustion,
    /// EVEN-PORT / RESERVATION-TOKEN, too many XOR-PEER-ADDRESS.
    pub capacity_refusals: u64,
    /// CreatePermission/ChannelBind refused with 403 by the peer policy (per request). A refusal
    /// answered to the client, not a drop.
    pub peer_denied: u64,
    /// Data dropped (either direction) because a bandwidth cap was exceeded
    /// ([`ServerConfig::max_bytes_per_second_per_allocation`] or
    /// [`ServerConfig::max_bytes_per_second_total`]).
    pub drops_bandwidth: u64,
}

/// A permission towards one peer IP (RFC 8656 §9). Port is ignored.
#[derive(Clone, Copy, Debug)]
struct Permission {
    expires_at: Instant,
}

impl Allocation {
    /// Whether a live permission exists for `ip` (RFC 8656 §9).
    fn permits(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.get(&ip).is_some_and(|p| now < p.expires_at)
    }
}

/// A channel binding (RFC 8656 §12).
#[derive(Clone, Copy, Debug)]
struct ChannelBinding {
    peer: SocketAddr,
    /// Relaying stops here; the binding is removed `CHANNEL_REBIND_GUARD` later.
    expires_at: Instant,
}

/// An allocation (RFC 8656 §2, §5).
#[derive(Debug)]
struct Allocation {
    five_tuple: FiveTuple,
    relay: SocketAddr,
    family: AddressFamily,
    username: Box<str>,
    /// `None` for a static credential.
    booking: Option<Box<str>>,
    credential_expiry_unix: u64,
    expires_at: Instant,
    /// Bandwidth cap client → peer.
    bw_to_peer: TokenBucket,
    /// Bandwidth cap peer → client.
    bw_to_client: TokenBucket,
    permissions: HashMap<IpAddr, Permission>,
    channels: HashMap<ChannelNumber, ChannelBinding>,
    channel_by_peer: HashMap<SocketAddr, ChannelNumber>,
    allocate_tid: TransactionId,
    allocate_response: Vec<u8>,
    /// Earliest live entry of this allocation in the timer heap.
    scheduled: Option<Instant>,
    /// When it was created.
    started: Instant,
    /// Payload bytes relayed client → peer (a counter add on the allocation the data path already looked up).
    bytes_to_peer: u64,
    /// Payload bytes relayed peer → client.
    bytes_to_client: u64,
}

/// The current hard end of a rescheduled booking: every credential naming the booking expires then, whatever expiry
/// its username carries; the rule is kept until `keep_until_unix` (the latest expiry any of its credentials may carry),
/// so a credential of a longer earlier window never works again after the rule is forgotten.
#[derive(Clone, Copy, Debug)]
struct BookingEnd {
    hard_end_unix: u64,
    keep_until_unix: u64,
}

/// The oldest link epoch of a participant whose TURN credentials still work, kept until `keep_until_unix` (after it
/// every credential of the booking has expired anyway).
#[derive(Clone, Copy, Debug)]
struct EpochFloor {
    min_epoch: u64,
    keep_until_unix: u64,
}

#[derive(Debug)]
struct Pending {
    five_tuple: FiveTuple,
    tid: TransactionId,
    username: Box<str>,
    booking: Option<Box<str>>,
    credential_expiry_unix: u64,
    lifetime: Duration,
    family: AddressFamily,
    key: [u8; 16],
    fingerprint: bool,
    refuse_additional_v6: bool,
    /// Client closed or booking revoked while binding: free the socket when it arrives.
    cancelled: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Pending(u64),
    Active(u64),
}

#[derive(Clone, Copy, Debug)]
enum EndReason {
    Expired,
    Deleted,
    CredentialExpired,
    Revoked,
    ClientClosed,
}

/// Monotonic ↔ Unix time mapping, re-based on every `handle_timeout`.
#[derive(Clone, Copy, Debug)]
struct Clock {
    base: Instant,
    base_unix: Duration,
}

impl Clock {
    fn unix_secs(&self, now: Instant) -> u64 {
        let unix = match now.checked_duration_since(self.base) {
            Some(d) => self.base_unix.saturating_add(d),
            None => self.base_unix.saturating_sub(self.base.saturating_duration_since(now)),
        };
        unix.as_secs()
    }

    /// The instant at which Unix time reaches `unix_secs` (clamped to `now`..now+10 years).
    fn instant_of(&self, now: Instant, unix_secs: u64) -> Instant {
        let now_unix = self.unix_secs(now);
        let ahead = Duration::from_secs(unix_secs.saturating_sub(now_unix));
        add(now, ahead)
    }
}

fn add(t: Instant, d: Duration) -> Instant {
    t.checked_add(d.min(MAX_HORIZON)).unwrap_or(t)
}

/// The live allocation of a 5-tuple (free function so that other fields of the server stay
/// borrowable next to it).
fn active_mut<'m>(
    by_five_tuple: &HashMap<FiveTuple, Slot>,
    allocations: &'m mut HashMap<u64, Allocation>,
    from: FiveTuple,
    now: Instant,
) -> Option<&'m mut Allocation> {
    match by_five_tuple.get(&from) {
        Some(Slot::Active(id)) => allocations.get_mut(id).filter(|a| now < a.expires_at),
        _ => None,
    }
}

/// A token bucket on the caller's clock (`now` arguments), counting byte-nanoseconds.
/// `rate == None`: unlimited. No allocation; refills lazily on use.
#[derive(Clone, Copy, Debug)]
struct TokenBucket {
    rate: Option<u64>,
    /// Capacity, byte-nanoseconds.
    cap: u128,
    /// Available, byte-nanoseconds.
    tokens: u128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket for `rate` bytes/s with [`bandwidth_burst`] capacity.
    fn new(rate: Option<u64>, now: Instant) -> Self {
        let cap = rate.map_or(0, |r| u128::from(bandwidth_burst(r)) * NANOS);
        TokenBucket { rate, cap, tokens: cap, last: now }
    }

    fn refill(&mut self, now: Instant) {
        let Some(rate) = self.rate else {
            return;
        };
        // A `now` earlier than `last` (clock misuse) refills nothing and keeps `last`.
        if let Some(elapsed) = now.checked_duration_since(self.last) {
            let add = elapsed.as_nanos().saturating_mul(u128::from(rate));
            self.tokens = self.tokens.saturating_add(add).min(self.cap);
            self.last = now;
        }
    }

    fn has(&self, bytes: usize) -> bool {
        self.rate.is_none() || self.tokens >= (bytes as u128).saturating_mul(NANOS)
    }

    fn consume(&mut self, bytes: usize) {
        if self.rate.is_some() {
            self.tokens = self.tokens.saturating_sub((bytes as u128).saturating_mul(NANOS));
        }
    }
}

/// Takes `bytes` from both buckets, or from neither when one of them lacks tokens.
fn take_both(a: &mut TokenBucket, b: &mut TokenBucket, now: Instant, bytes: usize) -> bool {
    a.refill(now);
    b.refill(now);
    if a.has(bytes) && b.has(bytes) {
        a.consume(bytes);
        b.consume(bytes);
        true
    } else {
        false
    }
}

/// A static credential with its precomputed long-term key.
struct StaticEntry {
    username: Box<str>,
    key: [u8; 16],
    max_allocations: u32,
}

fn static_entries(realm: &str, creds: &[StaticCredential]) -> Vec<StaticEntry> {
    creds
        .iter()
        .map(|c| StaticEntry {
            username: c.username.as_str().into(),
            key: long_term_key(&c.username, realm, &c.password),
            max_allocations: c.max_allocations,
        })
        .collect()
}

/// The attributes of a request the server acts on, gathered in one pass (no allocation).
#[derive(Debug, Default)]
struct Request<'a> {
    username: Option<&'a str>,
    realm: Option<&'a str>,
    nonce: Option<&'a str>,
    integrity: bool,
    lifetime: Option<u32>,
    requested_transport: Option<u8>,
    requested_family: Option<u8>,
    additional_family: Option<u8>,
    even_port: Option<bool>,
    reservation_token: bool,
    channel: Option<u16>,
    data: Option<&'a [u8]>,
    peers: [Option<SocketAddr>; MAX_PEERS_PER_REQUEST],
    peer_count: usize,
    unknown: [u16; MAX_UNKNOWN],
    unknown_count: usize,
    malformed: bool,
}

impl<'a> Request<'a> {
    fn parse(msg: &Message<'a>) -> Self {
        let tid = msg.transaction_id();
        let mut r = Request::default();
        for raw in msg.raw_attributes() {
            // RFC 8489 §14.5: attributes after MESSAGE-INTEGRITY (other than
            // MESSAGE-INTEGRITY-SHA256 and FINGERPRINT) are ignored.
            if r.integrity {
                continue;
            }
            let a = match raw.parse(&tid) {
                Ok(a) => a,
                Err(_) => {
                    r.malformed = true;
                    continue;
                }
            };
            match a {
                Attribute::Username(u) => {
                    r.username.get_or_insert(u);
                }
                Attribute::Realm(v) => {
                    r.realm.get_or_insert(v);
                }
                Attribute::Nonce(v) => {
                    r.nonce.get_or_insert(v);
                }
                Attribute::MessageIntegrity(_) => r.integrity = true,
                Attribute::Lifetime(v) => {
                    r.lifetime.get_or_insert(v);
                }
                Attribute::RequestedTransport(v) => {
                    r.requested_transport.get_or_insert(v);
                }
                Attribute::RequestedAddressFamily(v) => {
                    r.requested_family.get_or_insert(v);
                }
                Attribute::AdditionalAddressFamily(v) => {
                    r.additional_family.get_or_insert(v);
                }
                Attribute::EvenPort(v) => {
                    r.even_port.get_or_insert(v);
                }
                Attribute::ReservationToken(_) => r.reservation_token = true,
                Attribute::ChannelNumber(v) => {
                    r.channel.get_or_insert(v);
                }
                Attribute::Data(v) => {
                    r.data.get_or_insert(v);
                }
                Attribute::XorPeerAddress(p) => {
                    if let Some(slot) = r.peers.get_mut(r.peer_count) {
                        *slot = Some(p);
                    }
                    r.peer_count = r.peer_count.saturating_add(1);
                }
                Attribute::Unknown { typ, .. } if attr::is_comprehension_required(typ) => {
                    if let Some(slot) = r.unknown.get_mut(r.unknown_count) {
                        *slot = typ;
                        r.unknown_count += 1;
                    }
                }
                _ => {}
            }
        }
        r
    }

    fn peers(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.peers.iter().flatten().copied()
    }
}

/// Outcome of successful long-term authentication.
struct Authed<'a> {
    key: [u8; 16],
    username: &'a str,
    /// The booking of a REST credential; `None` for a static credential.
    booking: Option<&'a str>,
    /// Unix seconds; `u64::MAX` for a static credential (never expires).
    expiry_unix: u64,
    /// Allocations allowed for this username.
    quota: u32,
}

/// Everything needed to answer one request.
#[derive(Clone, Copy)]
struct Reply {
    to: FiveTuple,
    method: Method,
    tid: TransactionId,
    fingerprint: bool,
}

/// The sans-IO STUN/TURN server. See the crate documentation for the run-loop contract.
/// `Debug` shows the configuration (secrets hidden) and sizes, never credentials or keys.
pub struct Server {
    config: ServerConfig,
    nonces: NonceCodec,
    clock: Clock,
    next_id: u64,
    allocations: HashMap<u64, Allocation>,
    pending: HashMap<u64, Pending>,
    by_five_tuple: HashMap<FiveTuple, Slot>,
    by_relay: HashMap<SocketAddr, u64>,
    per_username: HashMap<Box<str>, u32>,
    per_source_ip: HashMap<IpAddr, u32>,
    revoked: HashMap<Box<str>, u64>,
    /// Bookings whose hard end moved after credentials were issued ([`Server::set_booking_end`]).
    booking_ends: HashMap<Box<str>, BookingEnd>,
    /// Bookings moved to a window that has not opened: credentials refused before the instant (Unix seconds;
    /// [`Server::set_booking_not_before`]).
    not_before: HashMap<Box<str>, u64>,
    /// `(booking, participant)` whose credentials of a link epoch below `min_epoch` are refused
    /// ([`Server::revoke_participant`]).
    participant_floors: HashMap<(Box<str>, Box<str>), EpochFloor>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    commands: VecDeque<Command>,
    /// Allocation events for the driver ([`ServerConfig::report_allocations`]).
    events: VecDeque<AllocationEvent>,
    limiter: SourceRateLimiter,
    /// Static credentials with precomputed keys (from `config.static_credentials`).
    statics: Vec<StaticEntry>,
    /// TCP/TLS connections on which a request has passed authentication (see
    /// [`Server::is_authenticated`]); removed by [`Server::handle_client_closed`].
    authenticated_streams: HashSet<FiveTuple>,
    /// The server-wide bandwidth cap (both directions).
    total_bw: TokenBucket,
    stats: Stats,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.config)
            .field("allocations", &self.allocations.len())
            .field("pending", &self.pending.len())
            .field("revoked", &self.revoked.len())
            .field("booking_ends", &self.booking_ends.len())
            .field("participant_floors", &self.participant_floors.len())
            .field("static_credentials", &self.statics.len())
            .field("authenticated_streams", &self.authenticated_streams.len())
            .field("timers", &self.timers.len())
            .field("commands", &self.commands.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server with no allocations. `now` is the monotonic clock; `unix_now` the wall clock as
    /// a Duration since the Unix epoch. The server keeps the mapping and re-bases it in every
    /// [`Server::handle_timeout`] call.
    pub fn new(config: ServerConfig, now: Instant, unix_now: Duration) -> Self {
        let nonces = NonceCodec::new(config.nonce_secret, config.nonce_lifetime);
        let statics = static_entries(&config.realm, &config.static_credentials);
        let total_bw = TokenBucket::new(config.max_bytes_per_second_total, now);
        Server {
            statics,
            total_bw,
            config,
            nonces,
            clock: Clock { base: now, base_unix: unix_now },
            next_id: 1,
            allocations: HashMap::new(),
            pending: HashMap::new(),
            by_five_tuple: HashMap::new(),
            by_relay: HashMap::new(),
            per_username: HashMap::new(),
            per_source_ip: HashMap::new(),
            revoked: HashMap::new(),
            booking_ends: HashMap::new(),
            not_before: HashMap::new(),
            participant_floors: HashMap::new(),
            timers: BinaryHeap::new(),
            commands: VecDeque::new(),
            events: VecDeque::new(),
            limiter: SourceRateLimiter::new(now),
            authenticated_streams: HashSet::new(),
            stats: Stats::default(),
        }
    }

    /// One datagram (UDP) or one complete frame (TCP/TLS, see
    /// [`crate::framing::stream_frame_len`]) from a client.
    ///
    /// Returns `Some` only for ChannelData / Send indications that are to be relayed now (the
    /// hot path: no allocation, O(1) lookups); every other outcome (responses, errors) is
    /// queued as a [`Command`]. Malformed input is dropped and counted (never panics). Relayed
    /// payload bytes are charged to the allocation's client → peer bucket and the server's
    /// total bucket; over a cap the datagram is dropped ([`Stats::drops_bandwidth`]).
    pub fn handle_client_input<'a>(
        &mut self,
        now: Instant,
        from: FiveTuple,
        packet: &'a [u8],
    ) -> Option<PeerTransmit<'a>> {
        match packet.first().map(|b| b >> 6) {
            Some(0b01) => self.handle_channel_data(now, from, packet),
            Some(0b00) => self.handle_stun(now, from, packet),
            _ => {
                self.stats.drops_malformed += 1;
                None
            }
        }
    }

    fn handle_channel_data<'a>(&mut self, now: Instant, from: FiveTuple, packet: &'a [u8]) -> Option<PeerTransmit<'a>> {
        let Ok((channel, payload)) = parse_channel_data(packet) else {
            self.stats.drops_malformed += 1;
            return None;
        };
        let Some(alloc) = active_mut(&self.by_five_tuple, &mut self.allocations, from, now) else {
            self.stats.drops_no_allocation += 1;
            return None;
        };
        let Some(binding) = alloc.channels.get(&channel).filter(|b| now < b.expires_at) else {
            self.stats.drops_unknown_channel += 1;
            return None;
        };
        let peer = binding.peer;
        if !alloc.permits(peer.ip(), now) {
            self.stats.drops_no_permission += 1;
            return None;
        }
        if !take_both(&mut alloc.bw_to_peer, &mut self.total_bw, now, payload.len()) {
            self.stats.drops_bandwidth += 1;
            return None;
        }
        alloc.bytes_to_peer += payload.len() as u64;
        let relay = alloc.relay;
        self.stats.relayed_packets_to_peer += 1;
        self.stats.relayed_bytes_to_peer += payload.len() as u64;
        Some(PeerTransmit { relay, peer, payload })
    }

    fn handle_stun<'a>(&mut self, now: Instant, from: FiveTuple, packet: &'a [u8]) -> Option<PeerTransmit<'a>> {
        let Ok(msg) = Message::decode(packet) else {
            self.stats.drops_malformed += 1;
            return None;
        };
        if msg.has_fingerprint() && msg.verify_fingerprint().is_err() {
            // RFC 8489 §7.3: a bad FINGERPRINT means "not STUN": discard.
            self.stats.drops_malformed += 1;
            return None;
        }
        match (msg.class(), msg.method()) {
            (Class::Indication, Method::SEND) => self.handle_send(now, from, &msg),
            (Class::Indication, Method::BINDING) => None, // keepalive (RFC 8489 §6.3.2)
            (Class::Request, Method::BINDING) => {
                self.handle_binding(now, from, &msg);
                None
            }
            (Class::Request, _) => {
                self.handle_turn_request(now, from, &msg);
                None
            }
            _ => {
                self.stats.drops_malformed += 1;
                None
            }
        }
    }

    fn handle_send<'a>(&mut self, now: Instant, from: FiveTuple, msg: &Message<'a>) -> Option<PeerTransmit<'a>> {
        let req = Request::parse(msg);
        let (Some(peer), Some(payload), 1, false, 0) =
            (req.peers[0], req.data, req.peer_count, req.malformed, req.unknown_count)
        else {
            // RFC 8656 §11.2: missing/extra attributes → discard silently.
            self.stats.drops_malformed += 1;
            return None;
        };
        let Some(alloc) = active_mut(&self.by_five_tuple, &mut self.allocations, from, now) else {
            self.stats.drops_no_allocation += 1;
            return None;
        };
        if AddressFamily::of(peer) != alloc.family || !alloc.permits(peer.ip(), now) {
            self.stats.drops_no_permission += 1;
            return None;
        }
        if !take_both(&mut alloc.bw_to_peer, &mut self.total_bw, now, payload.len()) {
            self.stats.drops_bandwidth += 1;
            return None;
        }
        alloc.bytes_to_peer += payload.len() as u64;
        let relay = alloc.relay;
        self.stats.relayed_packets_to_peer += 1;
        self.stats.relayed_bytes_to_peer += payload.len() as u64;
        Some(PeerTransmit { relay, peer, payload })
    }

    fn handle_binding(&mut self, now: Instant, from: FiveTuple, msg: &Message<'_>) {
        let req = Request::parse(msg);
        let reply =
            Reply { to: from, method: Method::BINDING, tid: msg.transaction_id(), fingerprint: msg.has_fingerprint() };
        if req.malformed {
            self.error_unauthenticated(now, reply, error_code::BAD_REQUEST, &req);
            return;
        }
        if req.unknown_count > 0 {
            self.error_unauthenticated(now, reply, error_code::UNKNOWN_ATTRIBUTE, &req);
            return;
        }
        self.stats.binding_requests += 1;
        let attrs = [Attribute::XorMappedAddress(from.client)];
        if let Some(m) = self.encode(reply, Class::SuccessResponse, &attrs, &[], None) {
            self.commands.push_back(Command::SendToClient { to: from, message: m });
        }
    }

    /// Encodes a response: attributes, optional UNKNOWN-ATTRIBUTES, SOFTWARE, MI, FINGERPRINT.
    fn encode(
        &self,
        reply: Reply,
        class: Class,
        attrs: &[Attribute<'_>],
        unknown: &[u16],
        key: Option<&[u8; 16]>,
    ) -> Option<Vec<u8>> {
        let mut e = MessageEncoder::new(class, reply.method, reply.tid);
        for a in attrs {
            e.attribute(a);
        }
        if !unknown.is_empty() {
            e.unknown_attributes(unknown);
        }
        if let Some(s) = &self.config.software {
            e.attribute(&Attribute::Software(s));
        }
        if let Some(k) = key {
            e.message_integrity(k);
        }
        if reply.fingerprint {
            e.fingerprint();
        }
        e.finish().ok()
    }

    fn count_allocate_error(&mut self, method: Method, code: u16) {
        if method != Method::ALLOCATE {
            return;
        }
        let s = &mut self.stats;
        match code {
            error_code::ALLOCATION_QUOTA_REACHED => s.allocate_quota += 1,
            error_code::INSUFFICIENT_CAPACITY => s.allocate_capacity += 1,
            error_code::BAD_REQUEST | error_code::UNKNOWN_ATTRIBUTE => s.allocate_bad_request += 1,
            error_code::ALLOCATION_MISMATCH => s.allocate_mismatch += 1,
            error_code::ADDRESS_FAMILY_NOT_SUPPORTED | error_code::UNSUPPORTED_TRANSPORT_PROTOCOL => {
                s.allocate_unsupported += 1
            }
            _ => {}
        }
    }

    /// An error response before authentication: no MESSAGE-INTEGRITY, rate-limited per source
    /// IP over UDP only. 401 carries REALM + NONCE; 420 carries UNKNOWN-ATTRIBUTES.
    fn error_unauthenticated(&mut self, now: Instant, reply: Reply, code: u16, req: &Request<'_>) {
        self.count_allocate_error(reply.method, code);
        // Only UDP sources can be spoofed; on TCP/TLS a suppressed reply is never retransmitted
        // (see `max_unauthenticated_replies_per_source_per_sec`).
        let (rate, burst) = (
            self.config.max_unauthenticated_replies_per_source_per_sec,
            self.config.unauthenticated_reply_burst_per_source,
        );
        if reply.to.transport == Transport::Udp && !self.limiter.allow(now, reply.to.client.ip(), rate, burst) {
            self.stats.drops_rate_limited += 1;
            return;
        }
        let nonce;
        let mut attrs = [
            Attribute::ErrorCode { code, reason: error_code::reason(code) },
            Attribute::DontFragment,
            Attribute::DontFragment,
        ];
        let mut n = 1;
        if code == error_code::UNAUTHENTICATED {
            nonce = self.nonces.issue(self.clock.unix_secs(now));
            attrs[1] = Attribute::Realm(&self.config.realm);
            attrs[2] = Attribute::Nonce(&nonce);
            n = 3;
        }
        let unknown = if code == error_code::UNKNOWN_ATTRIBUTE { &req.unknown[..req.unknown_count] } else { &[] };
        if let Some(m) = self.encode(reply, Class::ErrorResponse, &attrs[..n], unknown, None) {
            self.commands.push_back(Command::SendToClient { to: reply.to, message: m });
        }
    }

    /// An error response after authentication: carries MESSAGE-INTEGRITY (RFC 8489 §9.2.4).
    fn error_authenticated(&mut self, reply: Reply, code: u16, key: &[u8; 16], extra: &[Attribute<'_>]) {
        self.count_allocate_error(reply.method, code);
        let mut attrs: [Attribute<'_>; 4] = [Attribute::DontFragment; 4];
        attrs[0] = Attribute::ErrorCode { code, reason: error_code::reason(code) };
        let n = 1 + extra.len().min(3);
        attrs[1..n].copy_from_slice(&extra[..n - 1]);
        if let Some(m) = self.encode(reply, Class::ErrorResponse, &attrs[..n], &[], Some(key)) {
            self.commands.push_back(Command::SendToClient { to: reply.to, message: m });
        }
    }

    fn success(&mut self, reply: Reply, attrs: &[Attribute<'_>], key: &[u8; 16]) -> Option<Vec<u8>> {
        let m = self.encode(reply, Class::SuccessResponse, attrs, &[], Some(key))?;
        self.commands.push_back(Command::SendToClient { to: reply.to, message: m.clone() });
        Some(m)
    }

    /// Long-term authentication (RFC 8489 §9.2.4) with TURN REST credentials and the
    /// revocation set. `None` when a reply (or a silent drop) has been taken care of.
    fn authenticate<'a>(
        &mut self,
        now: Instant,
        reply: Reply,
        msg: &Message<'a>,
        req: &Request<'a>,
    ) -> Option<Authed<'a>> {
        if !req.integrity {
            self.stats.auth_challenges += 1;
            self.error_unauthenticated(now, reply, error_code::UNAUTHENTICATED, req);
            return None;
        }
        let (Some(username), Some(realm), Some(nonce)) = (req.username, req.realm, req.nonce) else {
            self.error_unauthenticated(now, reply, error_code::BAD_REQUEST, req);
            return None;
        };
        let unix_now = self.clock.unix_secs(now);
        let is_allocate = reply.method == Method::ALLOCATE;
        let fail = |s: &mut Self, counter: fn(&mut Stats) -> &mut u64| {
            s.stats.auth_failures += 1;
            if is_allocate {
                *counter(&mut s.stats) += 1;
            }
        };
        if realm != self.config.realm {
            fail(self, |s| &mut s.allocate_auth_failed);
            self.error_unauthenticated(now, reply, error_code::UNAUTHENTICATED, req);
            return None;
        }
        if let Some((key, quota)) = self.lookup_static(username) {
            // Legacy static credential (DESIGN §4): never expires, names no booking.
            if msg.verify_integrity(&key).is_err() {
                fail(self, |s| &mut s.allocate_auth_failed);
                self.error_unauthenticated(now, reply, error_code::UNAUTHENTICATED, req);
                return None;
            }
            if !self.check_nonce(reply, nonce, unix_now, &key) {
                return None;
            }
            return Some(Authed { key, username, booking: None, expiry_unix: u64::MAX, quota });
        }
        let Some(user) = RestUsername::parse(username) else {
            fail(self, |s| &mut s.allocate_auth_failed);
            self.error_unauthenticated(now, reply, error_code::UNAUTHENTICATED, req);
            return None;
        };
        // A rescheduled booking's hard end replaces the one the username was issued under.
        let expiry_unix = self.booking_ends.get(user.booking).map_or(user.expiry_unix, |e| e.hard_end_unix);
        if expiry_unix <= unix_now {
            fail(self, |s| &mut s.allocate_expired);
            self.error_unauthenticated(now, reply, error_code::UNAUTHENTICATED, req);
            return None;
        }
        let (participant, epoch) = user.participant_epoch();
        let below_floor = || {
            if self.participant_floors.is_empty() {
                return false;
            }
            let key = (Box::<str>::from(user.booking), Box::<str>::from(participant));
            self.participant_floors.get(&key).is_some_and(|f| epoch < f.min_epoch)
        };
        let not_open = self.not_before.get(user.booking).is_some_and(|t| unix_now < *t);
        if self.revoked.get(user.booking).is_some_and(|until| unix_now < *until) || not_open || below_floor() {
            fail(self, |s| &mut s.allocate_revoked);
            self.error_unauthenticated(now, reply, error_code::UNAUTHENTICATED, req);
            return None;
        }
        let key = self.config.auth_secrets.iter().find_map(|secret| {
            let password = rest_password(secret, username);
            let key = long_term_key(username, realm, &password);
            msg.verify_integrity(&key).is_ok().then_some(key)
        });
        let Some(key) = key else {
            fail(self, |s| &mut s.allocate_auth_failed);
            self.error_unauthenticated(now, reply, error_code::UNAUTHENTICATED, req);
            return None;
        };
        if !self.check_nonce(reply, nonce, unix_now, &key) {
            return None;
        }
        Some(Authed {
            key,
            username,
            booking: Some(user.booking),
            expiry_unix,
            quota: self.config.max_allocations_per_credential,
        })
    }

    /// Verifies the NONCE of an otherwise authenticated request; on failure answers 438 with
    /// a fresh NONCE and REALM (RFC 8489 §9.2.4) and returns false.
    fn check_nonce(&mut self, reply: Reply, nonce: &str, unix_now: u64, key: &[u8; 16]) -> bool {
        if self.nonces.verify(nonce, unix_now).is_ok() {
            return true;
        }
        self.stats.stale_nonces += 1;
        let fresh = self.nonces.issue(unix_now);
        let realm = self.config.realm.clone();
        self.error_authenticated(
            reply,
            error_code::STALE_NONCE,
            key,
            &[Attribute::Realm(&realm), Attribute::Nonce(&fresh)],
        );
        false
    }

    /// The key and quota of the static credential named `username`, if any. Compares against
    /// every entry with constant-time equality and without early exit, so the time taken does
    /// not reveal which (or whether a) username matched beyond its length.
    fn lookup_static(&self, username: &str) -> Option<([u8; 16], u32)> {
        let mut found = Choice::from(0);
        let mut key = [0u8; 16];
        let mut quota = 0u32;
        for e in &self.statics {
            let eq = e.username.as_bytes().ct_eq(username.as_bytes());
            for (k, ek) in key.iter_mut().zip(e.key.iter()) {
                k.conditional_assign(ek, eq);
            }
            quota.conditional_assign(&e.max_allocations, eq);
            found |= eq;
        }
        bool::from(found).then_some((key, quota))
    }

    fn handle_turn_request(&mut self, now: Instant, from: FiveTuple, msg: &Message<'_>) {
        let req = Request::parse(msg);
        let reply =
            Reply { to: from, method: msg.method(), tid: msg.transaction_id(), fingerprint: msg.has_fingerprint() };
        let known = matches!(
            msg.method(),
            Method::ALLOCATE | Method::REFRESH | Method::CREATE_PERMISSION | Method::CHANNEL_BIND
        );
        if !known || req.malformed {
            self.error_unauthenticated(now, reply, error_code::BAD_REQUEST, &req);
            return;
        }
        if req.unknown_count > 0 {
            self.error_unauthenticated(now, reply, error_code::UNKNOWN_ATTRIBUTE, &req);
            return;
        }
        let Some(authed) = self.authenticate(now, reply, msg, &req) else {
            return;
        };
        if from.transport != Transport::Udp {
            self.authenticated_streams.insert(from);
        }
        match msg.method() {
            Method::ALLOCATE => self.handle_allocate(reply, &req, &authed),
            Method::REFRESH => self.handle_refresh(now, reply, &req, &authed),
            Method::CREATE_PERMISSION => self.handle_create_permission(now, reply, &req, &authed),
            _ => self.handle_channel_bind(now, reply, &req, &authed),
        }
    }

    /// The allocation of `reply.to` for Refresh/CreatePermission/ChannelBind, or an error sent.
    fn allocation_for(&mut self, now: Instant, reply: Reply, authed: &Authed<'_>) -> Option<u64> {
        let id = match self.by_five_tuple.get(&reply.to) {
            Some(Slot::Active(id)) => Some(*id),
            _ => None,
        }
        .filter(|id| self.allocations.get(id).is_some_and(|a| now < a.expires_at));
        let Some(id) = id else {
            self.error_authenticated(reply, error_code::ALLOCATION_MISMATCH, &authed.key, &[]);
            return None;
        };
        if self.allocations.get(&id).is_some_and(|a| *a.username != *authed.username) {
            // RFC 8656 §5: later requests must use the allocation's credentials.
            self.stats.auth_failures += 1;
            self.error_authenticated(reply, error_code::WRONG_CREDENTIALS, &authed.key, &[]);
            return None;
        }
        Some(id)
    }

    fn handle_allocate(&mut self, reply: Reply, req: &Request<'_>, authed: &Authed<'_>) {
        let key = &authed.key;
        match self.by_five_tuple.get(&reply.to).copied() {
            Some(Slot::Active(id)) => {
                if let Some(a) = self.allocations.get(&id)
                    && a.allocate_tid == reply.tid
                {
                    // Retransmission: replay the success (RFC 8656 §7.2).
                    let message = a.allocate_response.clone();
                    self.commands.push_back(Command::SendToClient { to: reply.to, message });
                    return;
                }
                self.error_authenticated(reply, error_code::ALLOCATION_MISMATCH, key, &[]);
                return;
            }
            Some(Slot::Pending(id)) => {
                if self.pending.get(&id).is_some_and(|p| p.tid == reply.tid) {
                    return; // retransmission while the relay socket is being bound
                }
                self.error_authenticated(reply, error_code::ALLOCATION_MISMATCH, key, &[]);
                return;
            }
            None => {}
        }
        let Some(transport) = req.requested_transport else {
            self.error_authenticated(reply, error_code::BAD_REQUEST, key, &[]);
            return;
        };
        if transport != crate::stun::PROTOCOL_UDP {
            self.error_authenticated(reply, error_code::UNSUPPORTED_TRANSPORT_PROTOCOL, key, &[]);
            return;
        }
        if req.reservation_token && (req.even_port.is_some() || req.requested_family.is_some()) {
            self.error_authenticated(reply, error_code::BAD_REQUEST, key, &[]);
            return;
        }
        if req.reservation_token || req.even_port == Some(true) {
            // We never reserve ports, so no token we could be shown is valid, and we cannot
            // promise to keep the next port (RFC 8656 §7.2: 508).
            self.stats.capacity_refusals += 1;
            self.error_authenticated(reply, error_code::INSUFFICIENT_CAPACITY, key, &[]);
            return;
        }
        if req.requested_family.is_some() && req.additional_family.is_some() {
            self.error_authenticated(reply, error_code::BAD_REQUEST, key, &[]);
            return;
        }
        let mut refuse_additional_v6 = false;
        let family = match (req.requested_family, req.additional_family) {
            (Some(family::IPV4), _) | (None, None) => AddressFamily::V4,
            (Some(family::IPV6), _) => AddressFamily::V6,
            (None, Some(family::IPV6)) => {
                // Dual allocation (RFC 8656 §7.2): we allocate IPv4 only and say so.
                refuse_additional_v6 = true;
                AddressFamily::V4
            }
            (None, Some(_)) => {
                self.error_authenticated(reply, error_code::BAD_REQUEST, key, &[]);
                return;
            }
            (Some(_), _) => {
                self.error_authenticated(reply, error_code::ADDRESS_FAMILY_NOT_SUPPORTED, key, &[]);
                return;
            }
        };
        if !self.config.relay_families.contains(&family) {
            self.error_authenticated(reply, error_code::ADDRESS_FAMILY_NOT_SUPPORTED, key, &[]);
            return;
        }
        let per_user = self.per_username.get(authed.username).copied().unwrap_or(0);
        let per_ip = self.per_source_ip.get(&reply.to.client.ip()).copied().unwrap_or(0);
        if per_user >= authed.quota || per_ip >= self.config.max_allocations_per_source_ip {
            self.stats.quota_refusals += 1;
            self.error_authenticated(reply, error_code::ALLOCATION_QUOTA_REACHED, key, &[]);
            return;
        }
        let total = self.allocations.len() + self.pending.len();
        if total >= self.config.max_allocations_total as usize {
            self.stats.capacity_refusals += 1;
            self.error_authenticated(reply, error_code::INSUFFICIENT_CAPACITY, key, &[]);
            return;
        }
        let lifetime = match req.lifetime {
            None | Some(0) => self.config.default_lifetime,
            Some(s) => Duration::from_secs(u64::from(s)).min(self.config.max_lifetime),
        };
        let id = self.next_id;
        self.next_id += 1;
        let username: Box<str> = authed.username.into();
        *self.per_username.entry(username.clone()).or_insert(0) += 1;
        *self.per_source_ip.entry(reply.to.client.ip()).or_insert(0) += 1;
        self.pending.insert(
            id,
            Pending {
                five_tuple: reply.to,
                tid: reply.tid,
                username,
                booking: authed.booking.map(Box::from),
                credential_expiry_unix: authed.expiry_unix,
                lifetime,
                family,
                key: authed.key,
                fingerprint: reply.fingerprint,
                refuse_additional_v6,
                cancelled: false,
            },
        );
        self.by_five_tuple.insert(reply.to, Slot::Pending(id));
        self.commands.push_back(Command::BindRelay {
            pending: PendingAllocation(id),
            family,
            even_port: req.even_port.is_some(),
        });
    }

    /// Completes a [`Command::BindRelay`]. `Ok((bound, advertised))`: `bound` is the socket's
    /// local address (the key for [`Server::handle_peer_input`] and [`Command::FreeRelay`]),
    /// `advertised` the public address sent as XOR-RELAYED-ADDRESS (usually equal to `bound`).
    /// The Allocate is answered with XOR-RELAYED-ADDRESS, XOR-MAPPED-ADDRESS and LIFETIME.
    /// `Err(())` → 508 Insufficient Capacity.
    ///
    /// Unknown or cancelled (client closed, booking revoked) tokens: the socket, if any, is
    /// freed again with [`Command::FreeRelay`].
    pub fn handle_relay_bound(
        &mut self,
        now: Instant,
        pending: PendingAllocation,
        result: Result<(SocketAddr, SocketAddr), ()>,
    ) {
        let id = pending.0;
        let Some(p) = self.pending.remove(&id) else {
            if let Ok((bound, _)) = result {
                self.commands.push_back(Command::FreeRelay { relay: bound });
            }
            return;
        };
        if self.by_five_tuple.get(&p.five_tuple) == Some(&Slot::Pending(id)) {
            self.by_five_tuple.remove(&p.five_tuple);
        }
        let reply = Reply { to: p.five_tuple, method: Method::ALLOCATE, tid: p.tid, fingerprint: p.fingerprint };
        let bound = match result {
            Ok((bound, advertised))
                if !p.cancelled && !self.by_relay.contains_key(&bound) && AddressFamily::of(bound) == p.family =>
            {
                Some((bound, advertised))
            }
            Ok((bound, _)) => {
                // A duplicate address belongs to a live allocation: never free it here.
                if !self.by_relay.contains_key(&bound) {
                    self.commands.push_back(Command::FreeRelay { relay: bound });
                }
                None
            }
            Err(()) => None,
        };
        let Some((bound, advertised)) = bound else {
            self.release_quota(&p.username, p.five_tuple.client.ip());
            if !p.cancelled {
                self.stats.capacity_refusals += 1;
                self.error_authenticated(reply, error_code::INSUFFICIENT_CAPACITY, &p.key, &[]);
            }
            return;
        };
        let lifetime_secs = u32::try_from(p.lifetime.as_secs()).unwrap_or(u32::MAX);
        let address_error = Attribute::AddressErrorCode {
            family: AddressFamily::V6.code(),
            code: error_code::ADDRESS_FAMILY_NOT_SUPPORTED,
            reason: error_code::reason(error_code::ADDRESS_FAMILY_NOT_SUPPORTED),
        };
        let attrs = [
            Attribute::XorRelayedAddress(advertised),
            Attribute::XorMappedAddress(p.five_tuple.client),
            Attribute::Lifetime(lifetime_secs),
            address_error,
        ];
        let n = if p.refuse_additional_v6 { 4 } else { 3 };
        let response = self.success(reply, &attrs[..n], &p.key).unwrap_or_default();
        let alloc = Allocation {
            five_tuple: p.five_tuple,
            relay: bound,
            family: p.family,
            username: p.username,
            booking: p.booking,
            credential_expiry_unix: p.credential_expiry_unix,
            expires_at: add(now, p.lifetime),
            bw_to_peer: TokenBucket::new(self.config.max_bytes_per_second_per_allocation, now),
            bw_to_client: TokenBucket::new(self.config.max_bytes_per_second_per_allocation, now),
            permissions: HashMap::new(),
            channels: HashMap::new(),
            channel_by_peer: HashMap::new(),
            allocate_tid: p.tid,
            allocate_response: response,
            scheduled: None,
            started: now,
            bytes_to_peer: 0,
            bytes_to_client: 0,
        };
        if self.config.report_allocations
            && let Some(booking) = &alloc.booking
        {
            let participant = RestUsername::parse(&alloc.username).map_or("", |u| u.participant_epoch().0);
            self.events.push_back(AllocationEvent::Started {
                booking: booking.clone(),
                participant: participant.into(),
                transport: alloc.five_tuple.transport,
                at: now,
            });
        }
        self.by_five_tuple.insert(p.five_tuple, Slot::Active(id));
        self.by_relay.insert(bound, id);
        *self.active_gauge(p.five_tuple.transport) += 1;
        self.stats.allocations_created += 1;
        self.stats.allocate_ok += 1;
        self.allocations.insert(id, alloc);
        self.reschedule(now, id);
    }

    fn active_gauge(&mut self, t: Transport) -> &mut u64 {
        match t {
            Transport::Udp => &mut self.stats.allocations_active_udp,
            Transport::Tcp => &mut self.stats.allocations_active_tcp,
            Transport::Tls => &mut self.stats.allocations_active_tls,
        }
    }

    fn release_quota(&mut self, username: &str, ip: IpAddr) {
        if let Some(c) = self.per_username.get_mut(username) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.per_username.remove(username);
            }
        }
        if let Some(c) = self.per_source_ip.get_mut(&ip) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.per_source_ip.remove(&ip);
            }
        }
    }

    fn destroy(&mut self, now: Instant, id: u64, reason: EndReason) {
        let Some(a) = self.allocations.remove(&id) else {
            return;
        };
        if self.config.report_allocations
            && let Some(booking) = &a.booking
        {
            let participant = RestUsername::parse(&a.username).map_or("", |u| u.participant_epoch().0);
            self.events.push_back(AllocationEvent::Ended {
                booking: booking.clone(),
                participant: participant.into(),
                transport: a.five_tuple.transport,
                bytes_to_peer: a.bytes_to_peer,
                bytes_to_client: a.bytes_to_client,
                started: a.started,
                ended: now,
            });
        }
        if self.by_five_tuple.get(&a.five_tuple) == Some(&Slot::Active(id)) {
            self.by_five_tuple.remove(&a.five_tuple);
        }
        if self.by_relay.get(&a.relay) == Some(&id) {
            self.by_relay.remove(&a.relay);
        }
        self.release_quota(&a.username, a.five_tuple.client.ip());
        let g = self.active_gauge(a.five_tuple.transport);
        *g = g.saturating_sub(1);
        let s = &mut self.stats;
        match reason {
            EndReason::Expired => s.allocations_expired += 1,
            EndReason::Deleted => s.allocations_deleted += 1,
            EndReason::CredentialExpired => s.allocations_credential_expired += 1,
            EndReason::Revoked => s.allocations_revoked += 1,
            EndReason::ClientClosed => s.allocations_client_closed += 1,
        }
        self.commands.push_back(Command::FreeRelay { relay: a.relay });
    }

    /// Recomputes the next wake-up of an allocation and pushes a timer if it moved earlier.
    fn reschedule(&mut self, now: Instant, id: u64) {
        let clock = self.clock;
        let Some(a) = self.allocations.get_mut(&id) else {
            return;
        };
        let mut wake = a.expires_at.min(clock.instant_of(now, a.credential_expiry_unix));
        for p in a.permissions.values() {
            wake = wake.min(p.expires_at);
        }
        for c in a.channels.values() {
            wake = wake.min(add(c.expires_at, CHANNEL_REBIND_GUARD));
        }
        if a.scheduled.is_none_or(|s| wake < s) {
            a.scheduled = Some(wake);
            self.timers.push(Reverse((wake, id)));
        }
    }

    fn handle_refresh(&mut self, now: Instant, reply: Reply, req: &Request<'_>, authed: &Authed<'_>) {
        let Some(id) = self.allocation_for(now, reply, authed) else {
            return;
        };
        if let Some(f) = req.requested_family
            && self.allocations.get(&id).is_some_and(|a| a.family.code() != f)
        {
            self.error_authenticated(reply, error_code::PEER_ADDRESS_FAMILY_MISMATCH, &authed.key, &[]);
            return;
        }
        let lifetime = match req.lifetime {
            Some(0) => {
                self.success(reply, &[Attribute::Lifetime(0)], &authed.key);
                self.destroy(now, id, EndReason::Deleted);
                return;
            }
            None => self.config.default_lifetime,
            Some(s) => Duration::from_secs(u64::from(s)).min(self.config.max_lifetime),
        };
        if let Some(a) = self.allocations.get_mut(&id) {
            a.expires_at = add(now, lifetime);
        }
        let secs = u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX);
        self.success(reply, &[Attribute::Lifetime(secs)], &authed.key);
        self.reschedule(now, id);
    }

    /// Checks a peer for CreatePermission/ChannelBind: family (443) and policy (403).
    fn check_peer(&mut self, reply: Reply, id: u64, peer: SocketAddr, key: &[u8; 16]) -> bool {
        let family = self.allocations.get(&id).map(|a| a.family);
        if family != Some(AddressFamily::of(peer)) {
            self.error_authenticated(reply, error_code::PEER_ADDRESS_FAMILY_MISMATCH, key, &[]);
            return false;
        }
        if self.config.peer_policy.check(peer).is_err() {
            self.stats.peer_denied += 1;
            self.error_authenticated(reply, error_code::FORBIDDEN, key, &[]);
            return false;
        }
        true
    }

    fn handle_create_permission(&mut self, now: Instant, reply: Reply, req: &Request<'_>, authed: &Authed<'_>) {
        let key = &authed.key;
        let Some(id) = self.allocation_for(now, reply, authed) else {
            return;
        };
        if req.peer_count == 0 {
            self.error_authenticated(reply, error_code::BAD_REQUEST, key, &[]);
            return;
        }
        if req.peer_count > MAX_PEERS_PER_REQUEST {
            self.stats.capacity_refusals += 1;
            self.error_authenticated(reply, error_code::INSUFFICIENT_CAPACITY, key, &[]);
            return;
        }
        for peer in req.peers() {
            if !self.check_peer(reply, id, peer, key) {
                return;
            }
        }
        let max = self.config.max_permissions_per_allocation as usize;
        let Some(a) = self.allocations.get_mut(&id) else {
            return;
        };
        let mut new = 0usize;
        for (i, peer) in req.peers().enumerate() {
            let fresh = !a.permissions.contains_key(&peer.ip()) && !req.peers().take(i).any(|p| p.ip() == peer.ip());
            new += usize::from(fresh);
        }
        if a.permissions.len() + new > max {
            self.stats.capacity_refusals += 1;
            self.error_authenticated(reply, error_code::INSUFFICIENT_CAPACITY, key, &[]);
            return;
        }
        let expires_at = add(now, PERMISSION_LIFETIME);
        for peer in req.peers() {
            a.permissions.insert(peer.ip(), Permission { expires_at });
        }
        self.success(reply, &[], key);
        self.reschedule(now, id);
    }

    fn handle_channel_bind(&mut self, now: Instant, reply: Reply, req: &Request<'_>, authed: &Authed<'_>) {
        let key = &authed.key;
        let Some(id) = self.allocation_for(now, reply, authed) else {
            return;
        };
        let (Some(channel), Some(peer), 1) = (req.channel.and_then(ChannelNumber::new), req.peers[0], req.peer_count)
        else {
            self.error_authenticated(reply, error_code::BAD_REQUEST, key, &[]);
            return;
        };
        let conflict = self.allocations.get(&id).is_some_and(|a| {
            a.channels.get(&channel).is_some_and(|b| b.peer != peer)
                || a.channel_by_peer.get(&peer).is_some_and(|c| *c != channel)
        });
        if conflict {
            self.error_authenticated(reply, error_code::BAD_REQUEST, key, &[]);
            return;
        }
        if !self.check_peer(reply, id, peer, key) {
            return;
        }
        let max_channels = self.config.max_channels_per_allocation as usize;
        let max_perms = self.config.max_permissions_per_allocation as usize;
        let Some(a) = self.allocations.get_mut(&id) else {
            return;
        };
        let new_channel = !a.channels.contains_key(&channel);
        let new_perm = !a.permissions.contains_key(&peer.ip());
        if (new_channel && a.channels.len() >= max_channels) || (new_perm && a.permissions.len() >= max_perms) {
            self.stats.capacity_refusals += 1;
            self.error_authenticated(reply, error_code::INSUFFICIENT_CAPACITY, key, &[]);
            return;
        }
        a.channels.insert(channel, ChannelBinding { peer, expires_at: add(now, CHANNEL_LIFETIME) });
        a.channel_by_peer.insert(peer, channel);
        a.permissions.insert(peer.ip(), Permission { expires_at: add(now, PERMISSION_LIFETIME) });
        self.success(reply, &[], key);
        self.reschedule(now, id);
    }

    /// A datagram of `payload_len` bytes received by the relay socket bound at `relay` from
    /// `peer`. `Some` when a permission exists (RFC 8656 §9): [`ClientDelivery::ChannelData`]
    /// when a channel is bound to `peer`, else [`ClientDelivery::DataIndication`]. `None`:
    /// dropped and counted (no allocation, no permission, or over a bandwidth cap:
    /// [`Stats::drops_bandwidth`]). Hot path: no allocation, O(1) lookups; `payload_len` is
    /// charged to the allocation's peer → client bucket and the server's total bucket.
    pub fn handle_peer_input(
        &mut self,
        now: Instant,
        relay: SocketAddr,
        peer: SocketAddr,
        payload_len: usize,
    ) -> Option<ClientDelivery> {
        let Some(a) = self.by_relay.get(&relay).and_then(|id| self.allocations.get_mut(id)) else {
            self.stats.drops_no_allocation += 1;
            return None;
        };
        if now >= a.expires_at {
            self.stats.drops_no_allocation += 1;
            return None;
        }
        if !a.permits(peer.ip(), now) {
            self.stats.drops_no_permission += 1;
            return None;
        }
        if !take_both(&mut a.bw_to_client, &mut self.total_bw, now, payload_len) {
            self.stats.drops_bandwidth += 1;
            return None;
        }
        a.bytes_to_client += payload_len as u64;
        let to = a.five_tuple;
        let channel =
            a.channel_by_peer.get(&peer).filter(|c| a.channels.get(c).is_some_and(|b| now < b.expires_at)).copied();
        self.stats.relayed_packets_to_client += 1;
        self.stats.relayed_bytes_to_client += payload_len as u64;
        Some(match channel {
            Some(channel) => ClientDelivery::ChannelData { to, channel },
            None => ClientDelivery::DataIndication { to },
        })
    }

    /// The client's TCP/TLS connection closed: its allocation ends (RFC 8656 §3.1: an
    /// allocation over TCP lives no longer than the connection). Also valid for UDP (frees it).
    pub fn handle_client_closed(&mut self, now: Instant, from: FiveTuple) {
        self.authenticated_streams.remove(&from);
        match self.by_five_tuple.get(&from).copied() {
            Some(Slot::Active(id)) => self.destroy(now, id, EndReason::ClientClosed),
            Some(Slot::Pending(id)) => {
                self.by_five_tuple.remove(&from);
                if let Some(p) = self.pending.get_mut(&id) {
                    p.cancelled = true;
                }
            }
            None => {}
        }
    }

    /// Whether a TURN request on the TCP/TLS connection `from` has passed long-term
    /// authentication (RFC 8489 §9.2.4: USERNAME, REALM, MESSAGE-INTEGRITY, credential expiry,
    /// revocation and NONCE all good) since it opened, whatever the request's outcome. The
    /// driver closes a connection that is not authenticated by its deadline. Always `false` for
    /// UDP (no connection); forgotten by [`Server::handle_client_closed`].
    pub fn is_authenticated(&self, from: FiveTuple) -> bool {
        self.authenticated_streams.contains(&from)
    }

    /// The next [`Command`] for the driver, in order; `None` when there is nothing to do.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// The next [`AllocationEvent`] (only with [`ServerConfig::report_allocations`]), in order; `None` when there is
    /// none. Drain it after the commands.
    pub fn poll_event(&mut self) -> Option<AllocationEvent> {
        self.events.pop_front()
    }

    /// The live allocations of `booking` with the bytes they relayed so far (for a call report taken while the
    /// allocations still run). O(allocations): not for the data path.
    pub fn booking_usage(&self, booking: &str) -> Vec<AllocationUsage> {
        self.allocations
            .values()
            .filter(|a| a.booking.as_deref() == Some(booking))
            .map(|a| AllocationUsage {
                participant: RestUsername::parse(&a.username).map_or("", |u| u.participant_epoch().0).into(),
                transport: a.five_tuple.transport,
                bytes_to_peer: a.bytes_to_peer,
                bytes_to_client: a.bytes_to_client,
                started: a.started,
            })
            .collect()
    }

    /// Earliest instant at which [`Server::handle_timeout`] must be called (allocation,
    /// permission, channel expiry; credential expiry of an allocation's username, i.e. the
    /// booking's hard end). May be earlier than necessary, never later. `None`: no timers.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    /// Advances time: re-bases the Unix clock mapping, ends allocations whose lifetime or
    /// credential expiry passed ([`Command::FreeRelay`]), prunes expired permissions and
    /// channels, forgets revocations that have lapsed.
    pub fn handle_timeout(&mut self, now: Instant, unix_now: Duration) {
        self.clock = Clock { base: now, base_unix: unix_now };
        let unix_secs = unix_now.as_secs();
        while let Some(Reverse((t, id))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(a) = self.allocations.get_mut(&id) else {
                continue;
            };
            if a.scheduled != Some(t) {
                continue; // superseded by an earlier entry that already fired
            }
            a.scheduled = None;
            if now >= a.expires_at {
                self.destroy(now, id, EndReason::Expired);
                continue;
            }
            if a.credential_expiry_unix <= unix_secs {
                self.destroy(now, id, EndReason::CredentialExpired);
                continue;
            }
            a.permissions.retain(|_, p| now < p.expires_at);
            let guard_passed = |b: &ChannelBinding| add(b.expires_at, CHANNEL_REBIND_GUARD) <= now;
            let channels = &mut a.channels;
            a.channel_by_peer.retain(|_, c| channels.get(c).is_some_and(|b| !guard_passed(b)));
            channels.retain(|_, b| !guard_passed(b));
            self.reschedule(now, id);
        }
        self.revoked.retain(|_, until| unix_secs < *until);
        self.booking_ends.retain(|_, e| unix_secs < e.keep_until_unix);
        self.participant_floors.retain(|_, f| unix_secs < f.keep_until_unix);
        self.not_before.retain(|_, t| unix_secs < *t);
    }

    /// The booking was moved to a window that opens at `not_before_unix` (Unix seconds): until then its credentials
    /// are refused (401, counted as revoked) and its allocations, live or waiting, are torn down now. Unlike
    /// [`Server::revoke_booking`] a later call **replaces** the instant, so moving the booking back to an earlier
    /// window lifts the refusal; an instant at or before now removes it. Returns how many allocations were torn
    /// down.
    pub fn set_booking_not_before(&mut self, now: Instant, booking: &str, not_before_unix: u64) -> usize {
        if not_before_unix <= self.clock.unix_secs(now) {
            self.not_before.remove(booking);
            return 0;
        }
        self.not_before.insert(booking.into(), not_before_unix);
        let ids: Vec<u64> =
            self.allocations.iter().filter(|(_, a)| a.booking.as_deref() == Some(booking)).map(|(id, _)| *id).collect();
        let mut n = ids.len();
        for id in ids {
            self.destroy(now, id, EndReason::Revoked);
        }
        for (id, p) in self.pending.iter_mut() {
            if p.booking.as_deref() == Some(booking) && !p.cancelled {
                p.cancelled = true;
                n += 1;
                if self.by_five_tuple.get(&p.five_tuple) == Some(&Slot::Pending(*id)) {
                    self.by_five_tuple.remove(&p.five_tuple);
                }
            }
        }
        n
    }

    /// A participant's link was rotated or revoked (README, "Participants, links, metadata, kinds"): credentials of `booking` and `participant` whose
    /// username carries a link epoch below `min_epoch` (see [`RestUsername::participant_epoch`]) are refused from now
    /// on (401, counted as revoked), and the allocations made with them are torn down now ([`Command::FreeRelay`]),
    /// those waiting for a relay socket cancelled, so media through them stops at once. Credentials of the new link
    /// (epoch `min_epoch` or later) and of the other participant keep working. The rule is kept until
    /// `keep_until_unix` (the booking's latest hard end). A lower `min_epoch` than the one in force is ignored.
    /// Returns how many allocations were torn down (including cancelled pending ones).
    pub fn revoke_participant(
        &mut self,
        now: Instant,
        booking: &str,
        participant: &str,
        min_epoch: u64,
        keep_until_unix: u64,
    ) -> usize {
        let floor = self
            .participant_floors
            .entry((booking.into(), participant.into()))
            .or_insert(EpochFloor { min_epoch, keep_until_unix });
        floor.min_epoch = floor.min_epoch.max(min_epoch);
        floor.keep_until_unix = floor.keep_until_unix.max(keep_until_unix);
        let min_epoch = floor.min_epoch;
        let older = |username: &str| {
            RestUsername::parse(username).is_some_and(|u| {
                let (p, epoch) = u.participant_epoch();
                u.booking == booking && p == participant && epoch < min_epoch
            })
        };
        let ids: Vec<u64> = self.allocations.iter().filter(|(_, a)| older(&a.username)).map(|(id, _)| *id).collect();
        let mut n = ids.len();
        for id in ids {
            self.destroy(now, id, EndReason::Revoked);
        }
        for (id, p) in self.pending.iter_mut() {
            if !p.cancelled && older(&p.username) {
                p.cancelled = true;
                n += 1;
                if self.by_five_tuple.get(&p.five_tuple) == Some(&Slot::Pending(*id)) {
                    self.by_five_tuple.remove(&p.five_tuple);
                }
            }
        }
        n
    }

    /// The booking was rescheduled or extended (README, "Reschedule and extend"): from now on every credential naming `booking` expires
    /// at `hard_end_unix` (Unix seconds) instead of the expiry in its username, on Allocate and on every later
    /// request, and the booking's allocations (and those waiting for a relay socket) end then ([`Command::FreeRelay`]
    /// at the new instant; an instant already past ends them at the next [`Server::handle_timeout`]). So a call
    /// extended while it runs keeps its allocations past the old hard end, and a shortened one loses them at the new
    /// one. The rule is kept until `keep_until_unix` (raised to `hard_end_unix` if lower): pass the latest hard end
    /// the booking ever had, the latest expiry any of its issued credentials carries. A later call replaces the rule.
    /// Returns how many allocations (live and waiting) follow the new end.
    pub fn set_booking_end(&mut self, now: Instant, booking: &str, hard_end_unix: u64, keep_until_unix: u64) -> usize {
        let end = BookingEnd { hard_end_unix, keep_until_unix: keep_until_unix.max(hard_end_unix) };
        self.booking_ends.insert(booking.into(), end);
        // Refusals of a participant's older links must outlive every credential of the booking, now longer too.
        for ((b, _), floor) in self.participant_floors.iter_mut() {
            if &**b == booking {
                floor.keep_until_unix = floor.keep_until_unix.max(end.keep_until_unix);
            }
        }
        let ids: Vec<u64> =
            self.allocations.iter().filter(|(_, a)| a.booking.as_deref() == Some(booking)).map(|(id, _)| *id).collect();
        let mut n = ids.len();
        for id in ids {
            if let Some(a) = self.allocations.get_mut(&id) {
                a.credential_expiry_unix = hard_end_unix;
            }
            self.reschedule(now, id);
        }
        for p in self.pending.values_mut().filter(|p| p.booking.as_deref() == Some(booking)) {
            p.credential_expiry_unix = hard_end_unix;
            n += 1;
        }
        n
    }

    /// Booking cancelled (or ended early): the booking's credentials are refused until
    /// `until_unix` (Unix seconds, normally their expiry), and every allocation whose username
    /// names this booking is torn down now ([`Command::FreeRelay`]). Allocations still waiting
    /// for a relay socket are cancelled. Returns how many allocations were torn down
    /// (including cancelled pending ones).
    pub fn revoke_booking(&mut self, now: Instant, booking: &str, until_unix: u64) -> usize {
        let entry = self.revoked.entry(booking.into()).or_insert(0);
        *entry = (*entry).max(until_unix);
        let ids: Vec<u64> =
            self.allocations.iter().filter(|(_, a)| a.booking.as_deref() == Some(booking)).map(|(id, _)| *id).collect();
        let mut n = ids.len();
        for id in ids {
            self.destroy(now, id, EndReason::Revoked);
        }
        for (id, p) in self.pending.iter_mut() {
            if p.booking.as_deref() == Some(booking) && !p.cancelled {
                p.cancelled = true;
                n += 1;
                if self.by_five_tuple.get(&p.five_tuple) == Some(&Slot::Pending(*id)) {
                    self.by_five_tuple.remove(&p.five_tuple);
                }
            }
        }
        n
    }

    /// Replaces the TURN REST secrets (rotation). Existing allocations stay; their next request
    /// must verify with one of the new secrets.
    pub fn set_auth_secrets(&mut self, secrets: Vec<Vec<u8>>) {
        self.config.auth_secrets = secrets;
    }

    /// Replaces the legacy static long-term credentials (configuration reload; DESIGN §4).
    ///
    /// Keys are recomputed with the configured realm. Allocations made with a static
    /// credential whose username is no longer in the list are torn down at once
    /// ([`Command::FreeRelay`], counted in [`Stats::allocations_revoked`]); waiting ones are
    /// cancelled. Allocations of a credential whose password changed stay, and their next
    /// request must authenticate with the new password. A lowered `max_allocations` refuses
    /// new allocations only. Returns how many allocations were torn down (including cancelled
    /// pending ones).
    pub fn set_static_credentials(&mut self, credentials: Vec<StaticCredential>) -> usize {
        self.statics = static_entries(&self.config.realm, &credentials);
        self.config.static_credentials = credentials;
        let gone = |booking: &Option<Box<str>>, username: &str, statics: &[StaticEntry]| {
            booking.is_none() && !statics.iter().any(|e| &*e.username == username)
        };
        let ids: Vec<u64> = self
            .allocations
            .iter()
            .filter(|(_, a)| gone(&a.booking, &a.username, &self.statics))
            .map(|(id, _)| *id)
            .collect();
        let mut n = ids.len();
        let now = self.clock.base;
        for id in ids {
            self.destroy(now, id, EndReason::Revoked);
        }
        for (id, p) in self.pending.iter_mut() {
            if !p.cancelled && gone(&p.booking, &p.username, &self.statics) {
                p.cancelled = true;
                n += 1;
                if self.by_five_tuple.get(&p.five_tuple) == Some(&Slot::Pending(*id)) {
                    self.by_five_tuple.remove(&p.five_tuple);
                }
            }
        }
        n
    }

    /// Counters and gauges.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Number of active allocations (relay socket bound).
    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_maps_and_clamps() {
        let t0 = Instant::now();
        let c = Clock { base: t0, base_unix: Duration::from_secs(1_000) };
        assert_eq!(c.unix_secs(t0 + Duration::from_secs(5)), 1_005);
        assert_eq!(c.instant_of(t0, 1_010), t0 + Duration::from_secs(10));
        assert_eq!(c.instant_of(t0, 10), t0);
        // A far-future expiry is clamped instead of overflowing.
        assert!(c.instant_of(t0, u64::MAX) > t0);
    }

    #[test]
    fn token_bucket_refills_at_rate_up_to_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Some(1_000), t0);
        // Burst is the 64 KiB minimum for a small rate; starts full.
        assert!(b.has(65_536) && !b.has(65_537));
        b.consume(65_536);
        assert!(!b.has(1));
        b.refill(t0 + Duration::from_millis(1));
        assert!(b.has(1) && !b.has(2), "1 ms at 1000 B/s = 1 byte");
        // A clock that goes backwards refills nothing and does not panic.
        b.refill(t0);
        assert!(b.has(1) && !b.has(2));
        b.refill(t0 + Duration::from_secs(3600 * 24 * 365 * 100));
        assert!(b.has(65_536) && !b.has(65_537), "capped at the burst");
        let mut unlimited = TokenBucket::new(None, t0);
        unlimited.consume(usize::MAX);
        assert!(unlimited.has(usize::MAX));
        let mut huge = TokenBucket::new(Some(u64::MAX), t0);
        huge.refill(t0 + Duration::from_secs(10_000_000_000));
        assert!(huge.has(usize::MAX));
    }

    #[test]
    fn take_both_is_all_or_nothing() {
        let t0 = Instant::now();
        let mut a = TokenBucket::new(Some(100_000), t0);
        let mut total = TokenBucket::new(Some(100_000), t0);
        total.consume(99_000);
        assert!(!take_both(&mut a, &mut total, t0, 2_000));
        assert!(a.has(100_000), "a refused datagram costs the allocation nothing");
        assert!(take_both(&mut a, &mut total, t0, 1_000));
        assert!(a.has(99_000) && !a.has(99_001));
    }

    #[test]
    fn static_lookup_matches_exact_username_only() {
        let mut cfg = ServerConfig::new("duet", vec![], [0; 32]);
        cfg.static_credentials = vec![
            StaticCredential { username: "alice".into(), password: "a".into(), max_allocations: 3 },
            StaticCredential { username: "al".into(), password: "b".into(), max_allocations: 1 },
        ];
        let server = Server::new(cfg, Instant::now(), Duration::from_secs(1));
        assert_eq!(server.lookup_static("alice"), Some((long_term_key("alice", "duet", "a"), 3)));
        assert_eq!(server.lookup_static("al"), Some((long_term_key("al", "duet", "b"), 1)));
        for other in ["", "a", "alic", "alice ", "ALICE", "alice\0"] {
            assert_eq!(server.lookup_static(other), None, "{other:?}");
        }
    }

    /// Checklist item 21 guard: the MESSAGE-INTEGRITY comparison and the static-credential
    /// lookup stay constant-time (`subtle`), which no behavioural test can observe reliably.
    #[test]
    fn integrity_and_static_lookup_use_constant_time_comparisons() {
        fn body<'a>(src: &'a str, signature: &str) -> &'a str {
            let start = src.find(signature).expect("function present");
            let end = src[start..].find("\n    }\n").map_or(src.len(), |e| start + e);
            &src[start..end]
        }
        let stun = body(include_str!("stun.rs"), "pub fn verify_integrity(");
        assert!(stun.contains(".ct_eq(") && !stun.contains("== expected"), "{stun}");
        let here = body(include_str!("server.rs"), "fn lookup_static(");
        assert!(here.contains(".ct_eq(") && !here.contains("return Some"), "{here}");
        let nonce = body(include_str!("auth.rs"), "pub fn verify(");
        assert!(nonce.contains(".ct_eq("), "{nonce}");
    }

    #[test]
    fn debug_hides_secrets() {
        let cfg = ServerConfig::new("duet", vec![b"topsecret".to_vec()], [0x41; 32]);
        let server = Server::new(cfg.clone(), Instant::now(), Duration::from_secs(1));
        for text in [format!("{cfg:?}"), format!("{server:?}")] {
            assert!(!text.contains("topsecret") && !text.contains("116, 111, 112"), "{text}");
            assert!(!text.contains("65, 65"), "{text}");
        }
    }

    #[test]
    fn data_indication_roundtrip() {
        let mut out = vec![1, 2, 3];
        let peer: SocketAddr = "198.51.100.7:4000".parse().unwrap();
        encode_data_indication(peer, b"payload", &mut out);
        let m = Message::decode(&out).unwrap();
        assert_eq!((m.class(), m.method()), (Class::Indication, Method::DATA));
        assert_eq!(m.get(attr::XOR_PEER_ADDRESS), Some(Ok(Attribute::XorPeerAddress(peer))));
        assert_eq!(m.get(attr::DATA), Some(Ok(Attribute::Data(b"payload"))));
    }
}
