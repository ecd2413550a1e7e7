//! WebSocket driver of the sans-IO [`duet_signaling::Hub`]: one task owns the hub; each socket has a task that
//! forwards frames in and writes the hub's outputs from a bounded queue. A slow reader whose queue fills is closed
//! (1008, "queue full") without blocking anyone else.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use duet_signaling::{Admission, CloseReason, ConnectionId, Hub, HubConfig, HubEvent, Output, close_code};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::app::{AppState, unix_now};
use crate::booking::api::{ice_servers, window_json};
use crate::booking::store::Status;
use crate::booking::window::Role;
use crate::config::SignalingConfig;
use crate::metrics::Metrics;

/// Frames queued per connection before it counts as a slow reader and is closed.
const QUEUE_PER_CONNECTION: usize = 64;
/// Close code for a connection whose outgoing queue overflowed (RFC 6455 §7.4.1 policy violation).
const CLOSE_QUEUE_FULL: u16 = 1008;

enum Outgoing {
    Text(String),
    Close(u16, &'static str),
}

enum HubInput {
    Connect { conn: ConnectionId, admission: Admission, out: mpsc::Sender<Outgoing> },
    Text { conn: ConnectionId, text: String },
    Binary { conn: ConnectionId, len: usize },
    Disconnect { conn: ConnectionId, timed_out: bool },
    CloseBooking { booking: String, reason: CloseReason },
    CloseAll,
}

/// Control handle of the hub task; cheap to clone.
#[derive(Clone)]
pub struct HubHandle {
    tx: mpsc::UnboundedSender<HubInput>,
    next_id: std::sync::Arc<std::sync::atomic::AtomicU64>,
    config: SignalingConfig,
}

impl HubHandle {
    /// Starts the hub task. It stops when `shutdown` is cancelled (closing every socket with 1001).
    pub fn spawn(config: SignalingConfig, metrics: Metrics, shutdown: CancellationToken) -> HubHandle {
        let (tx, rx) = mpsc::unbounded_channel();
        let hub = Hub::new(HubConfig {
            max_message_bytes: config.max_message_bytes,
            messages_per_second: config.messages_per_second,
            ping_interval: config.ping_interval,
            ..HubConfig::default()
        });
        tokio::spawn(run_hub(hub, rx, metrics, shutdown));
        HubHandle { tx, next_id: Default::default(), config }
    }

    /// Closes the room of a cancelled booking (4004).
    pub fn cancel_booking(&self, booking: &str) {
        let _ = self.tx.send(HubInput::CloseBooking { booking: booking.to_string(), reason: CloseReason::Cancelled });
    }

    /// Closes every socket (1001).
    pub fn close_all(&self) {
        let _ = self.tx.send(HubInput::CloseAll);
    }
}

async fn run_hub(
    mut hub: Hub,
    mut rx: mpsc::UnboundedReceiver<HubInput>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut conns: HashMap<ConnectionId, mpsc::Sender<Outgoing>> = HashMap::new();
    loop {
        let deadline = hub.poll_timeout();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            input = rx.recv() => {
                let now = Instant::now();
                match input {
                    None => break,
                    Some(HubInput::Connect { conn, admission, out }) => {
                        conns.insert(conn, out);
                        hub.handle_connect(now, conn, admission);
                    }
                    Some(HubInput::Text { conn, text }) => {
                        metrics.signal_messages.with_label_values(&["in", message_type(&text)]).inc();
                        hub.handle_text(now, conn, &text);
                    }
                    Some(HubInput::Binary { conn, len }) => {
                        metrics.signal_messages.with_label_values(&["in", "binary"]).inc();
                        hub.handle_binary(now, conn, len);
                    }
                    Some(HubInput::Disconnect { conn, timed_out }) => {
                        conns.remove(&conn);
                        if timed_out {
                            hub.handle_liveness_timeout(now, conn);
                        } else {
                            hub.handle_disconnect(now, conn);
                        }
                    }
                    Some(HubInput::CloseBooking { booking, reason }) => hub.close_booking(now, &booking, reason),
                    Some(HubInput::CloseAll) => hub.close_all(now, CloseReason::Shutdown),
                }
            }
            _ = sleep => hub.handle_timeout(Instant::now()),
            _ = shutdown.cancelled() => {
                hub.close_all(Instant::now(), CloseReason::Shutdown);
                drain(&mut hub, &mut conns, &metrics);
                break;
            }
        }
        drain(&mut hub, &mut conns, &metrics);
    }
}

fn drain(hub: &mut Hub, conns: &mut HashMap<ConnectionId, mpsc::Sender<Outgoing>>, metrics: &Metrics) {
    let now = Instant::now();
    let mut overflowed = Vec::new();
    while let Some(out) = hub.poll_output() {
        match out {
            Output::Send { conn, text } => {
                metrics.signal_messages.with_label_values(&["out", message_type(&text)]).inc();
                if let Some(tx) = conns.get(&conn)
                    && tx.try_send(Outgoing::Text(text)).is_err()
                {
                    overflowed.push(conn);
                }
            }
            Output::Close { conn, code, reason } => {
                metrics.signal_closes.with_label_values(&[&code.to_string()]).inc();
                if let Some(tx) = conns.remove(&conn) {
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
    for conn in overflowed {
        // Dropping the sender ends the connection task, which closes the socket with 1008 "queue full".
        if conns.remove(&conn).is_some() {
            metrics.signal_drops.with_label_values(&["queue_full"]).inc();
            hub.handle_disconnect(now, conn);
        }
    }
    metrics.signal_connections.set(hub.connection_count() as i64);
    metrics.rooms_active.set(hub.room_count() as i64);
}

/// The `type` of a frame for metrics, from a bounded set (never raw text: no unbounded labels). Reads only a
/// leading `{"type":"…"` (how the hub writes every frame and how clients usually do); anything else is "other".
fn message_type(text: &str) -> &'static str {
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
        _ => "other",
    }
}

/// Query of `GET /v1/signal`.
#[derive(Deserialize)]
pub struct SignalQuery {
    token: Option<String>,
}

/// `GET /v1/signal?token=…`: validates the session token and the booking, then upgrades. A refused socket is
/// still upgraded so the browser sees the close code: 4001 bad or outdated token, 4003 outside the window, 4004
/// unknown or cancelled booking.
pub async fn upgrade(State(state): State<AppState>, Query(q): Query<SignalQuery>, ws: WebSocketUpgrade) -> Response {
    let verdict = admit(&state, q.token.as_deref().unwrap_or("")).await;
    let cfg = &state.hub.config;
    // The transport refuses frames past twice the hub's limit; between the two the hub closes with 1009 itself.
    let transport_limit = cfg.max_message_bytes * 2;
    ws.max_message_size(transport_limit).max_frame_size(transport_limit).on_upgrade(move |socket| async move {
        match verdict {
            Ok(admission) => connection(socket, state, admission).await,
            Err((code, reason)) => {
                tracing::debug!(target: "signaling", code, reason, "socket refused");
                state.metrics.signal_closes.with_label_values(&[&code.to_string()]).inc();
                close(socket, code, reason).await
            }
        }
    })
}

async fn close(mut socket: WebSocket, code: u16, reason: &'static str) {
    let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
    // Wait briefly for the peer's close so the code is delivered before the TCP connection goes.
    let _ =
        tokio::time::timeout(Duration::from_secs(2), async { while let Some(Ok(_)) = socket.recv().await {} }).await;
}

async fn admit(state: &AppState, token: &str) -> Result<Admission, (u16, &'static str)> {
    let claims = state.session_keys.verify(token).map_err(|_| (close_code::BAD_TOKEN, "invalid or expired token"))?;
    let booking = state
        .store
        .booking(None, &claims.bkg)
        .await
        .map_err(|_| (1011, "internal error"))?
        .ok_or((close_code::UNKNOWN_BOOKING, "unknown booking"))?;
    if booking.status == Status::Cancelled {
        return Err((close_code::UNKNOWN_BOOKING, "booking cancelled"));
    }
    if booking.sequence != claims.seq {
        return Err((close_code::BAD_TOKEN, "token outdated, join again"));
    }
    let participant = booking
        .participants
        .iter()
        .find(|p| p.id == claims.sub)
        .ok_or((close_code::BAD_TOKEN, "unknown participant"))?;
    let now = unix_now();
    if now >= booking.window.hard_end_at || now < booking.window.opens_for(participant.role) {
        return Err((close_code::OUTSIDE_WINDOW, "outside the meeting window"));
    }
    let to_end = Duration::from_secs((booking.window.hard_end_at - now) as u64);
    let ice = ice_servers(state, &booking, &participant.id);
    let window = window_json(&booking.window);
    let raw = |v: &serde_json::Value| serde_json::value::to_raw_value(v).map_err(|_| (1011, "internal error"));
    Ok(Admission {
        booking: booking.id.clone(),
        participant: participant.id.clone(),
        role: match participant.role {
            Role::Host => duet_signaling::Role::Host,
            Role::Guest => duet_signaling::Role::Guest,
        },
        ice_servers: raw(&ice)?,
        hard_end_at_rfc3339: window["hard_end_at"].as_str().unwrap_or_default().to_string(),
        window: raw(&window)?,
        hard_end_at: Instant::now() + to_end,
    })
}

/// One admitted socket: frames in to the hub, queued outputs out, WebSocket pings every `ping_interval`; two
/// unanswered pings close it.
async fn connection(socket: WebSocket, state: AppState, admission: Admission) {
    let hub = state.hub.clone();
    let conn = ConnectionId(hub.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let (out_tx, mut out_rx) = mpsc::channel(QUEUE_PER_CONNECTION);
    tracing::info!(target: "signaling", booking = %admission.booking, role = admission.role.as_str(), conn = conn.0, "connected");
    if hub.tx.send(HubInput::Connect { conn, admission, out: out_tx }).is_err() {
        return;
    }
    let (mut sink, mut stream) = socket.split();
    let mut ping = tokio::time::interval(hub.config.ping_interval);
    ping.tick().await;
    let mut unanswered = 0u32;
    let mut hub_closed = false;
    let mut timed_out = false;
    let close_frame =
        |code: u16, reason: &'static str| Message::Close(Some(CloseFrame { code, reason: reason.into() }));
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    unanswered = 0;
                    let _ = hub.tx.send(HubInput::Text { conn, text: t.to_string() });
                }
                Some(Ok(Message::Binary(b))) => {
                    let _ = hub.tx.send(HubInput::Binary { conn, len: b.len() });
                }
                Some(Ok(Message::Pong(_))) | Some(Ok(Message::Ping(_))) => unanswered = 0,
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(e)) => {
                    // Over the transport's size cap (or a protocol error): say why if the socket still writes.
                    let too_big = e.to_string().to_ascii_lowercase().contains("size");
                    let frame = if too_big { close_frame(close_code::TOO_BIG, "message too big") } else { close_frame(1002, "protocol error") };
                    let _ = sink.send(frame).await;
                    break;
                }
            },
            out = out_rx.recv() => match out {
                Some(Outgoing::Text(t)) => {
                    if sink.send(Message::Text(t.into())).await.is_err() { break; }
                }
                Some(Outgoing::Close(code, reason)) => {
                    hub_closed = true;
                    let _ = sink.send(close_frame(code, reason)).await;
                    // Let the peer answer the close so the code arrives intact.
                    let _ = tokio::time::timeout(Duration::from_secs(2), async { while let Some(Ok(_)) = stream.next().await {} }).await;
                    break;
                }
                None => {
                    hub_closed = true;
                    let _ = sink.send(close_frame(CLOSE_QUEUE_FULL, "queue full")).await;
                    break;
                }
            },
            _ = ping.tick() => {
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
    if !hub_closed {
        let _ = hub.tx.send(HubInput::Disconnect { conn, timed_out });
    }
    tracing::info!(target: "signaling", conn = conn.0, "disconnected");
}
