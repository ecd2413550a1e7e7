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

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
use crate::config::SignalingConfig;
use crate::metrics::Metrics;

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
    Close(u16, &'static str),
    /// A liveness probe asked for by the hub ([`Output::Ping`]).
    Ping,
}

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
}

/// What socket tasks tell the signaling task (bounded channel).
enum Input {
    Connect {
        conn: ConnectionId,
        admit: Admit,
        out: mpsc::Sender<Outgoing>,
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
}

/// What the rest of the daemon asks of the signaling task (rare, from authenticated callers: unbounded).
enum Control {
    CloseBooking { booking: String, reason: CloseReason },
    CloseParticipant { booking: String, participant: String, code: u16, reason: &'static str },
    CloseAll,
    UpdateWindow { booking: String, update: WindowUpdate },
    PeerjsIds { namespace: String, reply: oneshot::Sender<Vec<String>> },
}

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
}

impl HubHandle {
    /// Starts the signaling task. It stops when `shutdown` is cancelled (closing every socket with 1001). Joins,
    /// leaves, `ready` and room closes of native and Virtual Y rooms go to `facts` (call reports) when given.
    pub fn spawn(
        config: SignalingConfig,
        metrics: Metrics,
        facts: Option<FactSender>,
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
        tokio::spawn(run(Cores { hub, peerjs, conns: HashMap::new(), facts }, rx, ctl_rx, metrics.clone(), shutdown));
        HubHandle {
            tx,
            ctl,
            next_id: Default::default(),
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
    conns: HashMap<ConnectionId, (Mode, mpsc::Sender<Outgoing>)>,
    /// The call-facts recorder's queue (never waited on).
    facts: Option<FactSender>,
}

async fn run(
    mut c: Cores,
    mut rx: mpsc::Receiver<Input>,
    mut ctl: mpsc::UnboundedReceiver<Control>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
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
    fn handle(&mut self, now: Instant, input: Input, metrics: &Metrics) {
        match input {
            Input::Connect { conn, admit, out } => {
                self.conns.insert(conn, (admit.mode(), out));
                match admit {
                    Admit::Native(a) => self.hub.handle_connect(now, conn, a),
                    Admit::Vy(a) => self.hub.handle_connect_vy(now, conn, a),
                    Admit::Peerjs(r) => self.peerjs.handle_connect(now, conn, r),
                    Admit::PeerjsReject(e) => self.peerjs.reject(conn, e),
                }
            }
            Input::Text { conn, text } => {
                let Some((mode, _)) = self.conns.get(&conn) else { return };
                metrics.signal_messages.with_label_values(&["in", message_type(*mode, &text)]).inc();
                match mode {
                    Mode::Peerjs => self.peerjs.handle_text(now, conn, &text),
                    _ => self.hub.handle_text(now, conn, &text),
                }
            }
            Input::Ping { conn } => match self.conns.get(&conn) {
                Some((Mode::Peerjs, _)) => self.peerjs.handle_ping(now, conn),
                Some(_) => self.hub.handle_ping(now, conn),
                None => {}
            },
            Input::Pong { conn } => self.hub.handle_pong(now, conn),
            Input::PingSent { conn } => self.hub.handle_ping_sent(now, conn),
            Input::Binary { conn, len } => {
                let Some((mode, _)) = self.conns.get(&conn) else { return };
                metrics.signal_messages.with_label_values(&["in", "binary"]).inc();
                match mode {
                    Mode::Peerjs => self.peerjs.handle_binary(now, conn, len),
                    _ => self.hub.handle_binary(now, conn, len),
                }
            }
            Input::Disconnect { conn, timed_out } => match self.conns.remove(&conn) {
                Some((Mode::Peerjs, _)) => self.peerjs.handle_disconnect(now, conn),
                Some(_) if timed_out => self.hub.handle_liveness_timeout(now, conn),
                Some(_) => self.hub.handle_disconnect(now, conn),
                None => {}
            },
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
        }
    }

    /// Routes every pending output of both cores to its socket's queue.
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
                    let Some((mode, tx)) = self.conns.get(&conn) else { continue };
                    let mode = *mode;
                    metrics.signal_messages.with_label_values(&["out", message_type(mode, &text)]).inc();
                    if let Err(e) = tx.try_send(Outgoing::Text(text)) {
                        // A full queue: that reader is too slow. Forget it; dropping the sender makes its task
                        // close the socket with 1008 "queue full".
                        metrics.signal_drops.with_label_values(&["queue_full"]).inc();
                        self.conns.remove(&conn);
                        match mode {
                            Mode::Peerjs => {
                                if let Outgoing::Text(text) = e.into_inner() {
                                    self.peerjs.handle_send_failed(now, conn, &text);
                                }
                            }
                            _ => self.hub.handle_disconnect(now, conn),
                        }
                    }
                }
                Output::Close { conn, code, reason } => {
                    metrics.signal_closes.with_label_values(&[&code.to_string()]).inc();
                    if let Some((_, tx)) = self.conns.remove(&conn) {
                        let _ = tx.try_send(Outgoing::Close(code, reason));
                    }
                }
                Output::Ping { conn } => {
                    if let Some((_, tx)) = self.conns.get(&conn) {
                        let _ = tx.try_send(Outgoing::Ping);
                    }
                }
                Output::Event(e) => {
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
        let stats = self.hub.stats();
        for mode in [Mode::Native, Mode::Vy] {
            metrics.signal_connections.with_label_values(&[mode.as_str()]).set(stats.mode(mode).connections as i64);
        }
        metrics
            .signal_connections
            .with_label_values(&[Mode::Peerjs.as_str()])
            .set(self.peerjs.connection_count() as i64);
        metrics.rooms_active.set(self.hub.room_count() as i64);
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
async fn connection(socket: WebSocket, hub: HubHandle, admit: Admit, slot: guard::Slot) {
    let conn = ConnectionId(hub.next_id.fetch_add(1, Ordering::Relaxed));
    let mode = admit.mode();
    let pings = mode != Mode::Peerjs;
    let (out_tx, mut out_rx) = mpsc::channel(QUEUE_PER_CONNECTION);
    if hub.tx.send(Input::Connect { conn, admit, out: out_tx }).await.is_err() {
        return;
    }
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
    let close_frame =
        |code: u16, reason: &'static str| Message::Close(Some(CloseFrame { code, reason: reason.into() }));
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
                            close_frame(close_code::TOO_BIG, "message too big")
                        } else {
                            close_frame(1002, "protocol error")
                        };
                        let _ = send!(frame);
                        break;
                    }
                };
                if hub.tx.send(input).await.is_err() {
                    break;
                }
            }
            out = out_rx.recv() => match out {
                Some(Outgoing::Text(t)) => {
                    if !send!(Message::Text(t.into())) { break; }
                }
                Some(Outgoing::Ping) => {
                    if !send!(Message::Ping(Vec::new().into())) { break; }
                    let _ = hub.tx.send(Input::PingSent { conn }).await;
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
                    let _ = send!(close_frame(CLOSE_QUEUE_FULL, "queue full"));
                    break;
                }
            },
            _ = ping.tick(), if pings => {
                if unanswered >= 2 {
                    timed_out = true;
                    let _ = send!(close_frame(1001, "ping timeout"));
                    break;
                }
                unanswered += 1;
                if !send!(Message::Ping(Vec::new().into())) { break; }
                let _ = hub.tx.send(Input::PingSent { conn }).await;
            }
        }
    }
    if !closed_by_core {
        let _ = hub.tx.send(Input::Disconnect { conn, timed_out }).await;
    }
    drop(slot);
}
