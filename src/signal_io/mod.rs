//! WebSocket driver of the sans-IO signaling cores: [`duet_signaling::Hub`] (native v1 and Virtual Y) and
//! [`duet_signaling::peerjs::PeerjsServer`] (PeerJS). One task owns both state machines; each socket has a task that
//! forwards frames in and writes the outputs from a bounded queue. A slow reader whose queue fills is closed (1008,
//! "queue full") without blocking anyone else.
//!
//! Admission (token, booking and window checks, `Origin`, per-IP limit) happens before the upgrade, in
//! [`native`], [`vy`] and [`peerjs`]; the cores trust what they are handed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use duet_signaling::peerjs::{PeerjsConfig as CorePeerjsConfig, PeerjsError, PeerjsServer, Registration};
use duet_signaling::{
    Admission, CloseReason, ConnectionId, Hub, HubConfig, HubEvent, Mode, Output, VyAdmission, close_code,
};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::SignalingConfig;
use crate::metrics::Metrics;

pub mod guard;
pub mod native;
pub mod peerjs;
pub mod vy;

pub use native::upgrade;

/// Frames queued per connection before it counts as a slow reader and is closed.
const QUEUE_PER_CONNECTION: usize = 64;
/// Close code for a connection whose outgoing queue overflowed (RFC 6455 §7.4.1 policy violation).
const CLOSE_QUEUE_FULL: u16 = 1008;

enum Outgoing {
    Text(String),
    Close(u16, &'static str),
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

enum Input {
    Connect { conn: ConnectionId, admit: Admit, out: mpsc::Sender<Outgoing> },
    Text { conn: ConnectionId, text: String },
    Binary { conn: ConnectionId, len: usize },
    Disconnect { conn: ConnectionId, timed_out: bool },
    CloseBooking { booking: String, reason: CloseReason },
    CloseAll,
    PeerjsIds { namespace: String, reply: oneshot::Sender<Vec<String>> },
}

/// Control handle of the signaling task; cheap to clone.
#[derive(Clone)]
pub struct HubHandle {
    tx: mpsc::UnboundedSender<Input>,
    next_id: Arc<AtomicU64>,
    /// The signaling settings.
    pub config: Arc<SignalingConfig>,
    /// Open sockets per client IP.
    pub guard: guard::ConnectionGuard,
}

impl HubHandle {
    /// Starts the signaling task. It stops when `shutdown` is cancelled (closing every socket with 1001).
    pub fn spawn(config: SignalingConfig, metrics: Metrics, shutdown: CancellationToken) -> HubHandle {
        let (tx, rx) = mpsc::unbounded_channel();
        let hub = Hub::new(HubConfig {
            max_message_bytes: config.max_message_bytes,
            messages_per_second: config.messages_per_second,
            ping_interval: config.ping_interval,
            ..HubConfig::default()
        });
        let peerjs = PeerjsServer::new(CorePeerjsConfig {
            expire_timeout: config.peerjs.expire_timeout,
            alive_timeout: config.peerjs.alive_timeout,
            concurrent_limit: config.peerjs.concurrent_limit,
            max_message_bytes: config.max_message_bytes,
            messages_per_second: config.messages_per_second,
            ..CorePeerjsConfig::default()
        });
        tokio::spawn(run(Cores { hub, peerjs, conns: HashMap::new() }, rx, metrics, shutdown));
        HubHandle {
            tx,
            next_id: Default::default(),
            guard: guard::ConnectionGuard::new(config.max_connections_per_ip),
            config: Arc::new(config),
        }
    }

    /// Closes the rooms of a cancelled booking (4004) in every mode.
    pub fn cancel_booking(&self, booking: &str) {
        let _ = self.tx.send(Input::CloseBooking { booking: booking.to_string(), reason: CloseReason::Cancelled });
    }

    /// Closes every socket (1001).
    pub fn close_all(&self) {
        let _ = self.tx.send(Input::CloseAll);
    }

    /// The ids registered in a PeerJS namespace (for `GET {path}{key}/peers`).
    pub async fn peerjs_ids(&self, namespace: String) -> Vec<String> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Input::PeerjsIds { namespace, reply }).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

struct Cores {
    hub: Hub,
    peerjs: PeerjsServer,
    conns: HashMap<ConnectionId, (Mode, mpsc::Sender<Outgoing>)>,
}

async fn run(mut c: Cores, mut rx: mpsc::UnboundedReceiver<Input>, metrics: Metrics, shutdown: CancellationToken) {
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
            Input::CloseBooking { booking, reason } => {
                self.hub.close_booking(now, &booking, reason);
                self.peerjs.close_booking(now, &booking, reason);
            }
            Input::CloseAll => {
                self.hub.close_all(now, CloseReason::Shutdown);
                self.peerjs.close_all(now, CloseReason::Shutdown);
            }
            Input::PeerjsIds { namespace, reply } => {
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
                Output::Event(e) => match e {
                    HubEvent::Ready { .. } => metrics.signal_ready.inc(),
                    HubEvent::Dropped { reason } => metrics.signal_drops.with_label_values(&[reason.as_str()]).inc(),
                    _ => {}
                },
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

/// Sends a close frame and waits briefly for the peer's, so the code arrives before the TCP connection goes.
async fn close(mut socket: WebSocket, code: u16, reason: &'static str) {
    let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
    let _ =
        tokio::time::timeout(Duration::from_secs(2), async { while let Some(Ok(_)) = socket.recv().await {} }).await;
}

/// One admitted socket: frames in to the cores, queued outputs out. Native and Virtual Y sockets get WebSocket
/// pings every `ping_interval` and are closed after two unanswered ones (research/signaling.md §10.2); PeerJS
/// clients keep themselves alive with `HEARTBEAT` frames, which the core checks.
async fn connection(socket: WebSocket, hub: HubHandle, admit: Admit, slot: guard::Slot) {
    let conn = ConnectionId(hub.next_id.fetch_add(1, Ordering::Relaxed));
    let pings = admit.mode() != Mode::Peerjs;
    let (out_tx, mut out_rx) = mpsc::channel(QUEUE_PER_CONNECTION);
    if hub.tx.send(Input::Connect { conn, admit, out: out_tx }).is_err() {
        return;
    }
    let (mut sink, mut stream) = socket.split();
    let mut ping = tokio::time::interval(hub.config.ping_interval);
    ping.tick().await;
    let mut unanswered = 0u32;
    let mut closed_by_core = false;
    let mut timed_out = false;
    let close_frame =
        |code: u16, reason: &'static str| Message::Close(Some(CloseFrame { code, reason: reason.into() }));
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    unanswered = 0;
                    let _ = hub.tx.send(Input::Text { conn, text: t.to_string() });
                }
                Some(Ok(Message::Binary(b))) => {
                    let _ = hub.tx.send(Input::Binary { conn, len: b.len() });
                }
                Some(Ok(Message::Pong(_))) | Some(Ok(Message::Ping(_))) => unanswered = 0,
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(e)) => {
                    // Over the transport's size cap (or a protocol error): say why if the socket still writes.
                    // tungstenite reports the cap as "Space limit exceeded: Message too long" (0.29) or a size error.
                    let text = e.to_string().to_ascii_lowercase();
                    let too_big = ["too long", "too big", "size", "space limit"].iter().any(|w| text.contains(w));
                    let frame = if too_big {
                        close_frame(close_code::TOO_BIG, "message too big")
                    } else {
                        close_frame(1002, "protocol error")
                    };
                    let _ = sink.send(frame).await;
                    break;
                }
            },
            out = out_rx.recv() => match out {
                Some(Outgoing::Text(t)) => {
                    if sink.send(Message::Text(t.into())).await.is_err() { break; }
                }
                Some(Outgoing::Close(code, reason)) => {
                    closed_by_core = true;
                    let _ = sink.send(close_frame(code, reason)).await;
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while let Some(Ok(_)) = stream.next().await {}
                    }).await;
                    break;
                }
                None => {
                    closed_by_core = true;
                    let _ = sink.send(close_frame(CLOSE_QUEUE_FULL, "queue full")).await;
                    break;
                }
            },
            _ = ping.tick(), if pings => {
                if unanswered >= 2 {
                    timed_out = true;
                    let _ = sink.send(close_frame(1001, "ping timeout")).await;
                    break;
                }
                unanswered += 1;
                if sink.send(Message::Ping(Vec::new().into())).await.is_err() { break; }
            }
        }
    }
    if !closed_by_core {
        let _ = hub.tx.send(Input::Disconnect { conn, timed_out });
    }
    drop(slot);
}
