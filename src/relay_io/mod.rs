//! Socket driver of the sans-IO [`duet_relay::Server`]: UDP, TCP and TLS client listeners, UDP relay sockets.
//!
//! One task per UDP client listener, one per relay socket and one per TCP/TLS client connection receive and hand
//! what they read to the server under a short lock; what the server returns is sent at once with non-blocking
//! `try_send_to` (a full socket buffer drops the datagram, as a router would). Stream clients get their frames
//! through a bounded queue drained by the connection's writer, so a slow TCP client never blocks the lock. A timer
//! task drives `handle_timeout` (allocation, permission and channel expiry, and the teardown of a booking's
//! allocations at its `hard_end_at`). The relay socket buffer keeps 4 bytes of headroom so the ChannelData header
//! is written in place: no copy and no allocation per relayed UDP packet.
//!
//! TCP/TLS client connections are capped in total and per client IP ([`StreamLimits`]; IPv6 by /64), and one that
//! has not authenticated a request by [`StreamLimits::auth_deadline`] is closed. TLS handshakes never run on the
//! relay thread: the TLS listeners accept and handshake on the daemon's multi-thread runtime (at most
//! [`StreamLimits::tls_handshakes`] at once, [`StreamLimits::tls_handshake_rate_per_ip`] per second per client IP),
//! and only the established stream is handed to the relay runtime. Its socket stays registered with the main
//! runtime's reactor, so a readiness wake-up crosses threads; TURNS is the fallback transport, plain UDP and TCP
//! stay on the relay thread from end to end.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use duet_relay::SourceRateLimiter;
use duet_relay::channel::write_channel_data_header;
use duet_relay::framing::stream_frame_len;
use duet_relay::server::{
    AddressFamily, AllocationEvent, ClientDelivery, Command, FiveTuple, Server, ServerConfig, Transport,
};
use rand::Rng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::booking::calls::{Fact, FactSender};
use crate::client_ip::IpKey;
use crate::metrics::{Metrics, sync_counter};

pub mod tls;

/// Largest UDP payload we receive (the IPv4 maximum); relayed application data is far smaller in practice.
const MAX_DATAGRAM: usize = 65_535;
/// ChannelData header written in front of a relayed payload (RFC 8656 §12.4).
const HEADROOM: usize = 4;
/// Upper bound of the timer's sleep: the revocation and expiry checks run at least this often.
const TIMER_MAX_SLEEP: Duration = Duration::from_secs(1);
/// Datagrams handled per wake-up of one socket before it yields to the others (fairness between allocations; a
/// flood on one socket cannot starve the rest of the relay thread).
const BATCH: usize = 64;
/// Random ports tried before an Allocate gets 508 Insufficient Capacity.
const BIND_ATTEMPTS: usize = 64;
/// Frames queued for one TCP/TLS client before further ones are dropped (a slow reader loses media, not the relay).
const STREAM_QUEUE: usize = 512;
/// An authenticated TCP/TLS client connection that sends nothing for this long is closed; its allocation goes with it
/// (RFC 8656 §3.1: an allocation over TCP lives as long as its connection).
const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Initial read buffer of a TCP/TLS client connection: a STUN request or a ChannelData message of an audio or video
/// packet (up to ~1 200 bytes) fits; the buffer grows to the announced frame length when a longer frame arrives
/// (at most 65 555 bytes, [`stream_frame_len`]) and shrinks back once it is consumed.
const STREAM_BUFFER: usize = 2048;
/// A write to a TCP/TLS client that makes no progress for this long closes the connection.
const STREAM_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing TCP/TLS connection may spend writing out what is still queued for it.
const STREAM_CLOSE_FLUSH: Duration = Duration::from_secs(2);
/// Time allowed for a TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Receive and send buffer asked for on client listeners. Every client's traffic funnels through these sockets, so a
/// burst while the relay thread is busy must fit: with the kernel default (208 KiB) coturn's flood profile
/// (benches/relay_vs_coturn.sh flood) lost 0.1 to 6 % of packets here; with 4 MiB none. The kernel caps it at
/// `net.core.rmem_max` / `wmem_max`.
const CLIENT_SOCKET_BUFFER: usize = 4 << 20;
/// Receive and send buffer asked for on each relay socket (one per allocation; memory is only used while queued).
const RELAY_SOCKET_BUFFER: usize = 1 << 20;

/// Limits on TCP/TLS client connections (`[turn]` `max_stream_connections`, `stream_connections_per_ip`,
/// `auth_deadline`). Over a cap a new connection is closed at once, before any byte is read (and before a TLS
/// handshake).
#[derive(Debug, Clone)]
pub struct StreamLimits {
    /// TCP and TLS client connections open at once, all listeners together (default 10 000).
    pub max_connections: usize,
    /// TCP and TLS client connections open at once from one client IP (IPv6: one /64) (default 128: 50 clients
    /// behind one NAT address, each with up to two connections, fit).
    pub per_ip: usize,
    /// A connection on which no request has passed authentication this long after it opened (TLS: after the
    /// handshake) is closed; after that the 300 s idle timeout applies (default 20 s).
    pub auth_deadline: Duration,
    /// TLS handshakes in progress at once, all TLS listeners together; more wait (within the 10 s handshake
    /// timeout) (default 64).
    pub tls_handshakes: usize,
    /// TLS handshakes per second per client IP (IPv6: per /64), the refill rate of a token bucket of
    /// `tls_handshake_burst_per_ip`; over it a new connection is closed at once (default 50: one client IP can hold
    /// at most that many handshakes per second of the shared pool).
    pub tls_handshake_rate_per_ip: u32,
    /// Bucket size of the per-IP handshake rate (default 256: 50 TURNS clients behind one NAT address starting at
    /// once, each with up to 4 attempts, as coturn's `turnutils_uclient -S` makes when it falls back from TLS 1.0
    /// and 1.1, which Duet refuses, to TLS 1.2).
    pub tls_handshake_burst_per_ip: u32,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_connections: 10_000,
            per_ip: 128,
            auth_deadline: Duration::from_secs(20),
            tls_handshakes: 64,
            tls_handshake_rate_per_ip: 50,
            tls_handshake_burst_per_ip: 256,
        }
    }
}

/// The read buffer length a TCP/TLS connection needs with `pending` (the start of a frame) buffered: room for the
/// whole frame its header announces, at least [`STREAM_BUFFER`] (so a long frame's buffer shrinks back once
/// consumed). Never less than `pending.len()`.
fn stream_buffer_len(pending: &[u8]) -> usize {
    match stream_frame_len(pending) {
        Ok(Some(len)) => len.max(STREAM_BUFFER).max(pending.len()),
        _ => STREAM_BUFFER.max(pending.len()),
    }
}

/// Open TCP/TLS client connections, in total and per client IP key.
#[derive(Default)]
struct StreamCount {
    total: usize,
    per_ip: HashMap<IpKey, usize>,
}

/// One admitted TCP/TLS connection: counted until dropped.
struct StreamSlot {
    inner: Arc<Inner>,
    key: IpKey,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut count = self.inner.stream_count.lock().unwrap_or_else(|p| p.into_inner());
        count.total = count.total.saturating_sub(1);
        if let Some(n) = count.per_ip.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                count.per_ip.remove(&self.key);
            }
        }
        self.inner.metrics.turn_stream_connections.set(count.total as i64);
    }
}

/// Where and how relay sockets are bound.
#[derive(Debug, Clone)]
pub struct RelaySockets {
    /// IP the IPv4 relay sockets bind to (`None`: no IPv4 relays; an IPv4 Allocate gets 440).
    pub bind_v4: Option<IpAddr>,
    /// IP the IPv6 relay sockets bind to (`None`: no IPv6 relays).
    pub bind_v6: Option<IpAddr>,
    /// IPv4 put in XOR-RELAYED-ADDRESS behind a 1:1 NAT (coturn `external-ip`); `None` = the bound IP.
    pub advertised_v4: Option<IpAddr>,
    /// Port range.
    pub ports: RangeInclusive<u16>,
    /// Addresses the server is reachable at besides its bound listener IPs: `public_ip` and the addresses of
    /// `public_host` (behind a 1:1 NAT with hairpinning a packet to them reaches this server). Each, with the port of
    /// every TURN, HTTP and admin listener, is denied as a peer (loop attack).
    pub public_ips: Vec<IpAddr>,
}

/// The client listeners to bind.
#[derive(Debug, Clone, Default)]
pub struct Listeners {
    /// UDP.
    pub udp: Vec<SocketAddr>,
    /// TCP (RFC 8656 §3.1 TCP client transport).
    pub tcp: Vec<SocketAddr>,
    /// TLS over TCP (TURNS); needs a [`tls::TlsConfig`].
    pub tls: Vec<SocketAddr>,
    /// Caps and deadlines of the TCP and TLS client connections.
    pub stream: StreamLimits,
}

struct Core {
    server: Server,
    relays: HashMap<SocketAddr, (Arc<UdpSocket>, AbortHandle)>,
    /// Writers of the TCP/TLS client connections, by 5-tuple.
    streams: HashMap<FiveTuple, mpsc::Sender<Vec<u8>>>,
    last: Exported,
    /// The one receive buffer of the relay thread (every socket reads into it under the lock), so an allocation
    /// costs no buffer of its own: 4 bytes of headroom for the ChannelData header, 3 behind for TCP padding.
    buf: Vec<u8>,
    /// Scratch for Data indications.
    indication: Vec<u8>,
}

/// The core counter values last copied into Prometheus, keyed by metric and label.
type Exported = HashMap<(&'static str, &'static str), u64>;

struct Inner {
    /// The relay's own single-threaded runtime: every socket and task of the data path lives on one thread, so a
    /// relayed packet never crosses threads and the core's lock is uncontended. Measured with
    /// benches/relay_vs_coturn.sh paced: 11.5 us of CPU per relayed packet on the daemon's multi-thread runtime,
    /// 8.4 us on one thread.
    rt: tokio::runtime::Handle,
    core: Mutex<Core>,
    listeners: HashMap<SocketAddr, Arc<UdpSocket>>,
    tcp_addrs: Vec<SocketAddr>,
    tls_addrs: Vec<SocketAddr>,
    sockets: RelaySockets,
    metrics: Metrics,
    stream_limits: StreamLimits,
    stream_count: Mutex<StreamCount>,
    /// TLS handshakes in progress (on the main runtime).
    handshakes: Arc<Semaphore>,
    /// Per-IP TLS handshake rate.
    handshake_rate: Mutex<SourceRateLimiter>,
    /// Where allocation starts and ends go (call reports), once [`RelayHandle::set_call_facts`] was called.
    facts: std::sync::OnceLock<FactSender>,
}

/// Control handle of the relay; cheap to clone.
#[derive(Clone)]
pub struct RelayHandle {
    inner: Arc<Inner>,
}

/// `udp`, `tcp` or `tls`: the client transport as call reports name it.
fn transport_label(t: Transport) -> &'static str {
    match t {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
        Transport::Tls => "tls",
    }
}

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Starts the relay's single-threaded runtime on a thread of its own; it runs until `shutdown`.
fn relay_runtime(shutdown: CancellationToken) -> std::io::Result<tokio::runtime::Handle> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("duet-relay".into()).spawn(move || {
        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => {
                let _ = tx.send(Ok(rt.handle().clone()));
                rt.block_on(shutdown.cancelled());
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    })?;
    rx.recv().map_err(|_| std::io::Error::other("relay runtime thread ended"))?
}

impl RelayHandle {
    /// Binds the client listeners and starts the receive and timer tasks; they stop with `shutdown`. TLS
    /// listeners need `tls` (its certificate can be swapped at run time, see [`tls::TlsConfig::reload`]).
    pub async fn start(
        mut config: ServerConfig,
        listen: &Listeners,
        tls: Option<tls::TlsConfig>,
        sockets: RelaySockets,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> std::io::Result<RelayHandle> {
        if !listen.tls.is_empty() && tls.is_none() {
            return Err(std::io::Error::other("TLS listeners need turn.tls_cert and turn.tls_key"));
        }
        let tcp_listener = |addr: &SocketAddr| -> std::io::Result<TcpListener> {
            let s = socket2::Socket::new(socket2::Domain::for_address(*addr), socket2::Type::STREAM, None)?;
            s.set_reuse_address(true)?;
            s.bind(&(*addr).into())?;
            s.listen(1024)?;
            s.set_nonblocking(true)?;
            TcpListener::from_std(s.into())
        };
        // The TLS listeners, and the streams they accept, register with the caller's (the daemon's multi-thread)
        // runtime: handshakes run there, off the relay thread.
        let main_rt = tokio::runtime::Handle::current();
        let tls_listeners = listen.tls.iter().map(tcp_listener).collect::<Result<Vec<_>, _>>()?;
        let rt = relay_runtime(shutdown.clone())?;
        // Sockets register with the reactor of the runtime current when they are created: the relay's.
        let _in_relay_runtime = rt.enter();
        let mut udp = Vec::new();
        for addr in &listen.udp {
            let s = std::net::UdpSocket::bind(addr)?;
            let sock = socket2::SockRef::from(&s);
            sock.set_recv_buffer_size(CLIENT_SOCKET_BUFFER)?;
            sock.set_send_buffer_size(CLIENT_SOCKET_BUFFER)?;
            s.set_nonblocking(true)?;
            udp.push((s.local_addr()?, Arc::new(UdpSocket::from_std(s)?)));
        }
        let tcp = listen.tcp.iter().map(tcp_listener).collect::<Result<Vec<_>, _>>()?;
        let tcp_addrs = tcp.iter().map(|l| l.local_addr()).collect::<Result<Vec<_>, _>>()?;
        let tls_addrs = tls_listeners.iter().map(|l| l.local_addr()).collect::<Result<Vec<_>, _>>()?;
        // The relay must not relay to its own listeners (loop attack), nor to them at its public addresses (1:1 NAT
        // hairpinning): every listener port (TURN here, HTTP and admin from the caller) on every public IP.
        let own = &mut config.peer_policy.own_addresses;
        own.extend(udp.iter().map(|(a, _)| *a));
        own.extend(tcp_addrs.iter().chain(&tls_addrs).copied());
        let mut ports: Vec<u16> = own.iter().map(SocketAddr::port).collect();
        ports.sort_unstable();
        ports.dedup();
        let public: Vec<SocketAddr> =
            sockets.public_ips.iter().flat_map(|ip| ports.iter().map(|p| SocketAddr::new(*ip, *p))).collect();
        own.extend(public);
        config.relay_families = [(sockets.bind_v4, AddressFamily::V4), (sockets.bind_v6, AddressFamily::V6)]
            .into_iter()
            .filter_map(|(ip, f)| ip.map(|_| f))
            .collect();
        let server = Server::new(config, Instant::now(), unix_now());
        let inner = Arc::new(Inner {
            rt: rt.clone(),
            core: Mutex::new(Core {
                server,
                relays: HashMap::new(),
                streams: HashMap::new(),
                last: Exported::default(),
                buf: vec![0u8; HEADROOM + MAX_DATAGRAM + 3],
                indication: Vec::with_capacity(2048),
            }),
            listeners: udp.into_iter().collect(),
            tcp_addrs,
            tls_addrs,
            sockets,
            metrics,
            handshakes: Arc::new(Semaphore::new(listen.stream.tls_handshakes.max(1))),
            handshake_rate: Mutex::new(SourceRateLimiter::new(Instant::now())),
            stream_limits: listen.stream.clone(),
            stream_count: Mutex::new(StreamCount::default()),
            facts: std::sync::OnceLock::new(),
        });
        let handle = RelayHandle { inner };
        for (addr, sock) in &handle.inner.listeners {
            rt.spawn(handle.clone().client_loop(*addr, sock.clone(), shutdown.clone()));
        }
        for l in tcp {
            rt.spawn(handle.clone().accept_loop(l, None, shutdown.clone()));
        }
        for l in tls_listeners {
            main_rt.spawn(handle.clone().accept_loop(l, tls.clone(), shutdown.clone()));
        }
        rt.spawn(handle.clone().timer_loop(shutdown));
        Ok(handle)
    }

    /// The bound UDP client listener addresses, sorted.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self.inner.listeners.keys().copied().collect();
        v.sort();
        v
    }

    /// The bound TCP listener addresses.
    pub fn tcp_addrs(&self) -> &[SocketAddr] {
        &self.inner.tcp_addrs
    }

    /// The bound TLS listener addresses.
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.inner.tls_addrs
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock would be a bug in the core; recover the state rather than stop relaying.
        self.inner.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Revokes a cancelled booking's credentials until `until_unix` and tears down its allocations now.
    pub fn revoke_booking(&self, booking: &str, until_unix: i64) {
        let mut core = self.lock();
        let n = core.server.revoke_booking(Instant::now(), booking, until_unix.max(0) as u64);
        self.drain(&mut core);
        tracing::info!(target: "relay", booking, allocations = n, "booking revoked");
    }

    /// A rescheduled or extended booking: its credentials and allocations end at `hard_end_unix` (Unix seconds)
    /// from now on, whatever expiry their usernames carry; the rule is kept until `keep_until_unix` (the latest hard
    /// end the booking ever had). See `duet_relay::Server::set_booking_end`.
    pub fn set_booking_end(&self, booking: &str, hard_end_unix: i64, keep_until_unix: i64) {
        let mut core = self.lock();
        let (end, keep) = (hard_end_unix.max(0) as u64, keep_until_unix.max(0) as u64);
        let n = core.server.set_booking_end(Instant::now(), booking, end, keep);
        self.drain(&mut core);
        tracing::info!(target: "relay", booking, allocations = n, hard_end_unix, "booking hard end moved");
    }

    /// A participant's link was rotated or revoked: TURN credentials of its older links (`link_epoch` below
    /// `min_epoch`) are refused and their allocations torn down now; the rule is kept until `keep_until_unix`. See
    /// `duet_relay::Server::revoke_participant`.
    pub fn revoke_participant(&self, booking: &str, participant: &str, min_epoch: i64, keep_until_unix: i64) {
        let mut core = self.lock();
        let (epoch, keep) = (min_epoch.max(0) as u64, keep_until_unix.max(0) as u64);
        let n = core.server.revoke_participant(Instant::now(), booking, participant, epoch, keep);
        self.drain(&mut core);
        tracing::info!(target: "relay", booking, participant, allocations = n, "older links' credentials revoked");
    }

    /// Sends the starts and ends of booking allocations (with their relayed bytes) to `facts` from now on; the
    /// server must have been built with `ServerConfig::report_allocations`. A second call is ignored.
    pub fn set_call_facts(&self, facts: FactSender) {
        let _ = self.inner.facts.set(facts);
    }

    /// The live allocations of `booking`, as (participant id, client transport, bytes relayed to peers, bytes relayed
    /// to the client) so far.
    pub fn booking_usage(&self, booking: &str) -> Vec<(String, &'static str, u64, u64)> {
        let core = self.lock();
        core.server
            .booking_usage(booking)
            .into_iter()
            .map(|u| (u.participant.into(), transport_label(u.transport), u.bytes_to_peer, u.bytes_to_client))
            .collect()
    }

    /// A booking rescheduled to a window that opens at `not_before_unix`: its TURN credentials are refused before
    /// then and its allocations torn down now; an instant already past lifts the refusal. See
    /// `duet_relay::Server::set_booking_not_before`.
    pub fn set_booking_not_before(&self, booking: &str, not_before_unix: i64) {
        let mut core = self.lock();
        let n = core.server.set_booking_not_before(Instant::now(), booking, not_before_unix.max(0) as u64);
        self.drain(&mut core);
        if n > 0 {
            tracing::info!(target: "relay", booking, allocations = n, "booking moved to a later window");
        }
    }

    /// Allocations alive now.
    pub fn allocation_count(&self) -> usize {
        self.lock().server.allocation_count()
    }

    /// Replaces the accepted TURN secrets (rotation).
    pub fn set_auth_secrets(&self, secrets: Vec<Vec<u8>>) {
        self.lock().server.set_auth_secrets(secrets);
    }

    /// Waits until `sock` is readable, then reads up to [`BATCH`] datagrams into the shared buffer and hands each
    /// to `handle` under one lock. Returns `true` when the batch was used up with datagrams still queued (the caller
    /// then yields to the other sockets), `false` when the socket is drained.
    async fn read_batch(&self, sock: &UdpSocket, mut handle: impl FnMut(&mut Core, usize, SocketAddr)) -> bool {
        if sock.readable().await.is_err() {
            return false;
        }
        let mut core = self.lock();
        for _ in 0..BATCH {
            let core = &mut *core;
            match sock.try_recv_from(&mut core.buf[HEADROOM..HEADROOM + MAX_DATAGRAM]) {
                Ok((n, from)) => handle(core, n, from),
                // Nothing left: try_recv_from has cleared the readiness, the next readable() waits.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                // ICMP errors surface here on Linux (ECONNREFUSED of an earlier send); keep serving.
                Err(e) => tracing::debug!(target: "relay", error = %e, "recv"),
            }
            self.drain(core);
        }
        true
    }

    async fn client_loop(self, local: SocketAddr, sock: Arc<UdpSocket>, shutdown: CancellationToken) {
        loop {
            let batch = self.read_batch(&sock, |core, n, from| {
                let five = FiveTuple { transport: Transport::Udp, server: local, client: from };
                let packet = &core.buf[HEADROOM..HEADROOM + n];
                if let Some(t) = core.server.handle_client_input(Instant::now(), five, packet)
                    && let Some((relay, _)) = core.relays.get(&t.relay)
                {
                    self.send_datagram(relay, t.payload, t.peer);
                }
            });
            let more = tokio::select! {
                more = batch => more,
                _ = shutdown.cancelled() => return,
            };
            if more {
                tokio::task::yield_now().await;
            }
        }
    }

    async fn relay_loop(self, relay_addr: SocketAddr, sock: Arc<UdpSocket>) {
        loop {
            let more = self
                .read_batch(&sock, |core, n, peer| {
                    match core.server.handle_peer_input(Instant::now(), relay_addr, peer, n) {
                        Some(ClientDelivery::ChannelData { to, channel }) => {
                            write_channel_data_header(&mut core.buf[..HEADROOM], channel, n as u16);
                            let mut len = HEADROOM + n;
                            if to.transport != Transport::Udp {
                                // RFC 8656 §12.5: over TCP/TLS a ChannelData message is padded to a multiple of 4 bytes.
                                let padded = (len + 3) & !3;
                                core.buf[len..padded].fill(0);
                                len = padded;
                            }
                            self.send_to_client(core, to, &core.buf[..len]);
                        }
                        Some(ClientDelivery::DataIndication { to }) => {
                            let mut indication = std::mem::take(&mut core.indication);
                            duet_relay::server::encode_data_indication(
                                peer,
                                &core.buf[HEADROOM..HEADROOM + n],
                                &mut indication,
                            );
                            self.send_to_client(core, to, &indication);
                            core.indication = indication;
                        }
                        None => {}
                    }
                })
                .await;
            if more {
                tokio::task::yield_now().await;
            }
        }
    }

    async fn timer_loop(self, shutdown: CancellationToken) {
        loop {
            let now = Instant::now();
            let next =
                self.lock().server.poll_timeout().map_or(now + TIMER_MAX_SLEEP, |t| t.min(now + TIMER_MAX_SLEEP));
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = shutdown.cancelled() => {
                    let mut core = self.lock();
                    for (_, (_, task)) in core.relays.drain() {
                        task.abort();
                    }
                    return;
                }
            }
            let mut core = self.lock();
            core.server.handle_timeout(Instant::now(), unix_now());
            self.drain(&mut core);
        }
    }

    /// Executes the server's queued commands.
    fn drain(&self, core: &mut Core) {
        while let Some(cmd) = core.server.poll_command() {
            match cmd {
                Command::SendToClient { to, message } => self.send_to_client(core, to, &message),
                Command::BindRelay { pending, family, even_port } => {
                    let result = match self.bind_relay(family, even_port) {
                        Ok(sock) => {
                            let addr = sock.local_addr().expect("bound socket has an address");
                            let advertised_ip = match (family, self.inner.sockets.advertised_v4) {
                                (AddressFamily::V4, Some(ip)) => ip,
                                _ => addr.ip(),
                            };
                            let sock = Arc::new(sock);
                            let task = self.inner.rt.spawn(self.clone().relay_loop(addr, sock.clone())).abort_handle();
                            core.relays.insert(addr, (sock, task));
                            Ok((addr, SocketAddr::new(advertised_ip, addr.port())))
                        }
                        Err(e) => {
                            tracing::warn!(target: "relay", error = %e, "no relay port available");
                            Err(())
                        }
                    };
                    core.server.handle_relay_bound(Instant::now(), pending, result);
                }
                Command::FreeRelay { relay } => {
                    if let Some((_, task)) = core.relays.remove(&relay) {
                        task.abort();
                    }
                }
            }
        }
        // Allocation starts and ends, for call reports (queued only with `report_allocations`).
        while let Some(event) = core.server.poll_event() {
            log_allocation(&event);
            let Some(facts) = self.inner.facts.get() else { continue };
            let fact = match event {
                AllocationEvent::Started { booking, participant, transport, .. } => Fact::RelayStarted {
                    booking: booking.into(),
                    participant: participant.into(),
                    transport: transport_label(transport),
                },
                AllocationEvent::Ended { booking, participant, transport, bytes_to_peer, bytes_to_client, .. } => {
                    Fact::RelayEnded {
                        booking: booking.into(),
                        participant: participant.into(),
                        transport: transport_label(transport),
                        bytes_to_peer,
                        bytes_to_client,
                    }
                }
                _ => continue,
            };
            facts.send("relay", fact);
        }
    }

    /// Sends one datagram without waiting: a direct non-blocking `sendto` (tokio's `try_send_to` would refuse
    /// before trying while the reactor has not yet seen a new socket writable, losing the first packet of a fresh
    /// relay). A full socket buffer drops the datagram and counts it as `send_failed`.
    fn send_datagram(&self, sock: &UdpSocket, bytes: &[u8], to: SocketAddr) {
        if socket2::SockRef::from(sock).send_to(bytes, &to.into()).is_err() {
            self.inner.metrics.turn_drops.with_label_values(&["send_failed"]).inc();
        }
    }

    /// Sends one message to a client over its transport: UDP at once, TCP/TLS through the connection's queue (a
    /// full queue drops the frame).
    fn send_to_client(&self, core: &Core, to: FiveTuple, bytes: &[u8]) {
        match to.transport {
            Transport::Udp => {
                if let Some(l) = self.inner.listeners.get(&to.server) {
                    self.send_datagram(l, bytes, to.client);
                }
            }
            Transport::Tcp | Transport::Tls => {
                if let Some(tx) = core.streams.get(&to) {
                    let _ = tx.try_send(bytes.to_vec());
                }
            }
        }
    }

    /// Admits a new TCP/TLS connection from `client` under the caps of [`StreamLimits`], or refuses it (counted in
    /// `duet_turn_stream_refusals_total{reason}`).
    fn admit(&self, client: SocketAddr) -> Option<StreamSlot> {
        let limits = &self.inner.stream_limits;
        let key = IpKey::of(client.ip());
        let mut count = self.inner.stream_count.lock().unwrap_or_else(|p| p.into_inner());
        let refused = if count.per_ip.get(&key).copied().unwrap_or(0) >= limits.per_ip {
            Some("per_ip")
        } else if count.total >= limits.max_connections {
            Some("max_connections")
        } else {
            None
        };
        if let Some(reason) = refused {
            drop(count);
            self.inner.metrics.turn_stream_refusals.with_label_values(&[reason]).inc();
            tracing::debug!(target: "relay", %client, reason, "stream connection refused");
            return None;
        }
        count.total += 1;
        *count.per_ip.entry(key).or_insert(0) += 1;
        self.inner.metrics.turn_stream_connections.set(count.total as i64);
        Some(StreamSlot { inner: self.inner.clone(), key })
    }

    /// Accepts TCP (`tls` = `None`, on the relay runtime) or TLS (on the main runtime) client connections. A TLS
    /// connection is handed to the relay runtime only once its handshake is done.
    async fn accept_loop(self, listener: TcpListener, tls: Option<tls::TlsConfig>, shutdown: CancellationToken) {
        let Ok(local) = listener.local_addr() else { return };
        loop {
            let (stream, client) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(v) => v,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning (mini-redis accept loop).
                        tracing::warn!(target: "relay", error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            // Over a cap: the stream is dropped here, which closes it at once.
            let Some(slot) = self.admit(client) else { continue };
            let _ = stream.set_nodelay(true);
            let shutdown = shutdown.clone();
            match &tls {
                None => {
                    let five = FiveTuple { transport: Transport::Tcp, server: local, client };
                    tokio::spawn(self.clone().stream_conn(stream, five, slot, shutdown));
                }
                Some(tls) => {
                    let limits = &self.inner.stream_limits;
                    let allowed = self.inner.handshake_rate.lock().unwrap_or_else(|p| p.into_inner()).allow(
                        Instant::now(),
                        client.ip(),
                        limits.tls_handshake_rate_per_ip,
                        limits.tls_handshake_burst_per_ip,
                    );
                    if !allowed {
                        self.inner.metrics.turn_stream_refusals.with_label_values(&["handshake_rate"]).inc();
                        tracing::debug!(target: "relay", %client, "TLS handshake rate exceeded, closing");
                        continue;
                    }
                    let five = FiveTuple { transport: Transport::Tls, server: local, client };
                    // On this (the main) runtime: the handshake's CPU never lands on the relay thread.
                    tokio::spawn(self.clone().tls_handshake(stream, tls.acceptor(), five, slot, shutdown));
                }
            }
        }
    }

    /// Runs a TLS handshake (waiting for one of the [`StreamLimits::tls_handshakes`] permits; both within
    /// [`TLS_HANDSHAKE_TIMEOUT`]), then serves the established stream on the relay runtime.
    async fn tls_handshake(
        self,
        stream: TcpStream,
        acceptor: tokio_rustls::TlsAcceptor,
        five: FiveTuple,
        slot: StreamSlot,
        shutdown: CancellationToken,
    ) {
        let client = five.client;
        let handshakes = self.inner.handshakes.clone();
        let handshake = async move {
            let _permit = handshakes.acquire_owned().await;
            acceptor.accept(stream).await
        };
        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(s)) => {
                let rt = self.inner.rt.clone();
                rt.spawn(self.stream_conn(s, five, slot, shutdown));
            }
            Ok(Err(e)) => tracing::debug!(target: "relay", %client, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(target: "relay", %client, "TLS handshake timed out"),
        }
    }

    /// One TCP/TLS client connection (on the relay runtime): splits the byte stream into STUN and ChannelData frames
    /// (RFC 8656 §12.5) for the server, and writes the server's frames for this 5-tuple from a bounded queue. Closed
    /// when no request has authenticated by [`StreamLimits::auth_deadline`], after [`STREAM_IDLE_TIMEOUT`] without
    /// a byte, on a framing error, or at shutdown. The read buffer starts at [`STREAM_BUFFER`] bytes and grows to
    /// the length a frame header announces.
    async fn stream_conn<S>(self, stream: S, five: FiveTuple, slot: StreamSlot, shutdown: CancellationToken)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(STREAM_QUEUE);
        self.lock().streams.insert(five, tx);
        // Every write has STREAM_WRITE_TIMEOUT: a client that stops reading (a full TCP window) cannot hold the
        // writer, and with it the connection and its slot, past the auth deadline or the idle timeout.
        let mut writer = tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                match tokio::time::timeout(STREAM_WRITE_TIMEOUT, wr.write_all(&frame)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) | Err(_) => return,
                }
            }
            let _ = tokio::time::timeout(STREAM_WRITE_TIMEOUT, wr.shutdown()).await;
        });
        let auth_deadline = tokio::time::sleep(self.inner.stream_limits.auth_deadline);
        tokio::pin!(auth_deadline);
        let mut authenticated = false;
        let mut buf = vec![0u8; STREAM_BUFFER];
        let mut filled = 0usize;
        'conn: loop {
            let n = tokio::select! {
                r = tokio::time::timeout(STREAM_IDLE_TIMEOUT, rd.read(&mut buf[filled..])) => match r {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(n)) => n,
                },
                _ = &mut auth_deadline, if !authenticated => {
                    if self.lock().server.is_authenticated(five) {
                        authenticated = true;
                        continue;
                    }
                    self.inner.metrics.turn_stream_auth_timeouts.inc();
                    tracing::debug!(target: "relay", client = %five.client, "no authenticated request in time, closing");
                    break;
                },
                _ = shutdown.cancelled() => break,
            };
            filled += n;
            let mut start = 0;
            loop {
                match stream_frame_len(&buf[start..filled]) {
                    Ok(Some(len)) if filled - start >= len => {
                        let mut core = self.lock();
                        if let Some(t) = core.server.handle_client_input(Instant::now(), five, &buf[start..start + len])
                            && let Some((relay, _)) = core.relays.get(&t.relay)
                        {
                            self.send_datagram(relay, t.payload, t.peer);
                        }
                        self.drain(&mut core);
                        start += len;
                    }
                    Ok(_) => break,
                    Err(_) => {
                        tracing::debug!(target: "relay", client = %five.client, "stream framing error, closing");
                        break 'conn;
                    }
                }
            }
            buf.copy_within(start..filled, 0);
            filled -= start;
            let want = stream_buffer_len(&buf[..filled]);
            if want != buf.len() {
                buf.resize(want, 0);
                buf.shrink_to_fit();
            }
        }
        {
            let mut core = self.lock();
            core.streams.remove(&five);
            core.server.handle_client_closed(Instant::now(), five);
            self.drain(&mut core);
        }
        // The queue's sender is gone (removed above): the writer flushes what is queued and closes, briefly; a writer
        // still stuck is aborted, which drops its half of the stream and closes the connection.
        if tokio::time::timeout(STREAM_CLOSE_FLUSH, &mut writer).await.is_err() {
            writer.abort();
        }
        drop(slot);
    }

    fn bind_relay(&self, family: AddressFamily, even_port: bool) -> std::io::Result<UdpSocket> {
        let s = &self.inner.sockets;
        let ip = match family {
            AddressFamily::V4 => s.bind_v4,
            AddressFamily::V6 => s.bind_v6,
        }
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::Unsupported, "address family not configured"))?;
        let (lo, hi) = (*s.ports.start(), *s.ports.end());
        let mut rng = rand::rng();
        let mut last_err = std::io::Error::new(std::io::ErrorKind::AddrInUse, "relay port range exhausted");
        for _ in 0..BIND_ATTEMPTS {
            let mut port = rng.random_range(lo..=hi);
            if even_port && port % 2 == 1 {
                port = if port < hi { port + 1 } else { port - 1 };
            }
            match std::net::UdpSocket::bind(SocketAddr::new(ip, port)) {
                Ok(sock) => {
                    let s = socket2::SockRef::from(&sock);
                    s.set_recv_buffer_size(RELAY_SOCKET_BUFFER)?;
                    s.set_send_buffer_size(RELAY_SOCKET_BUFFER)?;
                    sock.set_nonblocking(true)?;
                    let _in_relay_runtime = self.inner.rt.enter();
                    return UdpSocket::from_std(sock);
                }
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    /// Copies the core's counters into the Prometheus families (called on every scrape).
    pub fn export_metrics(&self) {
        let mut core = self.lock();
        let m = &self.inner.metrics;
        let Core { server, last, .. } = &mut *core;
        let s = server.stats();
        let mut sync = |c: &prometheus::IntCounter, key: (&'static str, &'static str), value: u64| {
            sync_counter(c, last.entry(key).or_default(), value);
        };
        sync(&m.stun_binding_requests, ("binding", ""), s.binding_requests);
        sync(&m.turn_auth_failures, ("auth_failures", ""), s.auth_failures);
        sync(&m.turn_quota_refusals, ("quota", ""), s.quota_refusals);
        sync(&m.turn_capacity_refusals, ("capacity", ""), s.capacity_refusals);
        sync(&m.turn_peer_denied, ("peer_denied", ""), s.peer_denied);
        for (dir, bytes, packets) in [
            ("to_peer", s.relayed_bytes_to_peer, s.relayed_packets_to_peer),
            ("to_client", s.relayed_bytes_to_client, s.relayed_packets_to_client),
        ] {
            sync(&m.turn_relayed_bytes.with_label_values(&[dir]), ("bytes", dir), bytes);
            sync(&m.turn_relayed_packets.with_label_values(&[dir]), ("packets", dir), packets);
        }
        for (result, v) in [
            ("ok", s.allocate_ok),
            ("auth_failed", s.allocate_auth_failed),
            ("expired", s.allocate_expired),
            ("revoked", s.allocate_revoked),
            ("quota", s.allocate_quota),
            ("capacity", s.allocate_capacity),
            ("bad_request", s.allocate_bad_request),
            ("mismatch", s.allocate_mismatch),
            ("unsupported", s.allocate_unsupported),
        ] {
            sync(&m.turn_allocations.with_label_values(&[result]), ("alloc", result), v);
        }
        for (reason, v) in [
            ("malformed", s.drops_malformed),
            ("no_allocation", s.drops_no_allocation),
            ("no_permission", s.drops_no_permission),
            ("rate_limited", s.drops_rate_limited),
            ("unknown_channel", s.drops_unknown_channel),
            ("bandwidth", s.drops_bandwidth),
        ] {
            sync(&m.turn_drops.with_label_values(&[reason]), ("drops", reason), v);
        }
        for (transport, v) in
            [("udp", s.allocations_active_udp), ("tcp", s.allocations_active_tcp), ("tls", s.allocations_active_tls)]
        {
            m.turn_allocations_active.with_label_values(&[transport]).set(v as i64);
        }
    }
}

/// One `duet::call` log line per allocation start and end (README, "Logs"): booking, participant, transport, and at
/// the end its duration and bytes each way. Never credentials or addresses.
fn log_allocation(event: &AllocationEvent) {
    let node = crate::cluster::node_name();
    match event {
        AllocationEvent::Started { booking, participant, transport, .. } => {
            tracing::info!(target: "duet::call", event = "relay_started", booking = %booking, participant = %participant,
                transport = transport_label(*transport), node, "TURN allocation started");
        }
        AllocationEvent::Ended { booking, participant, transport, bytes_to_peer, bytes_to_client, started, ended } => {
            let duration_ms = ended.saturating_duration_since(*started).as_millis() as u64;
            tracing::info!(target: "duet::call", event = "relay_ended", booking = %booking, participant = %participant,
                transport = transport_label(*transport), duration_ms, bytes_to_peer, bytes_to_client, node,
                "TURN allocation ended");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use rustls::server::{ClientHello, ResolvesServerCert};
    use rustls::sign::CertifiedKey;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn stream_buffer_grows_to_the_announced_frame_and_back() {
        assert_eq!(stream_buffer_len(&[]), STREAM_BUFFER);
        assert_eq!(stream_buffer_len(&[0x00, 0x01]), STREAM_BUFFER, "length not known yet");
        assert_eq!(stream_buffer_len(&[0x00, 0x01, 0x00, 0x50]), STREAM_BUFFER, "a short STUN request");
        assert_eq!(stream_buffer_len(&[0x00, 0x16, 0xEA, 0x60]), 20 + 60_000, "a long Send indication");
        assert_eq!(stream_buffer_len(&[0x40, 0x00, 0xFF, 0xFF]), 4 + 65_536, "the longest ChannelData, padded");
        assert_eq!(stream_buffer_len(&[0xFF; 3000]), 3000, "never below what is buffered");
    }

    /// Serves one certificate and records the name of every thread that ran a handshake's ClientHello.
    #[derive(Debug)]
    struct RecordingResolver {
        key: Arc<CertifiedKey>,
        threads: Mutex<Vec<String>>,
    }

    impl ResolvesServerCert for RecordingResolver {
        fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            let name = std::thread::current().name().unwrap_or("unnamed").to_string();
            self.threads.lock().unwrap().push(name);
            Some(self.key.clone())
        }
    }

    /// Issue 7 item 10: TLS handshakes run on the daemon's runtime (the test's multi-thread runtime here), never on
    /// the relay's `duet-relay` thread, and the established stream is then served by the relay (a Binding over
    /// TURNS is answered).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls_handshakes_run_off_the_relay_thread() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert_der = CertificateDer::from(cert.cert.der().to_vec());
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let signing = provider.key_provider.load_private_key(key_der).unwrap();
        let resolver = Arc::new(RecordingResolver {
            key: Arc::new(CertifiedKey::new(vec![cert_der.clone()], signing)),
            threads: Mutex::new(Vec::new()),
        });
        let server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        let tls = tls::TlsConfig::from_server_config(Arc::new(server_tls));
        let listen = Listeners {
            udp: vec!["127.0.0.1:0".parse().unwrap()],
            tls: vec!["127.0.0.1:0".parse().unwrap()],
            ..Listeners::default()
        };
        let sockets = RelaySockets {
            bind_v4: Some("127.0.0.1".parse().unwrap()),
            bind_v6: None,
            advertised_v4: None,
            ports: 49152..=65535,
            public_ips: Vec::new(),
        };
        let config = ServerConfig::new("duet", vec![b"secret".to_vec()], [7; 32]);
        let shutdown = CancellationToken::new();
        let relay =
            RelayHandle::start(config, &listen, Some(tls), sockets, Metrics::new(), shutdown.clone()).await.unwrap();
        let server = relay.tls_addrs()[0];

        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert_der).unwrap();
        let client_tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls));
        for i in 0..8u8 {
            let tcp = TcpStream::connect(server).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let mut stream = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
                .await
                .expect("handshake in time")
                .expect("handshake");
            // A Binding request (RFC 8489 §5: type 0x0001, length 0, magic cookie, transaction ID).
            let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
            req.extend([i; 12]);
            stream.write_all(&req).await.unwrap();
            let mut head = [0u8; 20];
            tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut head))
                .await
                .expect("Binding response in time")
                .expect("Binding response");
            assert_eq!((head[0], head[1]), (0x01, 0x01), "Binding success response over TURNS");
            assert_eq!(head[8..20], [i; 12], "the response's transaction ID");
        }
        shutdown.cancel();
        let threads = resolver.threads.lock().unwrap().clone();
        assert_eq!(threads.len(), 8, "one ClientHello per connection: {threads:?}");
        assert!(
            threads.iter().all(|t| t != "duet-relay"),
            "TLS handshakes ran on the relay's data-path thread: {threads:?}"
        );
    }
}
