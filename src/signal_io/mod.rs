//! WebSocket driver of the sans-IO signaling cores: [`duet_signaling::Hub`] (native v1 and Virtual Y) and
//! [`duet_signaling::peerjs::PeerjsServer`] (PeerJS). One task owns both state machines; each socket has a task that
//! forwards frames in and writes the outputs from a bounded queue. A slow reader whose queue fills is closed (1008,
//! "queue full") without blocking anyone else.
//!
//! Everything is bounded: socket tasks feed the cores through a bounded channel (a flood waits on its own socket's
//! TCP window instead of growing a queue), text frames are handed over without a copy, client pings count against the
//! message rate like frames, and every write to a socket has `signaling.send_timeout` (a client that stops reading is
//! closed instead of pinning its task). The periodic pings and their pongs are reported to the hub, which uses them
//! to decide whether a Virtual Y slot's occupant is live.
//!
//! Admission (token, booking and window checks, `Origin`, per-client limits) happens before the upgrade, in
//! [`native`], [`vy`] and [`peerjs`]; the cores trust what they are handed.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use duet_signaling::peerjs::{PeerjsConfig as CorePeerjsConfig, PeerjsError, PeerjsServer, Registration};
use duet_signaling::{
    Admission, CloseReason, ConnectionId, Hub, HubConfig, HubEvent, Mode, Output, VyAdmission, WindowUpdate, close_code,
};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::booking::calls::{Fact, FactSender, unix_ms};
use crate::cluster::Cluster;
use crate::config::SignalingConfig;
use crate::metrics::Metrics;

pub mod bus;
pub mod guard;
pub mod native;
pub mod peerjs;
pub mod vy;

pub use native::upgrade;

/// Frames queued per connection before it counts as a slow reader and is closed.
const QUEUE_PER_CONNECTION: usize = 64;
/// Inputs from socket tasks waiting for the signaling task. When it is full, socket tasks wait before reading more
/// from their sockets (TCP backpressure on the sender) instead of growing memory.
const INPUT_QUEUE: usize = 4096;
/// Close code for a connection whose outgoing queue overflowed (RFC 6455 §7.4.1 policy violation).
const CLOSE_QUEUE_FULL: u16 = 1008;

enum Outgoing {
    Text(String),
    Close(u16, Cow<'static, str>),
    /// A liveness probe asked for by the hub ([`Output::Ping`]).
    Ping,
}

/// Where the outputs for a connection go.
enum Sink {
    /// A socket of this node: its task's queue.
    Local(mpsc::Sender<Outgoing>),
    /// A socket of another node (cluster mode): that node's bus channel, by node number.
    Remote(u32),
}

/// A connection the cores know.
struct ConnEntry {
    mode: Mode,
    sink: Sink,
    /// The room key whose home lease this node holds for it (cluster mode only).
    room: Option<Arc<str>>,
}

/// How often a node tells every other live node which sockets it proxies to it ([`bus`], hold list).
const HOLD_EVERY: Duration = Duration::from_secs(5);

/// Close code for sockets this node lets go so that their clients reconnect to another node (IANA WebSocket registry:
/// 1012 "Service Restart"; duet.js and the join page reconnect on it): their room's home is another node, or their
/// home node died.
pub const CLOSE_MOVED: u16 = 1012;

/// What a new socket is admitted as.
pub enum Admit {
    /// Native v1.
    Native(Admission),
    /// Virtual Y.
    Vy(VyAdmission),
    /// PeerJS registration.
    Peerjs(Registration),
    /// PeerJS socket refused after the upgrade (upstream sends `ERROR` then closes).
    PeerjsReject(PeerjsError),
}

impl Admit {
    fn mode(&self) -> Mode {
        match self {
            Admit::Native(_) => Mode::Native,
            Admit::Vy(_) => Mode::Vy,
            Admit::Peerjs(_) | Admit::PeerjsReject(_) => Mode::Peerjs,
        }
    }

    /// The key of the room this socket joins, by which cluster mode finds the room's home: `n:<booking>` (native),
    /// `v:<room>` (Virtual Y), `p:<namespace>` (PeerJS). `None` for a refusal, which never leaves its node.
    fn room_key(&self) -> Option<String> {
        match self {
            Admit::Native(a) => Some(format!("n:{}", a.booking)),
            Admit::Vy(a) => Some(format!("v:{}", a.room)),
            Admit::Peerjs(r) => Some(format!("p:{}", r.namespace)),
            Admit::PeerjsReject(_) => None,
        }
    }
}

/// What socket tasks tell the signaling task (bounded channel).
enum Input {
    Connect {
        conn: ConnectionId,
        admit: Admit,
        out: Sink,
    },
    Text {
        conn: ConnectionId,
        text: Utf8Bytes,
    },
    Binary {
        conn: ConnectionId,
        len: usize,
    },
    /// The client sent a WebSocket ping (rate-limited like a frame).
    Ping {
        conn: ConnectionId,
    },
    /// The client answered a ping.
    Pong {
        conn: ConnectionId,
    },
    /// The socket task sent a ping.
    PingSent {
        conn: ConnectionId,
    },
    Disconnect {
        conn: ConnectionId,
        timed_out: bool,
    },
    /// Cluster mode: the sockets node `node` proxies to this node's rooms now ([`bus::ToHome::Hold`]).
    Hold {
        node: u32,
        conns: HashSet<ConnectionId>,
    },
}

/// What the rest of the daemon asks of the signaling task (rare, from authenticated callers: unbounded).
enum Control {
    CloseBooking {
        booking: String,
        reason: CloseReason,
    },
    CloseParticipant {
        booking: String,
        participant: String,
        code: u16,
        reason: &'static str,
    },
    CloseAll,
    UpdateWindow {
        booking: String,
        update: WindowUpdate,
    },
    PeerjsIds {
        namespace: String,
        reply: oneshot::Sender<Vec<String>>,
    },
    /// Cluster mode: the live nodes. Remote sockets of any other node are gone (their node died).
    NodesAlive(Arc<HashSet<u32>>),
    /// Cluster mode: another node holds these rooms' home leases (after a Redis outage): their sockets here go (1012).
    LeasesLost(Vec<String>),
    /// Cluster mode: a proxied socket came or went; the connection gauges (which a drain waits on) are recomputed.
    Recount,
}

/// A socket of this node whose room is homed on another node (cluster mode).
struct Proxy {
    home: u32,
    out: mpsc::Sender<Outgoing>,
}

/// Sockets of this node proxied to another node's room, by connection id.
type Proxies = Arc<Mutex<HashMap<ConnectionId, Proxy>>>;

/// Control handle of the signaling task; cheap to clone.
#[derive(Clone)]
pub struct HubHandle {
    tx: mpsc::Sender<Input>,
    ctl: mpsc::UnboundedSender<Control>,
    next_id: Arc<AtomicU64>,
    /// The signaling settings.
    pub config: Arc<SignalingConfig>,
    /// Admitted sockets per client (`signaling.max_connections_per_ip`).
    pub guard: guard::ConnectionGuard,
    /// Upgrades being verified and refused sockets closing, per client (`signaling.max_pending_upgrades_per_ip`).
    pub pending: guard::ConnectionGuard,
    /// Refused Virtual Y upgrades per client (`signaling.vy.refused_upgrades_per_minute`).
    pub refusals: guard::RefusalLimiter,
    metrics: Metrics,
    /// The cluster link (`None`: a single node).
    cluster: Option<Cluster>,
    /// Sockets of this node whose room is homed on another node.
    proxies: Proxies,
    /// Proxied sockets per mode (for `duet_signal_connections`), indexed like [`Mode::ALL`].
    proxied: Arc<[AtomicI64; 3]>,
}

impl HubHandle {
    /// Starts the signaling task. It stops when `shutdown` is cancelled (closing every socket with 1001). Joins,
    /// leaves, `ready` and room closes of native and Virtual Y rooms go to `facts` (call reports) when given.
    ///
    /// In cluster mode (`cluster` with its bus receiver), connection ids carry this node's number, sockets whose room
    /// is homed on another node are proxied there, and remote sockets of rooms homed here are served like local ones
    /// ([`bus`]).
    pub fn spawn(
        config: SignalingConfig,
        metrics: Metrics,
        facts: Option<FactSender>,
        cluster: Option<(Cluster, mpsc::Receiver<Vec<u8>>)>,
        shutdown: CancellationToken,
    ) -> HubHandle {
        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        let hub = Hub::new(HubConfig {
            max_message_bytes: config.max_message_bytes,
            messages_per_second: config.messages_per_second,
            ping_interval: config.ping_interval,
            pong_timeout: config.pong_timeout,
            max_rooms: config.max_rooms,
            ..HubConfig::default()
        });
        let peerjs = PeerjsServer::new(CorePeerjsConfig {
            expire_timeout: config.peerjs.expire_timeout,
            alive_timeout: config.peerjs.alive_timeout,
            concurrent_limit: config.peerjs.concurrent_limit,
            participant_limit: config.peerjs.ids_per_participant,
            // Both participants at their own limit fit: one can never lock the other out.
            scoped_limit: 2 * config.peerjs.ids_per_participant,
            max_message_bytes: config.max_message_bytes,
            messages_per_second: config.messages_per_second,
            ..CorePeerjsConfig::default()
        });
        let (cluster, bus_rx) = match cluster {
            Some((c, rx)) => (Some(c), Some(rx)),
            None => (None, None),
        };
        let proxies: Proxies = Default::default();
        let proxied: Arc<[AtomicI64; 3]> = Default::default();
        let cores = Cores {
            hub,
            peerjs,
            conns: HashMap::new(),
            facts,
            cluster: cluster.clone(),
            homed: HashMap::new(),
            remote: [0; 3],
            proxied: proxied.clone(),
            ctl: ctl.clone(),
            missing: HashSet::new(),
            joined_at: HashMap::new(),
        };
        tokio::spawn(run(cores, rx, ctl_rx, metrics.clone(), shutdown.clone()));
        if let (Some(c), Some(bus_rx)) = (&cluster, bus_rx) {
            tokio::spawn(bus_inbound(c.clone(), bus_rx, tx.clone(), proxies.clone(), metrics.clone()));
            tokio::spawn(watch_nodes(c.clone(), ctl.clone(), proxies.clone(), shutdown));
        }
        let first_id = cluster.as_ref().map_or(0, |c| u64::from(c.node()) << bus::NODE_SHIFT);
        HubHandle {
            cluster,
            proxies,
            proxied,
            tx,
            ctl,
            next_id: Arc::new(AtomicU64::new(first_id)),
            guard: guard::ConnectionGuard::new(config.max_connections_per_ip),
            pending: guard::ConnectionGuard::new(config.max_pending_upgrades_per_ip),
            refusals: guard::RefusalLimiter::new(config.vy.refused_upgrades_per_minute),
            config: Arc::new(config),
            metrics,
        }
    }

    /// Counts one refused upgrade in `duet_signal_upgrades_refused_total{mode,reason}`.
    pub fn count_refused(&self, mode: Mode, reason: &'static str) {
        self.metrics.signal_refused.with_label_values(&[mode.as_str(), reason]).inc();
    }

    /// Closes the rooms of a booking in every mode with `reason`'s code (4003 after a reschedule out of the current
    /// window).
    pub fn close_booking(&self, booking: &str, reason: CloseReason) {
        let _ = self.ctl.send(Control::CloseBooking { booking: booking.to_string(), reason });
    }

    /// Closes the rooms of a cancelled booking (4004) in every mode.
    pub fn cancel_booking(&self, booking: &str) {
        let _ = self.ctl.send(Control::CloseBooking { booking: booking.to_string(), reason: CloseReason::Cancelled });
    }

    /// Closes the native socket of one participant of `booking` with `code` (4001 after a link rotation, 4004 after
    /// a revocation); the partner stays. PeerJS registrations of the participant are not closed (they end with the
    /// booking); their next registration is refused, as the token no longer verifies.
    pub fn close_participant(&self, booking: &str, participant: &str, code: u16, reason: &'static str) {
        let _ = self.ctl.send(Control::CloseParticipant {
            booking: booking.to_string(),
            participant: participant.to_string(),
            code,
            reason,
        });
    }

    /// A rescheduled or extended booking: its rooms (native, vy, PeerJS scope) keep their sockets, take the new hard
    /// end, and native sockets get the `window` `changed` frame ([`duet_signaling::Hub::update_window`]).
    pub fn update_window(&self, booking: &str, update: WindowUpdate) {
        let _ = self.ctl.send(Control::UpdateWindow { booking: booking.to_string(), update });
    }

    /// Closes every socket (1001).
    pub fn close_all(&self) {
        let _ = self.ctl.send(Control::CloseAll);
    }

    /// The ids registered in a PeerJS namespace (for `GET {path}{key}/peers`).
    pub async fn peerjs_ids(&self, namespace: String) -> Vec<String> {
        let (reply, rx) = oneshot::channel();
        if self.ctl.send(Control::PeerjsIds { namespace, reply }).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

struct Cores {
    hub: Hub,
    peerjs: PeerjsServer,
    conns: HashMap<ConnectionId, ConnEntry>,
    /// The call-facts recorder's queue (never waited on).
    facts: Option<FactSender>,
    /// Cluster mode: the link, for outputs to remote sockets and the room leases.
    cluster: Option<Cluster>,
    /// Cluster mode: rooms homed here, with how many of the cores' connections (local or remote) are in each.
    homed: HashMap<Arc<str>, usize>,
    /// Remote connections per mode, indexed like [`Mode::ALL`] (they are another node's sockets).
    remote: [i64; 3],
    /// Proxied sockets of this node per mode (they are this node's sockets, in another node's cores).
    proxied: Arc<[AtomicI64; 3]>,
    /// The control queue, for answers of spawned lease renewals.
    ctl: mpsc::UnboundedSender<Control>,
    /// Remote connections missing from their node's last hold list (they leave at the second miss).
    missing: HashSet<ConnectionId>,
    /// When each occupied slot's participant joined (for `in_room_ms` in the `left` log line).
    joined_at: HashMap<(String, duet_signaling::Role), Instant>,
}

fn mode_index(mode: Mode) -> usize {
    match mode {
        Mode::Native => 0,
        Mode::Vy => 1,
        Mode::Peerjs => 2,
    }
}

async fn run(
    mut c: Cores,
    mut rx: mpsc::Receiver<Input>,
    mut ctl: mpsc::UnboundedReceiver<Control>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut leases = tokio::time::interval(crate::cluster::LEASE_REFRESH_EVERY);
    loop {
        let deadline = match (c.hub.poll_timeout(), c.peerjs.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            input = rx.recv() => match input {
                None => break,
                Some(input) => c.handle(Instant::now(), input, &metrics),
            },
            control = ctl.recv() => match control {
                None => break,
                Some(control) => c.control(Instant::now(), control),
            },
            _ = sleep => {
                let now = Instant::now();
                c.hub.handle_timeout(now);
                c.peerjs.handle_timeout(now);
            }
            _ = leases.tick(), if c.cluster.is_some() => c.renew_leases(),
            _ = shutdown.cancelled() => {
                let now = Instant::now();
                c.hub.close_all(now, CloseReason::Shutdown);
                c.peerjs.close_all(now, CloseReason::Shutdown);
                c.drain(&metrics);
                break;
            }
        }
        c.drain(&metrics);
    }
}

impl Cores {
    /// Registers a connection (and, in cluster mode, counts it in its room's lease).
    fn add(&mut self, conn: ConnectionId, mode: Mode, sink: Sink, room: Option<String>) {
        if matches!(sink, Sink::Remote(_)) {
            self.remote[mode_index(mode)] += 1;
        }
        let room: Option<Arc<str>> = match (&self.cluster, room) {
            (Some(_), Some(r)) => {
                let key: Arc<str> =
                    self.homed.get_key_value(r.as_str()).map_or_else(|| Arc::from(r.as_str()), |(k, _)| k.clone());
                *self.homed.entry(key.clone()).or_default() += 1;
                Some(key)
            }
            _ => None,
        };
        self.conns.insert(conn, ConnEntry { mode, sink, room });
    }

    /// Forgets a connection (and its share of its room's lease).
    fn forget(&mut self, conn: ConnectionId) -> Option<ConnEntry> {
        let entry = self.conns.remove(&conn)?;
        if matches!(entry.sink, Sink::Remote(_)) {
            self.remote[mode_index(entry.mode)] -= 1;
        }
        if let Some(room) = &entry.room
            && let Some(n) = self.homed.get_mut(room)
        {
            *n -= 1;
            if *n == 0 {
                self.homed.remove(room);
            }
        }
        Some(entry)
    }

    /// Tells a core that a connection is gone.
    fn gone(&mut self, now: Instant, conn: ConnectionId, mode: Mode, timed_out: bool) {
        match mode {
            Mode::Peerjs => self.peerjs.handle_disconnect(now, conn),
            _ if timed_out => self.hub.handle_liveness_timeout(now, conn),
            _ => self.hub.handle_disconnect(now, conn),
        }
    }

    /// Sends `out` to a connection's socket, wherever it is. `false` when a local queue is full (a slow reader).
    fn deliver(cluster: Option<&Cluster>, conn: ConnectionId, sink: &Sink, out: Outgoing) -> Result<(), Outgoing> {
        match sink {
            Sink::Local(tx) => tx.try_send(out).map_err(|e| e.into_inner()),
            Sink::Remote(node) => {
                if let Some(c) = cluster {
                    let msg = match out {
                        Outgoing::Text(t) => bus::ToProxy::Text(t),
                        Outgoing::Close(code, reason) => bus::ToProxy::Close(code, reason.into_owned()),
                        Outgoing::Ping => bus::ToProxy::Ping,
                    };
                    c.publish_bus(*node, |buf| bus::encode_proxy(buf, conn, &msg));
                }
                Ok(())
            }
        }
    }

    /// One `duet::call` log line per room lifecycle event (README, "Logs"): who joined or left which booking's room,
    /// in which role, how long they were in it, why they left; sessions formed; rooms closed. Never tokens or SDP.
    fn log_event(&mut self, e: &HubEvent) {
        let node = crate::cluster::node_name();
        match e {
            HubEvent::Joined { booking, participant, role } => {
                self.joined_at.insert((booking.clone(), *role), Instant::now());
                tracing::info!(target: "duet::call", event = "joined", booking = %booking, participant = %participant,
                    role = role.as_str(), node, "participant joined the room");
            }
            HubEvent::Left { booking, participant, role, reason } => {
                let in_room_ms =
                    self.joined_at.remove(&(booking.clone(), *role)).map_or(0, |t| t.elapsed().as_millis() as u64);
                tracing::info!(target: "duet::call", event = "left", booking = %booking, participant = %participant,
                    role = role.as_str(), reason = reason.as_str(), in_room_ms, node, "participant left the room");
            }
            HubEvent::Ready { booking, session } => {
                tracing::info!(target: "duet::call", event = "ready", booking = %booking, session, node,
                    "both participants are in the room");
            }
            HubEvent::RoomClosed { booking, reason } => {
                self.joined_at.retain(|(b, _), _| b != booking);
                tracing::info!(target: "duet::call", event = "room_closed", booking = %booking,
                    reason = reason.as_str(), node, "room closed");
            }
            _ => {}
        }
    }

    /// Renews the home leases of the rooms homed here, in a task of its own; rooms another node holds come back as
    /// [`Control::LeasesLost`].
    fn renew_leases(&self) {
        let Some(cluster) = self.cluster.clone() else { return };
        if self.homed.is_empty() || !cluster.is_up() {
            return;
        }
        let rooms: Vec<String> = self.homed.keys().map(|k| k.to_string()).collect();
        let ctl = self.ctl.clone();
        tokio::spawn(async move {
            let lost = cluster.refresh_leases(&rooms).await;
            if !lost.is_empty() {
                let _ = ctl.send(Control::LeasesLost(lost));
            }
        });
    }

    fn handle(&mut self, now: Instant, input: Input, metrics: &Metrics) {
        match input {
            Input::Connect { conn, admit, out } => {
                let room = admit.room_key();
                self.add(conn, admit.mode(), out, room);
                match admit {
                    Admit::Native(a) => self.hub.handle_connect(now, conn, a),
                    Admit::Vy(a) => self.hub.handle_connect_vy(now, conn, a),
                    Admit::Peerjs(r) => self.peerjs.handle_connect(now, conn, r),
                    Admit::PeerjsReject(e) => self.peerjs.reject(conn, e),
                }
            }
            Input::Text { conn, text } => {
                let Some(entry) = self.conns.get(&conn) else { return };
                metrics.signal_messages.with_label_values(&["in", message_type(entry.mode, &text)]).inc();
                match entry.mode {
                    Mode::Peerjs => self.peerjs.handle_text(now, conn, &text),
                    _ => self.hub.handle_text(now, conn, &text),
                }
            }
            Input::Ping { conn } => match self.conns.get(&conn).map(|e| e.mode) {
                Some(Mode::Peerjs) => self.peerjs.handle_ping(now, conn),
                Some(_) => self.hub.handle_ping(now, conn),
                None => {}
            },
            Input::Pong { conn } => self.hub.handle_pong(now, conn),
            Input::PingSent { conn } => self.hub.handle_ping_sent(now, conn),
            Input::Binary { conn, len } => {
                let Some(entry) = self.conns.get(&conn) else { return };
                metrics.signal_messages.with_label_values(&["in", "binary"]).inc();
                match entry.mode {
                    Mode::Peerjs => self.peerjs.handle_binary(now, conn, len),
                    _ => self.hub.handle_binary(now, conn, len),
                }
            }
            Input::Disconnect { conn, timed_out } => {
                if let Some(entry) = self.forget(conn) {
                    self.gone(now, conn, entry.mode, timed_out);
                }
            }
            Input::Hold { node, conns } => {
                let absent: Vec<ConnectionId> = self
                    .conns
                    .iter()
                    .filter(|(c, e)| matches!(e.sink, Sink::Remote(n) if n == node) && !conns.contains(c))
                    .map(|(c, _)| *c)
                    .collect();
                let mut gone = Vec::new();
                let mut missing = HashSet::new();
                for conn in absent {
                    if self.missing.contains(&conn) {
                        gone.push(conn);
                    } else {
                        missing.insert(conn);
                    }
                }
                // Misses of other nodes' sockets are kept; this node's are replaced by this list's.
                self.missing.retain(|c| bus::node_of(*c) != node);
                self.missing.extend(missing);
                for conn in gone {
                    tracing::info!(target: "duet::cluster", %conn, "a remote socket its node no longer holds leaves its room");
                    if let Some(entry) = self.forget(conn) {
                        self.gone(now, conn, entry.mode, false);
                    }
                }
            }
        }
    }

    fn control(&mut self, now: Instant, control: Control) {
        match control {
            Control::CloseBooking { booking, reason } => {
                self.hub.close_booking(now, &booking, reason);
                self.peerjs.close_booking(now, &booking, reason);
            }
            Control::CloseParticipant { booking, participant, code, reason } => {
                self.hub.close_participant(now, &booking, &participant, code, reason);
            }
            Control::UpdateWindow { booking, update } => {
                let end = update.hard_end_at;
                self.hub.update_window(now, &booking, update);
                self.peerjs.update_hard_end(now, &booking, end);
            }
            Control::CloseAll => {
                self.hub.close_all(now, CloseReason::Shutdown);
                self.peerjs.close_all(now, CloseReason::Shutdown);
            }
            Control::PeerjsIds { namespace, reply } => {
                let _ = reply.send(self.peerjs.peer_ids(&namespace).into_iter().map(str::to_string).collect());
            }
            Control::NodesAlive(alive) => {
                let dead: Vec<ConnectionId> = self
                    .conns
                    .iter()
                    .filter(|(_, e)| matches!(e.sink, Sink::Remote(n) if !alive.contains(&n)))
                    .map(|(c, _)| *c)
                    .collect();
                if !dead.is_empty() {
                    tracing::warn!(target: "duet::cluster", sockets = dead.len(), "sockets of a node that stopped beating are gone");
                }
                for conn in dead {
                    if let Some(entry) = self.forget(conn) {
                        self.gone(now, conn, entry.mode, true);
                    }
                }
            }
            Control::Recount => {}
            Control::LeasesLost(rooms) => {
                let rooms: HashSet<&str> = rooms.iter().map(String::as_str).collect();
                let moved: Vec<ConnectionId> = self
                    .conns
                    .iter()
                    .filter(|(_, e)| e.room.as_deref().is_some_and(|r| rooms.contains(r)))
                    .map(|(c, _)| *c)
                    .collect();
                tracing::warn!(target: "duet::cluster", rooms = rooms.len(), sockets = moved.len(),
                    "rooms homed on another node: their sockets here reconnect there");
                // Forget them all first, so that the cores' goodbyes to each other reach nobody.
                let entries: Vec<(ConnectionId, ConnEntry)> =
                    moved.into_iter().filter_map(|c| self.forget(c).map(|e| (c, e))).collect();
                for (conn, entry) in entries {
                    self.gone(now, conn, entry.mode, false);
                    let close = Outgoing::Close(CLOSE_MOVED, Cow::Borrowed("room moved to another node"));
                    let _ = Cores::deliver(self.cluster.as_ref(), conn, &entry.sink, close);
                }
            }
        }
    }

    /// Routes every pending output of both cores to its socket (a local queue, or another node's bus channel).
    fn drain(&mut self, metrics: &Metrics) {
        let now = Instant::now();
        loop {
            let out = match self.hub.poll_output() {
                Some(o) => o,
                None => match self.peerjs.poll_output() {
                    Some(o) => o,
                    None => break,
                },
            };
            match out {
                Output::Send { conn, text } => {
                    let Some(entry) = self.conns.get(&conn) else { continue };
                    let mode = entry.mode;
                    metrics.signal_messages.with_label_values(&["out", message_type(mode, &text)]).inc();
                    if let Err(e) = Cores::deliver(self.cluster.as_ref(), conn, &entry.sink, Outgoing::Text(text)) {
                        // A full queue: that reader is too slow. Forget it; dropping the sender makes its task
                        // close the socket with 1008 "queue full".
                        metrics.signal_drops.with_label_values(&["queue_full"]).inc();
                        self.forget(conn);
                        match mode {
                            Mode::Peerjs => {
                                if let Outgoing::Text(text) = e {
                                    self.peerjs.handle_send_failed(now, conn, &text);
                                }
                            }
                            _ => self.hub.handle_disconnect(now, conn),
                        }
                    }
                }
                Output::Close { conn, code, reason } => {
                    metrics.signal_closes.with_label_values(&[&code.to_string()]).inc();
                    if let Some(entry) = self.forget(conn) {
                        let close = Outgoing::Close(code, Cow::Borrowed(reason));
                        let _ = Cores::deliver(self.cluster.as_ref(), conn, &entry.sink, close);
                    }
                }
                Output::Ping { conn } => {
                    if let Some(entry) = self.conns.get(&conn) {
                        let _ = Cores::deliver(self.cluster.as_ref(), conn, &entry.sink, Outgoing::Ping);
                    }
                }
                Output::Event(e) => {
                    self.log_event(&e);
                    match &e {
                        HubEvent::Ready { .. } => metrics.signal_ready.inc(),
                        HubEvent::Dropped { reason } => {
                            metrics.signal_drops.with_label_values(&[reason.as_str()]).inc()
                        }
                        _ => {}
                    }
                    if let Some(facts) = &self.facts {
                        let at_ms = unix_ms();
                        let fact = match e {
                            HubEvent::Joined { booking, participant, .. } => {
                                Some(Fact::Joined { booking, participant, at_ms })
                            }
                            HubEvent::Left { booking, participant, reason, .. } => {
                                Some(Fact::Left { booking, participant, reason: reason.as_str(), at_ms })
                            }
                            HubEvent::Ready { booking, session } => Some(Fact::Ready { booking, session, at_ms }),
                            HubEvent::RoomClosed { booking, reason } => {
                                Some(Fact::RoomClosed { booking, reason: reason.as_str(), at_ms })
                            }
                            _ => None,
                        };
                        if let Some(fact) = fact {
                            facts.send("signaling", fact);
                        }
                    }
                }
            }
        }
        // The sockets of this node: the cores' connections that are not another node's, plus this node's sockets
        // served by another node's cores.
        let stats = self.hub.stats();
        let here = |mode: Mode, in_cores: usize| {
            let i = mode_index(mode);
            in_cores as i64 - self.remote[i] + self.proxied[i].load(Ordering::Relaxed)
        };
        for mode in [Mode::Native, Mode::Vy] {
            metrics
                .signal_connections
                .with_label_values(&[mode.as_str()])
                .set(here(mode, stats.mode(mode).connections));
        }
        metrics
            .signal_connections
            .with_label_values(&[Mode::Peerjs.as_str()])
            .set(here(Mode::Peerjs, self.peerjs.connection_count()));
        metrics.rooms_active.set(self.hub.room_count() as i64);
    }
}

/// Cluster mode: frames from other nodes' bus. Inputs of remote sockets go to the cores like local ones; outputs for
/// this node's proxied sockets go to their queues (a full queue closes that socket, 1008, and tells its home).
async fn bus_inbound(
    cluster: Cluster,
    mut rx: mpsc::Receiver<Vec<u8>>,
    tx: mpsc::Sender<Input>,
    proxies: Proxies,
    metrics: Metrics,
) {
    while let Some(bytes) = rx.recv().await {
        let Some(frame) = bus::decode(&bytes) else {
            metrics.signal_drops.with_label_values(&["bus_malformed"]).inc();
            continue;
        };
        let input = match frame {
            bus::Frame::Home(conn, msg) => match msg {
                bus::ToHome::Connect(wire) => {
                    Input::Connect { conn, admit: wire.into_admit(), out: Sink::Remote(bus::node_of(conn)) }
                }
                bus::ToHome::Text(text) => Input::Text { conn, text: text.into() },
                bus::ToHome::Binary(len) => Input::Binary { conn, len },
                bus::ToHome::Ping => Input::Ping { conn },
                bus::ToHome::Pong => Input::Pong { conn },
                bus::ToHome::PingSent => Input::PingSent { conn },
                bus::ToHome::Disconnect { timed_out } => Input::Disconnect { conn, timed_out },
                bus::ToHome::Hold(ids) => {
                    Input::Hold { node: bus::node_of(conn), conns: ids.into_iter().map(ConnectionId).collect() }
                }
            },
            bus::Frame::Proxy(conn, msg) => {
                let out = match msg {
                    bus::ToProxy::Text(t) => Outgoing::Text(t),
                    bus::ToProxy::Close(code, reason) => Outgoing::Close(code, Cow::Owned(reason)),
                    bus::ToProxy::Ping => Outgoing::Ping,
                };
                let mut map = proxies.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(p) = map.get(&conn)
                    && p.out.try_send(out).is_err()
                {
                    // Slow reader: dropping its sender closes it with 1008 "queue full"; its home forgets it.
                    metrics.signal_drops.with_label_values(&["queue_full"]).inc();
                    if let Some(p) = map.remove(&conn) {
                        let bye = bus::ToHome::Disconnect { timed_out: false };
                        cluster.publish_bus(p.home, |buf| bus::encode_home(buf, conn, &bye));
                    }
                }
                continue;
            }
        };
        if tx.send(input).await.is_err() {
            return;
        }
    }
}

/// Cluster mode: follows the live nodes. Remote sockets of a dead node leave their rooms here; this node's sockets
/// whose room was homed on a dead node are closed with [`CLOSE_MOVED`] so that their clients reconnect (their room
/// then gets a new home).
async fn watch_nodes(
    cluster: Cluster,
    ctl: mpsc::UnboundedSender<Control>,
    proxies: Proxies,
    shutdown: CancellationToken,
) {
    let mut alive = cluster.alive_nodes();
    let mut hold = tokio::time::interval(HOLD_EVERY);
    loop {
        tokio::select! {
            r = alive.changed() => if r.is_err() { return },
            _ = hold.tick() => {
                // Every live node hears which of its rooms' sockets this node holds (see `bus`, hold list).
                let Some(set) = alive.borrow().clone() else { continue };
                let mut by_home: HashMap<u32, Vec<u64>> = set.iter().filter(|&&n| n != cluster.node()).map(|&n| (n, Vec::new())).collect();
                for (conn, p) in proxies.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                    if let Some(list) = by_home.get_mut(&p.home) {
                        list.push(conn.0);
                    }
                }
                let me = ConnectionId(u64::from(cluster.node()) << bus::NODE_SHIFT);
                for (home, ids) in by_home {
                    let hold = bus::ToHome::Hold(ids);
                    cluster.publish_bus(home, |buf| bus::encode_home(buf, me, &hold));
                }
                continue;
            }
            _ = shutdown.cancelled() => return,
        }
        let Some(set) = alive.borrow_and_update().clone() else { continue };
        let _ = ctl.send(Control::NodesAlive(set.clone()));
        let mut map = proxies.lock().unwrap_or_else(|p| p.into_inner());
        let lost: Vec<ConnectionId> = map.iter().filter(|(_, p)| !set.contains(&p.home)).map(|(c, _)| *c).collect();
        if !lost.is_empty() {
            tracing::warn!(target: "duet::cluster", sockets = lost.len(), "the home node of these sockets' rooms stopped beating: they reconnect");
        }
        for conn in lost {
            if let Some(p) = map.remove(&conn) {
                let _ = p.out.try_send(Outgoing::Close(CLOSE_MOVED, Cow::Borrowed("signaling node lost")));
            }
        }
    }
}

/// The type of a frame for metrics, from a bounded set (never raw text: no unbounded labels). Native and PeerJS
/// frames are read from a leading `{"type":"…"` (how the cores write every frame and how clients usually do);
/// Virtual Y frames are `ready` or opaque relays.
fn message_type(mode: Mode, text: &str) -> &'static str {
    if mode == Mode::Vy {
        return if text == "ready" { "ready" } else { "relay" };
    }
    let t = text.trim_start().strip_prefix("{\"type\":\"").and_then(|rest| rest.split('"').next());
    match t {
        Some("signal") => "signal",
        Some("ping") => "ping",
        Some("pong") => "pong",
        Some("leave") => "leave",
        Some("welcome") => "welcome",
        Some("ready") => "ready",
        Some("peer-left") => "peer-left",
        Some("window") => "window",
        Some("error") => "error",
        Some("OPEN") => "OPEN",
        Some("OFFER") => "OFFER",
        Some("ANSWER") => "ANSWER",
        Some("CANDIDATE") => "CANDIDATE",
        Some("LEAVE") => "LEAVE",
        Some("EXPIRE") => "EXPIRE",
        Some("HEARTBEAT") => "HEARTBEAT",
        Some("ID-TAKEN") => "ID-TAKEN",
        Some("ERROR") => "ERROR",
        _ => "other",
    }
}

/// How long a closing socket waits for the client's close frame, so the code arrives before the TCP connection goes.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Sends a close frame and waits briefly for the peer's, so the code arrives before the TCP connection goes. The
/// place `_slot` (a pending upgrade's) is held until then.
async fn close(mut socket: WebSocket, code: u16, reason: &'static str, _slot: guard::Slot) {
    let _ = tokio::time::timeout(
        CLOSE_LINGER,
        socket.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))),
    )
    .await;
    let _ = tokio::time::timeout(CLOSE_LINGER, async { while let Some(Ok(_)) = socket.recv().await {} }).await;
}

/// One admitted socket: frames in to the cores, queued outputs out. Native and Virtual Y sockets get WebSocket
/// pings every `ping_interval` and are closed after two unanswered ones (as the Virtual Y server does); every ping
/// sent and pong received is reported to the hub (Virtual Y liveness). PeerJS clients keep themselves alive with
/// `HEARTBEAT` frames, which the core checks. Every write has `send_timeout`; a socket whose write does not complete
/// in that time is dropped. A Virtual Y socket the hub refuses because its slot is taken (4009) counts as a refused
/// upgrade of its client ([`guard::RefusalLimiter`]).
///
/// In cluster mode the socket's room may be homed on another node: the socket's inputs then go to that node over the
/// bus and its outputs come back the same way ([`bus`]); everything else here is the same.
async fn connection(socket: WebSocket, hub: HubHandle, admit: Admit, slot: guard::Slot) {
    let conn = ConnectionId(hub.next_id.fetch_add(1, Ordering::Relaxed));
    let mode = admit.mode();
    let pings = mode != Mode::Peerjs;
    let (out_tx, mut out_rx) = mpsc::channel(QUEUE_PER_CONNECTION);
    let upstream = match Upstream::open(&hub, conn, admit, out_tx).await {
        Some(u) => u,
        None => return,
    };
    let send_timeout = hub.config.send_timeout;
    let (mut sink, mut stream) = socket.split();
    // A write that does not finish within `send_timeout` (the client stopped reading and the TCP window is full)
    // counts as a failed one.
    macro_rules! send {
        ($msg:expr) => {
            match tokio::time::timeout(send_timeout, sink.send($msg)).await {
                Ok(r) => r.is_ok(),
                Err(_) => {
                    hub.metrics.signal_drops.with_label_values(&["send_timeout"]).inc();
                    false
                }
            }
        };
    }
    let mut ping = tokio::time::interval(hub.config.ping_interval);
    ping.tick().await;
    let mut unanswered = 0u32;
    let mut closed_by_core = false;
    let mut timed_out = false;
    let close_frame = |code: u16, reason: Cow<'static, str>| {
        Message::Close(Some(CloseFrame { code, reason: reason.as_ref().into() }))
    };
    loop {
        tokio::select! {
            msg = stream.next() => {
                let input = match msg {
                    Some(Ok(Message::Text(text))) => {
                        unanswered = 0;
                        Input::Text { conn, text }
                    }
                    Some(Ok(Message::Binary(b))) => Input::Binary { conn, len: b.len() },
                    Some(Ok(Message::Ping(_))) => {
                        unanswered = 0;
                        Input::Ping { conn }
                    }
                    Some(Ok(Message::Pong(_))) => {
                        unanswered = 0;
                        Input::Pong { conn }
                    }
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Err(e)) => {
                        // Over the transport's size cap (or a protocol error): say why if the socket still writes.
                        // tungstenite reports the cap as "Space limit exceeded: Message too long" (0.29) or a size
                        // error.
                        let text = e.to_string().to_ascii_lowercase();
                        let too_big = ["too long", "too big", "size", "space limit"].iter().any(|w| text.contains(w));
                        let frame = if too_big {
                            close_frame(close_code::TOO_BIG, "message too big".into())
                        } else {
                            close_frame(1002, "protocol error".into())
                        };
                        let _ = send!(frame);
                        break;
                    }
                };
                if !upstream.send(input).await {
                    break;
                }
            }
            out = out_rx.recv() => match out {
                Some(Outgoing::Text(t)) => {
                    if !send!(Message::Text(t.into())) { break; }
                }
                Some(Outgoing::Ping) => {
                    if !send!(Message::Ping(Vec::new().into())) { break; }
                    let _ = upstream.send(Input::PingSent { conn }).await;
                }
                Some(Outgoing::Close(code, reason)) => {
                    closed_by_core = true;
                    if mode == Mode::Vy && code == close_code::ROOM_FULL {
                        hub.refusals.charge(slot.ip(), Instant::now());
                        hub.count_refused(mode, "slot_taken");
                    }
                    let _ = send!(close_frame(code, reason));
                    let _ = tokio::time::timeout(CLOSE_LINGER, async {
                        while let Some(Ok(_)) = stream.next().await {}
                    }).await;
                    break;
                }
                None => {
                    closed_by_core = true;
                    let _ = send!(close_frame(CLOSE_QUEUE_FULL, "queue full".into()));
                    break;
                }
            },
            _ = ping.tick(), if pings => {
                if unanswered >= 2 {
                    timed_out = true;
                    let _ = send!(close_frame(1001, "ping timeout".into()));
                    break;
                }
                unanswered += 1;
                if !send!(Message::Ping(Vec::new().into())) { break; }
                let _ = upstream.send(Input::PingSent { conn }).await;
            }
        }
    }
    if !closed_by_core {
        let _ = upstream.send(Input::Disconnect { conn, timed_out }).await;
    }
    upstream.close(conn);
    drop(slot);
}

/// Where a socket's inputs go: this node's cores, or (cluster mode) the home node of its room.
enum Upstream {
    Local(mpsc::Sender<Input>),
    Remote {
        cluster: Cluster,
        home: u32,
        proxies: Proxies,
        proxied: Arc<[AtomicI64; 3]>,
        mode: Mode,
        ctl: mpsc::UnboundedSender<Control>,
    },
}

impl Upstream {
    /// Finds the socket's room's home and announces the socket there. `None` when the cores are gone (shutdown).
    async fn open(hub: &HubHandle, conn: ConnectionId, admit: Admit, out: mpsc::Sender<Outgoing>) -> Option<Upstream> {
        let home = match (&hub.cluster, admit.room_key()) {
            (Some(c), Some(room)) => c.acquire_home(&room).await.filter(|&h| h != c.node()).map(|h| (c.clone(), h)),
            _ => None,
        };
        let mode = admit.mode();
        let Some((cluster, home)) = home else {
            hub.tx.send(Input::Connect { conn, admit, out: Sink::Local(out) }).await.ok()?;
            return Some(Upstream::Local(hub.tx.clone()));
        };
        let wire = bus::WireAdmit::of(&admit)?;
        hub.proxies.lock().unwrap_or_else(|p| p.into_inner()).insert(conn, Proxy { home, out });
        hub.proxied[mode_index(mode)].fetch_add(1, Ordering::Relaxed);
        let connect = bus::ToHome::Connect(wire);
        cluster.publish_bus(home, |buf| bus::encode_home(buf, conn, &connect));
        let _ = hub.ctl.send(Control::Recount);
        Some(Upstream::Remote {
            cluster,
            home,
            proxies: hub.proxies.clone(),
            proxied: hub.proxied.clone(),
            mode,
            ctl: hub.ctl.clone(),
        })
    }

    /// Hands one input on; `false` when the cores are gone. Over the bus nothing waits: a frame that cannot be
    /// published (Redis down) is dropped, as on a broken socket.
    async fn send(&self, input: Input) -> bool {
        match self {
            Upstream::Local(tx) => tx.send(input).await.is_ok(),
            Upstream::Remote { cluster, home, .. } => {
                let (conn, msg) = match input {
                    Input::Text { conn, text } => {
                        cluster.publish_bus(*home, |buf| bus::encode_text_home(buf, conn, text.as_str()));
                        return true;
                    }
                    Input::Binary { conn, len } => (conn, bus::ToHome::Binary(len)),
                    Input::Ping { conn } => (conn, bus::ToHome::Ping),
                    Input::Pong { conn } => (conn, bus::ToHome::Pong),
                    Input::PingSent { conn } => (conn, bus::ToHome::PingSent),
                    Input::Disconnect { conn, timed_out } => (conn, bus::ToHome::Disconnect { timed_out }),
                    Input::Connect { .. } | Input::Hold { .. } => return true,
                };
                cluster.publish_bus(*home, |buf| bus::encode_home(buf, conn, &msg));
                true
            }
        }
    }

    /// The socket is gone: a proxied one leaves the proxy table.
    fn close(&self, conn: ConnectionId) {
        if let Upstream::Remote { proxies, proxied, mode, ctl, .. } = self {
            proxies.lock().unwrap_or_else(|p| p.into_inner()).remove(&conn);
            proxied[mode_index(*mode)].fetch_sub(1, Ordering::Relaxed);
            let _ = ctl.send(Control::Recount);
        }
    }
}
