//! UDP driver of the sans-IO [`duet_relay::Server`].
//!
//! One task per client listener and one per relay socket receive datagrams and hand them to the server under a
//! short lock; what the server returns is sent at once with non-blocking `try_send_to` (a full socket buffer drops
//! the datagram and counts it, as a router would). A timer task drives `handle_timeout` (allocation, permission and
//! channel expiry, and the teardown of a booking's allocations at its `hard_end_at`). The relay socket buffer keeps
//! 4 bytes of headroom so the ChannelData header is written in place: no copy and no allocation per relayed packet.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use duet_relay::channel::write_channel_data_header;
use duet_relay::server::{
    AddressFamily, ClientDelivery, Command, FiveTuple, Server, ServerConfig, Transport,
};
use rand::Rng;
use tokio::net::UdpSocket;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, sync_counter};

/// Largest UDP payload we receive (the IPv4 maximum); relayed application data is far smaller in practice.
const MAX_DATAGRAM: usize = 65_535;
/// ChannelData header written in front of a relayed payload (RFC 8656 §12.4).
const HEADROOM: usize = 4;
/// Upper bound of the timer's sleep: the revocation and expiry checks run at least this often.
const TIMER_MAX_SLEEP: Duration = Duration::from_secs(1);
/// Random ports tried before an Allocate gets 508 Insufficient Capacity.
const BIND_ATTEMPTS: usize = 64;

/// Where and how relay sockets are bound.
#[derive(Debug, Clone)]
pub struct RelaySockets {
    /// IP the IPv4 relay sockets bind to.
    pub bind_ip: IpAddr,
    /// IP put in XOR-RELAYED-ADDRESS (1:1 NAT); `None` = `bind_ip`.
    pub advertised_ip: Option<IpAddr>,
    /// Port range.
    pub ports: RangeInclusive<u16>,
}

struct Core {
    server: Server,
    relays: HashMap<SocketAddr, (Arc<UdpSocket>, AbortHandle)>,
    last: Exported,
}

/// The core counter values last copied into Prometheus, keyed by metric and label.
type Exported = HashMap<(&'static str, &'static str), u64>;

struct Inner {
    core: Mutex<Core>,
    listeners: HashMap<SocketAddr, Arc<UdpSocket>>,
    sockets: RelaySockets,
    metrics: Metrics,
}

/// Control handle of the relay; cheap to clone.
#[derive(Clone)]
pub struct RelayHandle {
    inner: Arc<Inner>,
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

impl RelayHandle {
    /// Binds the client listeners and starts the receive and timer tasks; they stop with `shutdown`.
    pub async fn start(
        config: ServerConfig,
        listen: &[SocketAddr],
        sockets: RelaySockets,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> std::io::Result<RelayHandle> {
        let mut listeners = HashMap::new();
        for addr in listen {
            let s = UdpSocket::bind(addr).await?;
            listeners.insert(s.local_addr()?, Arc::new(s));
        }
        let server = Server::new(config, Instant::now(), unix_now());
        let inner = Arc::new(Inner {
            core: Mutex::new(Core {
                server,
                relays: HashMap::new(),
                last: Exported::default(),
            }),
            listeners,
            sockets,
            metrics,
        });
        let handle = RelayHandle { inner };
        for (addr, sock) in &handle.inner.listeners {
            tokio::spawn(
                handle
                    .clone()
                    .client_loop(*addr, sock.clone(), shutdown.clone()),
            );
        }
        tokio::spawn(handle.clone().timer_loop(shutdown));
        Ok(handle)
    }

    /// The bound client listener addresses.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.inner.listeners.keys().copied().collect()
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock would be a bug in the core; recover the state rather than stop relaying.
        self.inner.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Revokes a cancelled booking's credentials until `until_unix` and tears down its allocations now.
    pub fn revoke_booking(&self, booking: &str, until_unix: i64) {
        let mut core = self.lock();
        let n = core
            .server
            .revoke_booking(Instant::now(), booking, until_unix.max(0) as u64);
        self.drain(&mut core);
        tracing::info!(target: "relay", booking, allocations = n, "booking revoked");
    }

    /// Replaces the accepted TURN secrets (rotation).
    pub fn set_auth_secrets(&self, secrets: Vec<Vec<u8>>) {
        self.lock().server.set_auth_secrets(secrets);
    }

    async fn client_loop(
        self,
        local: SocketAddr,
        sock: Arc<UdpSocket>,
        shutdown: CancellationToken,
    ) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let (n, from) = tokio::select! {
                r = sock.recv_from(&mut buf) => match r {
                    Ok(v) => v,
                    Err(e) => {
                        // ICMP errors surface here on Linux (ECONNREFUSED of an earlier send); keep serving.
                        tracing::debug!(target: "relay", error = %e, "recv on client listener");
                        continue;
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            let five = FiveTuple {
                transport: Transport::Udp,
                server: local,
                client: from,
            };
            let mut core = self.lock();
            if let Some(t) = core
                .server
                .handle_client_input(Instant::now(), five, &buf[..n])
            {
                if let Some((relay, _)) = core.relays.get(&t.relay) {
                    let _ = relay.try_send_to(t.payload, t.peer);
                }
            }
            self.drain(&mut core);
        }
    }

    async fn relay_loop(self, relay_addr: SocketAddr, sock: Arc<UdpSocket>) {
        let mut buf = vec![0u8; HEADROOM + MAX_DATAGRAM];
        let mut indication = Vec::with_capacity(2048);
        loop {
            let (n, peer) = match sock.recv_from(&mut buf[HEADROOM..]).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!(target: "relay", error = %e, "recv on relay socket");
                    continue;
                }
            };
            let mut core = self.lock();
            match core
                .server
                .handle_peer_input(Instant::now(), relay_addr, peer, n)
            {
                Some(ClientDelivery::ChannelData { to, channel }) => {
                    write_channel_data_header(&mut buf[..HEADROOM], channel, n as u16);
                    if let Some(l) = self.inner.listeners.get(&to.server) {
                        let _ = l.try_send_to(&buf[..HEADROOM + n], to.client);
                    }
                }
                Some(ClientDelivery::DataIndication { to }) => {
                    duet_relay::server::encode_data_indication(
                        peer,
                        &buf[HEADROOM..HEADROOM + n],
                        &mut indication,
                    );
                    if let Some(l) = self.inner.listeners.get(&to.server) {
                        let _ = l.try_send_to(&indication, to.client);
                    }
                }
                _ => {}
            }
            self.drain(&mut core);
        }
    }

    async fn timer_loop(self, shutdown: CancellationToken) {
        loop {
            let now = Instant::now();
            let next = self
                .lock()
                .server
                .poll_timeout()
                .map_or(now + TIMER_MAX_SLEEP, |t| t.min(now + TIMER_MAX_SLEEP));
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
                Command::SendToClient { to, message } => {
                    if let Some(l) = self.inner.listeners.get(&to.server) {
                        let _ = l.try_send_to(&message, to.client);
                    }
                }
                Command::BindRelay {
                    pending,
                    family,
                    even_port,
                } => {
                    let result = match self.bind_relay(family, even_port) {
                        Ok(sock) => {
                            let addr = sock.local_addr().expect("bound socket has an address");
                            let advertised = SocketAddr::new(
                                self.inner.sockets.advertised_ip.unwrap_or(addr.ip()),
                                addr.port(),
                            );
                            let sock = Arc::new(sock);
                            let task = tokio::spawn(self.clone().relay_loop(addr, sock.clone()))
                                .abort_handle();
                            core.relays.insert(addr, (sock, task));
                            Ok((addr, advertised))
                        }
                        Err(e) => {
                            tracing::warn!(target: "relay", error = %e, "no relay port available");
                            Err(())
                        }
                    };
                    core.server
                        .handle_relay_bound(Instant::now(), pending, result);
                }
                Command::FreeRelay { relay } => {
                    if let Some((_, task)) = core.relays.remove(&relay) {
                        task.abort();
                    }
                }
            }
        }
    }

    fn bind_relay(&self, family: AddressFamily, even_port: bool) -> std::io::Result<UdpSocket> {
        let s = &self.inner.sockets;
        let ip = match family {
            AddressFamily::V4 if s.bind_ip.is_ipv4() => s.bind_ip,
            AddressFamily::V6 if s.bind_ip.is_ipv6() => s.bind_ip,
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "address family not configured",
                ));
            }
        };
        let (lo, hi) = (*s.ports.start(), *s.ports.end());
        let mut rng = rand::rng();
        let mut last_err =
            std::io::Error::new(std::io::ErrorKind::AddrInUse, "relay port range exhausted");
        for _ in 0..BIND_ATTEMPTS {
            let mut port = rng.random_range(lo..=hi);
            if even_port && port % 2 == 1 {
                port = if port < hi { port + 1 } else { port - 1 };
            }
            match std::net::UdpSocket::bind(SocketAddr::new(ip, port)) {
                Ok(sock) => {
                    sock.set_nonblocking(true)?;
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
        let mut sync =
            |c: &prometheus::IntCounter, key: (&'static str, &'static str), value: u64| {
                sync_counter(c, last.entry(key).or_default(), value);
            };
        sync(
            &m.stun_binding_requests,
            ("binding", ""),
            s.binding_requests,
        );
        sync(
            &m.turn_auth_failures,
            ("auth_failures", ""),
            s.auth_failures,
        );
        sync(
            &m.turn_quota_refusals,
            ("quota", ""),
            s.quota_refusals + s.capacity_refusals,
        );
        for (dir, bytes, packets) in [
            (
                "to_peer",
                s.relayed_bytes_to_peer,
                s.relayed_packets_to_peer,
            ),
            (
                "to_client",
                s.relayed_bytes_to_client,
                s.relayed_packets_to_client,
            ),
        ] {
            sync(
                &m.turn_relayed_bytes.with_label_values(&[dir]),
                ("bytes", dir),
                bytes,
            );
            sync(
                &m.turn_relayed_packets.with_label_values(&[dir]),
                ("packets", dir),
                packets,
            );
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
            sync(
                &m.turn_allocations.with_label_values(&[result]),
                ("alloc", result),
                v,
            );
        }
        for (reason, v) in [
            ("malformed", s.drops_malformed),
            ("no_allocation", s.drops_no_allocation),
            ("no_permission", s.drops_no_permission),
            ("peer_denied", s.drops_peer_denied),
            ("rate_limited", s.drops_rate_limited),
            ("unknown_channel", s.drops_unknown_channel),
            (
                "unauthenticated_reply_suppressed",
                s.unauthenticated_replies_suppressed,
            ),
        ] {
            sync(
                &m.turn_drops.with_label_values(&[reason]),
                ("drops", reason),
                v,
            );
        }
        for (transport, v) in [
            ("udp", s.allocations_active_udp),
            ("tcp", s.allocations_active_tcp),
            ("tls", s.allocations_active_tls),
        ] {
            m.turn_allocations_active
                .with_label_values(&[transport])
                .set(v as i64);
        }
    }
}
