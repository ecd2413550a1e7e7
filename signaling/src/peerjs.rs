//! `peerjs` mode: a sans-IO drop-in for peers/peerjs-server 1.0.x (research/signaling.md §4, §10.4), for PeerJS >= 1.0
//! browser clients, optionally scoped to a booking.
//!
//! # What the driver does
//!
//! - HTTP routes (upstream `src/api`): `GET {path}` answers [`SERVER_INFO`] as JSON; `GET {path}{key}/id` answers a
//!   fresh UUID v4 as `text/html` (regenerate while [`PeerjsServer::is_registered`] says it is taken);
//!   `GET {path}{key}/peers` answers the JSON array [`PeerjsServer::peer_ids`] if discovery is allowed, else 401.
//! - The WebSocket upgrade at `{path}peerjs?key=K&id=ID&token=T[&version=V]`: the driver maps `key` to a namespace
//!   (the static key itself, or the booking id when `key` is a valid room token, then with a [`Scope`]). A missing
//!   `id`, `token` or `key` reaches [`PeerjsServer::handle_connect`] as an empty string (which answers the upstream
//!   `ERROR`); a wrong key goes to [`PeerjsServer::reject`] with [`PeerjsError::InvalidKey`].
//! - Frames, closes and timers exactly as for [`Hub`](crate::Hub) (see the crate's run loop): `handle_text`,
//!   `handle_binary`, `handle_disconnect`, `handle_timeout` at [`PeerjsServer::poll_timeout`], and drain
//!   [`PeerjsServer::poll_output`] after every call.
//! - A frame it could not deliver (full per-connection queue, dead socket) goes back through
//!   [`PeerjsServer::handle_send_failed`], which closes that socket and sends upstream's `LEAVE` to the sender.
//! - Liveness is the client's `HEARTBEAT` (PeerJS sends one every 5 s): no WebSocket pings are needed in this mode (the
//!   driver may still send them; a missed pong is then reported with `handle_disconnect`).
//!
//! # Deviations from upstream (all invisible to a well-behaved PeerJS client)
//!
//! - Timers are exact: a queue expires `expire_timeout` after its first message (upstream checks every second), a
//!   silent socket closes `alive_timeout` after its last `HEARTBEAT` (upstream checks every 300 ms).
//! - One `EXPIRE` per (sender, absent destination) pair; upstream sends one per sender per cleanup pass.
//! - A same-token re-attach closes the previous socket (4008) instead of leaving it open and orphaned.
//! - A re-attach also counts as a sign of life (upstream keeps the old `lastPing`).
//! - `LEAVE` without `dst` unregisters the sender and closes its socket (1000); upstream forgets the id but leaves the
//!   socket open.
//! - Close codes: upstream closes without a status code; here [`close_code::POLICY`] after `ID-TAKEN`/`ERROR`,
//!   1001 after `alive_timeout`, plus Duet's 1009, 4003, 4004, 4008, 4029.
//! - Queues are bounded ([`PeerjsConfig::max_queued_per_peer`]) and frames are size- and rate-limited.
//! - `payload` is forwarded as the client wrote it (byte-identical JSON) instead of re-serialised.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::event::{CloseReason, DropReason, HubEvent, LeaveReason, Output, PeerjsEvent};
use crate::native::push_json_str;
use crate::rate::TokenBucket;
use crate::stats::{CloseCounts, DropCounts};
use crate::{ConnectionId, close_code};

/// Body of upstream's `GET {path}` (its `app.json`), compact JSON.
pub const SERVER_INFO: &str = r#"{"name":"PeerJS Server","description":"A server side element to broker connections between PeerJS clients.","website":"http://peerjs.com/"}"#;

/// Tuning of [`PeerjsServer`]. [`PeerjsConfig::default`] gives upstream's defaults plus Duet's limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerjsConfig {
    /// How long messages for an absent id are kept (upstream `expire_timeout`, default 5 s). Then they are dropped and
    /// each sender still connected gets one `EXPIRE`.
    pub expire_timeout: Duration,
    /// A socket without `HEARTBEAT` for this long is closed (upstream `alive_timeout`; default 60 s, the CLI and
    /// README default).
    pub alive_timeout: Duration,
    /// Ids registered at once across all namespaces (upstream `concurrent_limit`, default 5000). Past it a new id gets
    /// `ERROR` "Server has reached its concurrent user limit" and the socket is closed.
    pub concurrent_limit: usize,
    /// Ids registered at once in one booking's scope (Duet addition, default 4: two participants plus a stale
    /// registration each while a reload's old socket has not timed out yet). Past it: the same `ERROR` and close.
    pub scoped_limit: usize,
    /// Ids registered at once by one participant of a booking (Duet addition, default 2: the live page and a reload
    /// whose old socket has not timed out yet). A participant's registration past it replaces that participant's
    /// oldest id (closed with 4008, its id unregistered), so one participant's session token can never use up the
    /// booking's `scoped_limit` and lock the other participant out.
    pub participant_limit: usize,
    /// Largest accepted frame in bytes (default 65 536). A bigger one closes the socket with 1009.
    pub max_message_bytes: usize,
    /// Sustained per-socket frame rate (token bucket, burst = 2 × rate), default 50/s; over it the socket is closed
    /// with 4029. 0 disables the limit.
    pub messages_per_second: u32,
    /// Messages kept for one absent id (default 128; upstream is unbounded). Further ones are dropped.
    pub max_queued_per_peer: usize,
}

impl Default for PeerjsConfig {
    fn default() -> Self {
        PeerjsConfig {
            expire_timeout: Duration::from_secs(5),
            alive_timeout: Duration::from_secs(60),
            concurrent_limit: 5000,
            scoped_limit: 4,
            participant_limit: 2,
            max_message_bytes: 65_536,
            messages_per_second: 50,
            max_queued_per_peer: 128,
        }
    }
}

/// A booking scope: the registration came with a room token as `key` (research §10.4, "booking scoping").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// Booking id. Messages are only delivered between ids of the same booking.
    pub booking: String,
    /// Participant id (`par_…`) the session token was issued to: [`PeerjsConfig::participant_limit`] counts per
    /// participant.
    pub participant: String,
    /// Monotonic instant of the booking's hard end: every socket of the booking is closed with 4003 then. The newest
    /// registration of a booking sets it.
    pub hard_end_at: Instant,
}

/// One WebSocket upgrade at `{path}peerjs?key=…&id=…&token=…`, after the driver checked the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// Id namespace: the static key (upstream has one realm per server), or the booking id when scoped. Ids are unique
    /// per namespace. Empty: `ERROR` "No id, token, or key supplied to websocket server".
    pub namespace: String,
    /// The client's PeerJS id (query `id`). Empty: the same `ERROR`.
    pub id: String,
    /// The client's secret for this id (query `token`; PeerJS uses a random base-36 string per `Peer`). Empty: the
    /// same `ERROR`.
    pub token: String,
    /// The booking scope, or `None` for the static legacy key (upstream behaviour).
    pub scope: Option<Scope>,
}

/// Upstream's `ERROR` texts (peerjs-server `src/enums.ts` `Errors`), sent as `{"type":"ERROR","payload":{"msg":…}}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerjsError {
    /// "No id, token, or key supplied to websocket server".
    InvalidWsParameters,
    /// "Invalid key provided".
    InvalidKey,
    /// "Server has reached its concurrent user limit".
    ConnectionLimitExceeded,
    /// "Invalid token provided" (defined upstream, never sent by it; available to the driver).
    InvalidToken,
}

impl PeerjsError {
    /// The exact upstream `msg` text.
    pub fn msg(self) -> &'static str {
        match self {
            PeerjsError::InvalidWsParameters => "No id, token, or key supplied to websocket server",
            PeerjsError::InvalidKey => "Invalid key provided",
            PeerjsError::ConnectionLimitExceeded => "Server has reached its concurrent user limit",
            PeerjsError::InvalidToken => "Invalid token provided",
        }
    }
}

/// Counters and gauges of [`PeerjsServer`], read with [`PeerjsServer::stats`]. Gauges are current values; the rest are
/// totals since creation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerjsStats {
    /// Gauge: registered ids, each with its live socket (`duet_signal_connections{mode="peerjs"}`).
    pub connections: usize,
    /// Gauge: messages waiting in queues for absent ids.
    pub queued: usize,
    /// New registrations (`OPEN` sent).
    pub opened_total: u64,
    /// Same-token re-attaches (no `OPEN`).
    pub reattached_total: u64,
    /// `ID-TAKEN` answers.
    pub id_taken_total: u64,
    /// `ERROR` answers (bad parameters, bad key, limits).
    pub errors_total: u64,
    /// Messages delivered to a connected id (directly or from its queue).
    pub relayed_total: u64,
    /// Bytes of delivered message frames.
    pub relayed_bytes: u64,
    /// Messages queued for an absent id.
    pub queued_total: u64,
    /// `EXPIRE` frames sent.
    pub expire_sent: u64,
    /// `LEAVE` frames synthesised after a failed send.
    pub leave_sent: u64,
    /// `HEARTBEAT`s received.
    pub heartbeats: u64,
    /// Sockets closed for silence past `alive_timeout`.
    pub alive_timeouts: u64,
    /// Dropped client frames by reason.
    pub drops: DropCounts,
    /// Sockets closed by the server, by close code.
    pub closes: CloseCounts,
}

/// A registered id. Invariant: `conn` is live in `PeerjsServer::conns` with this namespace and id.
#[derive(Debug)]
struct Client {
    token: String,
    conn: ConnectionId,
    /// Booking of the scope, if any.
    scope: Option<String>,
    /// `last_ping + alive_timeout`, the key of this client's entry in `PeerjsServer::alive`.
    alive_at: Instant,
}

/// Messages for one absent id.
#[derive(Debug)]
struct Queue {
    /// When the first message was queued; the queue expires at `created + expire_timeout`.
    created: Instant,
    messages: Vec<Queued>,
}

#[derive(Debug)]
struct Queued {
    /// Sender id (for `EXPIRE`).
    src: String,
    /// Sender's booking scope: only delivered to a destination of the same scope.
    scope: Option<String>,
    /// The complete frame to deliver.
    text: String,
}

#[derive(Debug, Default)]
struct Namespace {
    clients: HashMap<String, Client>,
    queues: HashMap<String, Queue>,
}

#[derive(Debug)]
struct Conn {
    namespace: String,
    id: String,
    bucket: TokenBucket,
}

#[derive(Debug)]
struct ScopeState {
    hard_end_at: Instant,
    /// Registered connections of the booking with their participant, oldest registration first.
    conns: Vec<(ConnectionId, String)>,
}

impl ScopeState {
    /// The oldest registered connection of `participant` when it holds `limit` or more.
    fn over_limit(&self, participant: &str, limit: usize) -> Option<ConnectionId> {
        let mut of = self.conns.iter().filter(|(_, p)| p == participant);
        let oldest = of.next()?.0;
        (1 + of.count() >= limit).then_some(oldest)
    }
}

/// A parsed client frame (upstream reads `type`, `dst`, `payload`; `src` is always overwritten).
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    dst: Option<&'a RawValue>,
    #[serde(default, borrow)]
    payload: Option<&'a RawValue>,
}

/// The five relayed types upstream registers a transmission handler for.
fn is_relayed(kind: &str) -> bool {
    matches!(kind, "OFFER" | "ANSWER" | "CANDIDATE" | "LEAVE" | "EXPIRE")
}

/// `dst` as upstream sees it: `Ok(None)` when absent or JS-falsy (`null`, `false`, `0`, `""`), `Ok(Some(id))` for a
/// string, `Err(())` for any other value (which could never match a registered id).
fn dst_id(raw: Option<&RawValue>) -> Result<Option<String>, ()> {
    let Some(raw) = raw else { return Ok(None) };
    match raw.get() {
        "null" | "false" | "0" | "\"\"" => return Ok(None),
        _ => {}
    }
    serde_json::from_str::<String>(raw.get()).map(|s| if s.is_empty() { None } else { Some(s) }).map_err(|_| ())
}

/// `{"type":T,"src":S,"dst":D,"payload":P}` in upstream's key order; `payload` omitted when absent (as
/// `JSON.stringify` omits `undefined`), verbatim otherwise.
fn message(kind: &str, src: &str, dst: &str, payload: Option<&RawValue>) -> String {
    let p = payload.map_or(0, |p| p.get().len());
    let mut s = String::with_capacity(48 + kind.len() + src.len() + dst.len() + p);
    s.push_str("{\"type\":");
    push_json_str(&mut s, kind);
    s.push_str(",\"src\":");
    push_json_str(&mut s, src);
    s.push_str(",\"dst\":");
    push_json_str(&mut s, dst);
    if let Some(p) = payload {
        s.push_str(",\"payload\":");
        s.push_str(p.get());
    }
    s.push('}');
    s
}

/// `{"type":"ERROR","payload":{"msg":…}}`.
fn error_frame(msg: &str) -> String {
    let mut s = String::with_capacity(40 + msg.len());
    s.push_str("{\"type\":\"ERROR\",\"payload\":{\"msg\":");
    push_json_str(&mut s, msg);
    s.push_str("}}");
    s
}

/// `{"type":"OPEN"}`.
const OPEN: &str = r#"{"type":"OPEN"}"#;
/// `{"type":"ID-TAKEN","payload":{"msg":"ID is taken"}}`.
const ID_TAKEN: &str = r#"{"type":"ID-TAKEN","payload":{"msg":"ID is taken"}}"#;

/// The sans-IO peerjs-server: registrations per namespace, relay with forced `src`, queues with `EXPIRE`, `HEARTBEAT`
/// liveness and booking scopes. Same driving pattern as [`Hub`](crate::Hub); see the module documentation.
#[derive(Debug)]
pub struct PeerjsServer {
    config: PeerjsConfig,
    namespaces: HashMap<String, Namespace>,
    conns: HashMap<ConnectionId, Conn>,
    scopes: HashMap<String, ScopeState>,
    /// `(client.alive_at, conn)` per registered client.
    alive: BTreeSet<(Instant, ConnectionId)>,
    /// `(queue.created + expire_timeout, namespace, dst)` per queue.
    expiries: BTreeSet<(Instant, String, String)>,
    /// `(hard_end_at, booking)` per scope.
    ends: BTreeSet<(Instant, String)>,
    out: VecDeque<Output>,
    stats: PeerjsStats,
}

impl PeerjsServer {
    /// An empty server.
    pub fn new(config: PeerjsConfig) -> Self {
        PeerjsServer {
            config,
            namespaces: HashMap::new(),
            conns: HashMap::new(),
            scopes: HashMap::new(),
            alive: BTreeSet::new(),
            expiries: BTreeSet::new(),
            ends: BTreeSet::new(),
            out: VecDeque::new(),
            stats: PeerjsStats::default(),
        }
    }

    /// A WebSocket upgraded at `{path}peerjs` (upstream `_onSocketConnection`).
    ///
    /// - Empty `namespace`, `id` or `token`: `{"type":"ERROR","payload":{"msg":"No id, token, or key supplied to
    ///   websocket server"}}`, then Close 1008.
    /// - A scope whose `hard_end_at` is at or before `now`: Close 4003, nothing else.
    /// - `id` registered in the namespace with another token (or another booking):
    ///   `{"type":"ID-TAKEN","payload":{"msg":"ID is taken"}}`, then Close 1008; the registered socket is untouched.
    /// - `id` registered with the same token: this socket takes over the id **without** `OPEN`; the previous socket
    ///   is closed with 4008.
    /// - New `id`: a scoped participant already holding `participant_limit` ids loses its oldest one (Close 4008);
    ///   then past `concurrent_limit` (or `scoped_limit` within the booking) `ERROR` "Server has reached its
    ///   concurrent user limit" then Close 1008; otherwise `{"type":"OPEN"}`.
    ///
    /// After a successful registration or re-attach, messages queued for the id are delivered in order. Reusing the
    /// id of a live connection first disconnects the old one.
    pub fn handle_connect(&mut self, now: Instant, conn: ConnectionId, registration: Registration) {
        if self.conns.contains_key(&conn) {
            self.unregister(conn, None, LeaveReason::Closed);
        }
        let Registration { namespace, id, token, scope } = registration;
        if namespace.is_empty() || id.is_empty() || token.is_empty() {
            self.reject(conn, PeerjsError::InvalidWsParameters);
            return;
        }
        if scope.as_ref().is_some_and(|s| now >= s.hard_end_at) {
            self.close(conn, close_code::OUTSIDE_WINDOW, CloseReason::WindowClosed.text());
            return;
        }
        let booking = scope.as_ref().map(|s| s.booking.clone());
        let existing = self.namespaces.get(&namespace).and_then(|ns| ns.clients.get(&id));
        let reattached = match existing {
            Some(c) if c.token != token || c.scope != booking => {
                self.out.push_back(Output::Send { conn, text: ID_TAKEN.to_owned() });
                self.close(conn, close_code::POLICY, "id taken");
                self.stats.id_taken_total = self.stats.id_taken_total.saturating_add(1);
                self.out.push_back(Output::Event(HubEvent::Peerjs(PeerjsEvent::IdTaken { namespace, id })));
                return;
            }
            Some(c) => {
                let old = c.conn;
                // Close the previous socket without unregistering the id.
                if self.conns.remove(&old).is_some() {
                    self.close(old, close_code::REPLACED, "replaced");
                }
                self.detach_client(&namespace, &id);
                true
            }
            None => {
                let evict = scope.as_ref().and_then(|s| {
                    let state = self.scopes.get(&s.booking)?;
                    state.over_limit(&s.participant, self.config.participant_limit.max(1))
                });
                if let Some(oldest) = evict {
                    // One of the participant's own ids makes way: the counts stay as they are, so no limit applies.
                    self.unregister(oldest, Some((close_code::REPLACED, "replaced")), LeaveReason::Replaced);
                } else {
                    let in_scope = booking.as_ref().and_then(|b| self.scopes.get(b)).map_or(0, |s| s.conns.len());
                    if self.stats.connections >= self.config.concurrent_limit
                        || (booking.is_some() && in_scope >= self.config.scoped_limit)
                    {
                        self.reject(conn, PeerjsError::ConnectionLimitExceeded);
                        return;
                    }
                }
                false
            }
        };

        // Register (or re-register) `id` on `conn`.
        let alive_at = now + self.config.alive_timeout;
        if let Some(s) = &scope {
            self.attach_scope(s, conn);
        }
        let ns = self.namespaces.entry(namespace.clone()).or_default();
        ns.clients.insert(id.clone(), Client { token, conn, scope: booking, alive_at });
        self.alive.insert((alive_at, conn));
        self.conns.insert(
            conn,
            Conn {
                namespace: namespace.clone(),
                id: id.clone(),
                bucket: TokenBucket::new(now, self.config.messages_per_second),
            },
        );
        self.stats.connections = self.conns.len();
        if reattached {
            self.stats.reattached_total = self.stats.reattached_total.saturating_add(1);
        } else {
            self.out.push_back(Output::Send { conn, text: OPEN.to_owned() });
            self.stats.opened_total = self.stats.opened_total.saturating_add(1);
        }
        self.out.push_back(Output::Event(HubEvent::Peerjs(PeerjsEvent::Registered {
            namespace: namespace.clone(),
            id: id.clone(),
            reattached,
        })));
        self.flush(&namespace, &id);
    }

    /// Refuses a socket before registration (e.g. [`PeerjsError::InvalidKey`] for a wrong static key): sends
    /// `{"type":"ERROR","payload":{"msg":…}}` with upstream's text, then Close 1008. The connection is not kept.
    pub fn reject(&mut self, conn: ConnectionId, error: PeerjsError) {
        if self.conns.contains_key(&conn) {
            self.unregister(conn, None, LeaveReason::Closed);
        }
        self.out.push_back(Output::Send { conn, text: error_frame(error.msg()) });
        self.close(conn, close_code::POLICY, "error");
        self.stats.errors_total = self.stats.errors_total.saturating_add(1);
    }

    /// One text frame (upstream `socket.on("message")` and `MessageHandler`).
    ///
    /// - `{"type":"HEARTBEAT"}` refreshes liveness; nothing is sent.
    /// - `OFFER`, `ANSWER`, `CANDIDATE`, `LEAVE`, `EXPIRE` with a string `dst`: delivered to `dst`'s socket as
    ///   `{"type":T,"src":<sender id>,"dst":D,"payload":P}` (`src` forced to the sender's id whatever the client
    ///   wrote, other fields dropped, `payload` verbatim and omitted if absent). Only within the sender's namespace and,
    ///   when scoped, booking.
    /// - `dst` not connected: queued (except `LEAVE` and `EXPIRE`, which are dropped) and delivered if `dst` registers
    ///   within `expire_timeout`; otherwise the sender gets `{"type":"EXPIRE","src":<dst>,"dst":<sender>}` once.
    /// - `LEAVE` without `dst`: the sender's id is unregistered and its socket closed with 1000.
    /// - Anything else (invalid JSON, not an object, another `type`, a non-string `dst`, no `dst`): ignored, nothing
    ///   sent, as upstream.
    /// - Over `max_message_bytes`: Close 1009; over the rate: Close 4029 (the id is unregistered).
    pub fn handle_text(&mut self, now: Instant, conn: ConnectionId, text: &str) {
        if !self.admit_frame(now, conn, text.len()) {
            return;
        }
        if !text.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{') {
            self.drop_frame(DropReason::BadMessage);
            return;
        }
        let Ok(frame) = serde_json::from_str::<Frame<'_>>(text) else {
            self.drop_frame(DropReason::BadMessage);
            return;
        };
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let (namespace, src) = (c.namespace.clone(), c.id.clone());
        if frame.kind == "HEARTBEAT" {
            self.heartbeat(now, conn, &namespace, &src);
            return;
        }
        if !is_relayed(&frame.kind) {
            self.drop_frame(DropReason::BadMessage);
            return;
        }
        let Ok(dst) = dst_id(frame.dst) else {
            self.drop_frame(DropReason::BadMessage);
            return;
        };
        match dst {
            Some(dst) => self.transmit(now, &namespace, &src, &frame.kind, &dst, frame.payload),
            None if frame.kind == "LEAVE" => {
                self.unregister(conn, Some((close_code::NORMAL, "leave")), LeaveReason::Left)
            }
            None => self.drop_frame(DropReason::BadMessage),
        }
    }

    /// A WebSocket ping from the client (the driver's transport answers it with a pong): counted against the message
    /// rate like any frame, so over the rate the socket is closed with 4029 and its id unregistered.
    pub fn handle_ping(&mut self, now: Instant, conn: ConnectionId) {
        let _ = self.admit_frame(now, conn, 0);
    }

    /// A binary frame of `len` bytes: ignored (upstream cannot parse it either). Size and rate limits apply (Close 1009
    /// / 4029).
    pub fn handle_binary(&mut self, now: Instant, conn: ConnectionId, len: usize) {
        if self.admit_frame(now, conn, len) {
            self.drop_frame(DropReason::Binary);
        }
    }

    /// The transport closed: the id is unregistered (a later connection with it gets `OPEN` again). Messages queued
    /// for other ids stay queued. A connection the server no longer knows (closed by the server, or replaced by a
    /// same-token re-attach) is ignored, so its late close never unregisters the new socket (upstream checks
    /// `client.getSocket() === socket` for the same reason).
    pub fn handle_disconnect(&mut self, _now: Instant, conn: ConnectionId) {
        self.unregister(conn, None, LeaveReason::Closed);
    }

    /// The driver could not deliver `text` (an output of this server) to `conn`: its queue is full or the socket is
    /// dead. As upstream's transmission handler does on a failed send, `conn` is closed (1008, reason
    /// `"send failed"`) and unregistered, and if `text` was a relayed message the sender named in its `src` gets
    /// `{"type":"LEAVE","src":<conn's id>,"dst":<sender>}` (if connected; never queued). Unknown `conn`: no-op.
    pub fn handle_send_failed(&mut self, _now: Instant, conn: ConnectionId, text: &str) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let (namespace, failed) = (c.namespace.clone(), c.id.clone());
        let scope =
            self.namespaces.get(&namespace).and_then(|ns| ns.clients.get(&failed)).and_then(|c| c.scope.clone());
        self.unregister(conn, Some((close_code::POLICY, "send failed")), LeaveReason::SendFailed);

        #[derive(Deserialize)]
        struct Sent<'a> {
            #[serde(rename = "type", borrow)]
            kind: Cow<'a, str>,
            #[serde(default, borrow)]
            src: Option<Cow<'a, str>>,
        }
        let Ok(sent) = serde_json::from_str::<Sent<'_>>(text) else {
            return;
        };
        let Some(src) = sent.src.filter(|s| is_relayed(&sent.kind) && **s != failed) else {
            return;
        };
        let Some(to) = self.namespaces.get(&namespace).and_then(|ns| ns.clients.get(&*src)) else {
            return;
        };
        if to.scope == scope {
            let to = to.conn;
            self.out.push_back(Output::Send { conn: to, text: message("LEAVE", &failed, &src, None) });
            self.stats.leave_sent = self.stats.leave_sent.saturating_add(1);
        }
    }

    /// Closes every socket registered in the booking's scope with `reason`'s code (4003, 4004 cancelled, 1001) and
    /// unregisters their ids. Unknown booking: no-op. Messages already queued by them simply expire.
    pub fn close_booking(&mut self, _now: Instant, booking: &str, reason: CloseReason) {
        let Some(scope) = self.scopes.get(booking) else {
            return;
        };
        let conns: Vec<ConnectionId> = scope.conns.iter().map(|(c, _)| *c).collect();
        for conn in conns {
            self.unregister(conn, Some((reason.code(), reason.text())), reason.into());
        }
    }

    /// The booking's hard end moved (a reschedule or an extension): its scoped sockets stay and are closed with 4003
    /// at `hard_end_at` instead; one at or before `now` closes them at once. No scope: no-op. (Addition to the
    /// PeerJS server's behaviour, which has no booking.)
    pub fn update_hard_end(&mut self, now: Instant, booking: &str, hard_end_at: Instant) {
        if now >= hard_end_at {
            return self.close_booking(now, booking, CloseReason::WindowClosed);
        }
        if let Some(state) = self.scopes.get_mut(booking) {
            self.ends.remove(&(state.hard_end_at, booking.to_owned()));
            state.hard_end_at = hard_end_at;
            self.ends.insert((hard_end_at, booking.to_owned()));
        }
    }

    /// Closes every socket (shutdown) and forgets every queue.
    pub fn close_all(&mut self, _now: Instant, reason: CloseReason) {
        let conns: Vec<ConnectionId> = self.conns.keys().copied().collect();
        for conn in conns {
            self.unregister(conn, Some((reason.code(), reason.text())), reason.into());
        }
        self.namespaces.clear();
        self.expiries.clear();
        self.stats.queued = 0;
    }

    /// The next output, in order; `None` when empty.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The next instant [`PeerjsServer::handle_timeout`] has work: a socket's `alive_timeout`, a queue's
    /// `expire_timeout` or a scope's hard end. `None` when nothing is pending.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.alive.first().map(|e| e.0), self.expiries.first().map(|e| e.0), self.ends.first().map(|e| e.0)]
            .into_iter()
            .flatten()
            .min()
    }

    /// Acts on every deadline at or before `now`: closes sockets silent for `alive_timeout` (Close 1001
    /// `"alive timeout"`, id unregistered, as upstream `CheckBrokenConnections`), expires queues unread for
    /// `expire_timeout` (one `EXPIRE` per sender still connected, as upstream `MessagesExpire`), and closes the
    /// sockets of scopes past their hard end with 4003.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, conn)) = self.alive.first() {
            if at > now {
                break;
            }
            self.alive.remove(&(at, conn));
            self.stats.alive_timeouts = self.stats.alive_timeouts.saturating_add(1);
            self.unregister(conn, Some((close_code::SHUTDOWN, "alive timeout")), LeaveReason::Timeout);
        }
        while let Some((at, namespace, dst)) = self.expiries.first().cloned() {
            if at > now {
                break;
            }
            self.expiries.remove(&(at, namespace.clone(), dst.clone()));
            self.expire(&namespace, &dst);
        }
        while let Some((at, booking)) = self.ends.first().cloned() {
            if at > now {
                break;
            }
            self.ends.remove(&(at, booking.clone()));
            let reason = CloseReason::WindowClosed;
            let conns: Vec<ConnectionId> =
                self.scopes.get(&booking).map(|s| s.conns.iter().map(|(c, _)| *c).collect()).unwrap_or_default();
            for conn in conns {
                self.unregister(conn, Some((reason.code(), reason.text())), reason.into());
            }
            self.scopes.remove(&booking);
        }
    }

    /// Whether `id` is registered in `namespace` (for the `GET {path}{key}/id` route: regenerate a taken UUID).
    pub fn is_registered(&self, namespace: &str, id: &str) -> bool {
        self.namespaces.get(namespace).is_some_and(|ns| ns.clients.contains_key(id))
    }

    /// Ids registered in `namespace`, sorted (for `GET {path}{key}/peers` when discovery is allowed).
    pub fn peer_ids(&self, namespace: &str) -> Vec<&str> {
        let mut ids: Vec<&str> = self
            .namespaces
            .get(namespace)
            .map(|ns| ns.clients.keys().map(String::as_str).collect())
            .unwrap_or_default();
        ids.sort_unstable();
        ids
    }

    /// Registered ids (= live sockets).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Counters and gauges.
    pub fn stats(&self) -> &PeerjsStats {
        &self.stats
    }

    // ----- internals -----

    /// Known connection, size limit, rate limit. False when the frame must not be processed.
    fn admit_frame(&mut self, now: Instant, conn: ConnectionId, len: usize) -> bool {
        let rate = self.config.messages_per_second;
        let Some(c) = self.conns.get_mut(&conn) else {
            self.drop_frame(DropReason::UnknownConnection);
            return false;
        };
        if len > self.config.max_message_bytes {
            self.unregister(conn, Some((close_code::TOO_BIG, "too big")), LeaveReason::TooBig);
            return false;
        }
        if !c.bucket.take(now, rate) {
            self.unregister(conn, Some((close_code::RATE_LIMITED, "rate limited")), LeaveReason::RateLimited);
            return false;
        }
        true
    }

    fn heartbeat(&mut self, now: Instant, conn: ConnectionId, namespace: &str, id: &str) {
        self.stats.heartbeats = self.stats.heartbeats.saturating_add(1);
        let alive_at = now + self.config.alive_timeout;
        if let Some(c) = self.namespaces.get_mut(namespace).and_then(|ns| ns.clients.get_mut(id))
            && c.conn == conn
        {
            self.alive.remove(&(c.alive_at, conn));
            c.alive_at = alive_at;
            self.alive.insert((alive_at, conn));
        }
    }

    /// Upstream `TransmissionHandler` for a message with a string `dst`.
    fn transmit(
        &mut self,
        now: Instant,
        namespace: &str,
        src: &str,
        kind: &str,
        dst: &str,
        payload: Option<&RawValue>,
    ) {
        let Some(ns) = self.namespaces.get_mut(namespace) else {
            return;
        };
        let scope = ns.clients.get(src).and_then(|c| c.scope.clone());
        if let Some(to) = ns.clients.get(dst) {
            if to.scope != scope {
                self.drop_frame(DropReason::NoPeer);
                return;
            }
            let to = to.conn;
            let text = message(kind, src, dst, payload);
            self.deliver(to, text);
            return;
        }
        if kind == "LEAVE" || kind == "EXPIRE" {
            self.drop_frame(DropReason::NoPeer);
            return;
        }
        let limit = self.config.max_queued_per_peer;
        let expire = self.config.expire_timeout;
        let queue = ns.queues.entry(dst.to_owned()).or_insert_with(|| {
            self.expiries.insert((now + expire, namespace.to_owned(), dst.to_owned()));
            Queue { created: now, messages: Vec::new() }
        });
        if queue.messages.len() >= limit {
            self.drop_frame(DropReason::QueueFull);
            return;
        }
        queue.messages.push(Queued { src: src.to_owned(), scope, text: message(kind, src, dst, payload) });
        self.stats.queued = self.stats.queued.saturating_add(1);
        self.stats.queued_total = self.stats.queued_total.saturating_add(1);
    }

    fn deliver(&mut self, to: ConnectionId, text: String) {
        self.stats.relayed_total = self.stats.relayed_total.saturating_add(1);
        self.stats.relayed_bytes = self.stats.relayed_bytes.saturating_add(text.len() as u64);
        let bytes = text.len();
        self.out.push_back(Output::Send { conn: to, text });
        self.out.push_back(Output::Event(HubEvent::Relayed { bytes }));
    }

    /// Delivers the queue of `id` (just registered) in order, then forgets it (upstream `wss.on("connection")`).
    fn flush(&mut self, namespace: &str, id: &str) {
        let Some(ns) = self.namespaces.get_mut(namespace) else {
            return;
        };
        let Some(queue) = ns.queues.remove(id) else {
            return;
        };
        let Some((conn, scope)) = ns.clients.get(id).map(|c| (c.conn, c.scope.clone())) else {
            return;
        };
        self.expiries.remove(&(queue.created + self.config.expire_timeout, namespace.to_owned(), id.to_owned()));
        self.stats.queued = self.stats.queued.saturating_sub(queue.messages.len());
        for m in queue.messages {
            if m.scope == scope {
                self.deliver(conn, m.text);
            } else {
                self.drop_frame(DropReason::NoPeer);
            }
        }
    }

    /// Upstream `MessagesExpire.pruneOutstanding` for one destination.
    fn expire(&mut self, namespace: &str, dst: &str) {
        let Some(ns) = self.namespaces.get_mut(namespace) else {
            return;
        };
        let Some(queue) = ns.queues.remove(dst) else {
            return;
        };
        let count = queue.messages.len();
        self.stats.queued = self.stats.queued.saturating_sub(count);
        let mut seen: Vec<&str> = Vec::new();
        for m in &queue.messages {
            if seen.contains(&m.src.as_str()) {
                continue;
            }
            seen.push(&m.src);
            if let Some(sender) = ns.clients.get(&m.src)
                && sender.scope == m.scope
            {
                self.out.push_back(Output::Send { conn: sender.conn, text: message("EXPIRE", dst, &m.src, None) });
                self.stats.expire_sent = self.stats.expire_sent.saturating_add(1);
            }
        }
        if ns.clients.is_empty() && ns.queues.is_empty() {
            self.namespaces.remove(namespace);
        }
        self.out.push_back(Output::Event(HubEvent::Peerjs(PeerjsEvent::Expired {
            namespace: namespace.to_owned(),
            dst: dst.to_owned(),
            messages: count,
        })));
    }

    /// Joins `conn` to its booking scope; the newest registration sets the hard end.
    fn attach_scope(&mut self, scope: &Scope, conn: ConnectionId) {
        let state = self
            .scopes
            .entry(scope.booking.clone())
            .or_insert_with(|| ScopeState { hard_end_at: scope.hard_end_at, conns: Vec::new() });
        if state.conns.is_empty() || state.hard_end_at != scope.hard_end_at {
            self.ends.remove(&(state.hard_end_at, scope.booking.clone()));
            state.hard_end_at = scope.hard_end_at;
            self.ends.insert((scope.hard_end_at, scope.booking.clone()));
        }
        state.conns.push((conn, scope.participant.clone()));
    }

    /// Removes the client record of `id` (if any) with its liveness entry and scope membership; keeps queues.
    fn detach_client(&mut self, namespace: &str, id: &str) -> Option<Client> {
        let client = self.namespaces.get_mut(namespace)?.clients.remove(id)?;
        self.alive.remove(&(client.alive_at, client.conn));
        if let Some(booking) = &client.scope
            && let Some(state) = self.scopes.get_mut(booking)
        {
            state.conns.retain(|(c, _)| *c != client.conn);
            if state.conns.is_empty() {
                self.ends.remove(&(state.hard_end_at, booking.clone()));
                self.scopes.remove(booking);
            }
        }
        Some(client)
    }

    /// Forgets a live connection and its registration: optional Close, `Unregistered` event. Unknown: no-op.
    fn unregister(&mut self, conn: ConnectionId, close: Option<(u16, &'static str)>, reason: LeaveReason) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.stats.connections = self.conns.len();
        if let Some((code, text)) = close {
            self.close(conn, code, text);
        }
        let holds =
            self.namespaces.get(&c.namespace).and_then(|ns| ns.clients.get(&c.id)).is_some_and(|cl| cl.conn == conn);
        if holds {
            self.detach_client(&c.namespace, &c.id);
            self.out.push_back(Output::Event(HubEvent::Peerjs(PeerjsEvent::Unregistered {
                namespace: c.namespace.clone(),
                id: c.id,
                reason,
            })));
        }
        if self.namespaces.get(&c.namespace).is_some_and(|ns| ns.clients.is_empty() && ns.queues.is_empty()) {
            self.namespaces.remove(&c.namespace);
        }
    }

    fn drop_frame(&mut self, reason: DropReason) {
        self.stats.drops.bump(reason);
        self.out.push_back(Output::Event(HubEvent::Dropped { reason }));
    }

    fn close(&mut self, conn: ConnectionId, code: u16, reason: &'static str) {
        self.stats.closes.bump(code);
        self.out.push_back(Output::Close { conn, code, reason });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_upstream_shapes() {
        assert_eq!(
            error_frame(PeerjsError::InvalidKey.msg()),
            r#"{"type":"ERROR","payload":{"msg":"Invalid key provided"}}"#
        );
        assert_eq!(message("EXPIRE", "b", "a", None), r#"{"type":"EXPIRE","src":"b","dst":"a"}"#);
        let p = RawValue::from_string(
            r#"{"sdp":{"type":"offer","sdp":"v=0"},"type":"media","connectionId":"mc_1"}"#.into(),
        )
        .ok();
        assert_eq!(
            message("OFFER", "a", "b", p.as_deref()),
            r#"{"type":"OFFER","src":"a","dst":"b","payload":{"sdp":{"type":"offer","sdp":"v=0"},"type":"media","connectionId":"mc_1"}}"#
        );
        let v: Result<serde_json::Value, _> = serde_json::from_str(SERVER_INFO);
        assert_eq!(v.ok().and_then(|v| v["name"].as_str().map(str::to_owned)).as_deref(), Some("PeerJS Server"));
    }

    #[test]
    fn dst_follows_js_truthiness() {
        let raw = |s: &str| RawValue::from_string(s.to_owned()).ok();
        assert_eq!(dst_id(None), Ok(None));
        for falsy in ["null", "false", "0", "\"\""] {
            assert_eq!(dst_id(raw(falsy).as_deref()), Ok(None), "{falsy}");
        }
        assert_eq!(dst_id(raw("\"b\\u0041\"").as_deref()), Ok(Some("bA".to_owned())));
        assert_eq!(dst_id(raw("7").as_deref()), Err(()));
        assert_eq!(dst_id(raw("[\"b\"]").as_deref()), Err(()));
    }
}
