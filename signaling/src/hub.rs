//! The hub: connections, rooms, timers and the output queue.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use crate::event::{CloseReason, DropReason, HubEvent, LeaveReason, Output};
use crate::native::{self, ClientMsg, ErrorCode};
use crate::rate::TokenBucket;
use crate::room::{Peer, Room};
use crate::stats::Stats;
use crate::{ConnectionId, Mode, Role, close_code, vy};

/// What the daemon has verified (session token, booking live) before handing a socket to the hub.
///
/// The hub trusts these values: it does not re-check the token or the booking.
#[derive(Clone, Debug)]
pub struct Admission {
    /// Booking id, e.g. `"bkg_…"`: the room key.
    pub booking: String,
    /// Participant id `"par_…"`: the peer id on the wire (`you.peer`, `from`, `peer.peer`).
    pub participant: String,
    /// The participant's role, i.e. the slot it takes.
    pub role: Role,
    /// Pre-serialised JSON array of RTCIceServer objects, embedded verbatim in `welcome` as `ice_servers`.
    pub ice_servers: Box<RawValue>,
    /// Pre-serialised JSON object `{host_opens_at, opens_at, join_cutoff_at, hard_end_at}` (RFC 3339 strings),
    /// embedded verbatim in `welcome` as `window`.
    pub window: Box<RawValue>,
    /// Monotonic instant of the booking's `hard_end_at` (DESIGN.md §3): warnings before it, close 4003 at it. The
    /// newest admission of a booking sets the room's hard end (so an extended booking moves it).
    pub hard_end_at: Instant,
    /// The same instant as RFC 3339 text, sent as `closes_at` in `window` warnings.
    pub hard_end_at_rfc3339: String,
}

/// What the daemon has verified before handing a Virtual Y (`vy` mode) socket to the hub
/// ([`Hub::handle_connect_vy`]).
///
/// The Virtual Y client connects to `wss://host:8091/<any path>?meetingId=<id>&isInstructorRole=<true|false>` and
/// cannot present a token: the driver looks the meeting id up as a booking's `external_id`, refuses the upgrade with
/// HTTP 403 outside the join window (and 400 without a `meetingId`), and maps the role with
/// [`VyAdmission::role_from_query`].
///
/// **Room rule:** vy rooms and native rooms are separate even for the same booking id: a vy socket is only ever paired
/// with another vy socket of the same `room`, never with a native socket (the two protocols cannot talk to each
/// other). [`Hub::close_booking`] closes both the native and the vy room of a booking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VyAdmission {
    /// Room key: the booking id (`bkg_…`) when the meeting id matched a booking, or `vy:<meetingId>` for the open relay
    /// (`vy.require_booking = false`, no booking behind it). See [`VyAdmission::booking`] and
    /// [`VyAdmission::open_relay`].
    pub room: String,
    /// Participant id for events and logs only (never on the wire: vy has no peer ids). The driver may pass the
    /// booking's participant of `role`, or an empty string.
    pub participant: String,
    /// The slot: [`Role::Host`] for `isInstructorRole=true` (the simple-peer initiator), [`Role::Guest`] otherwise.
    pub role: Role,
    /// Monotonic instant of the booking's hard end: the room's sockets are closed with 4003 then (no warning frames in
    /// vy mode). `None`: the room never ends on its own (open relay). The newest admission of a room sets it.
    pub hard_end_at: Option<Instant>,
    /// Strict mode (default off, research §10.2 rule 4): drop, silently, frames from this socket that are not a JSON
    /// object with a truthy `sdp`, `candidate`, `renegotiate` or `transceiverRequest`. Off relays everything, as the
    /// Virtual Y server does.
    pub strict: bool,
}

impl VyAdmission {
    /// A vy socket gated by a booking: room = booking id, closed 4003 at `hard_end_at`. Not strict, no participant.
    pub fn booking(booking: impl Into<String>, role: Role, hard_end_at: Instant) -> Self {
        VyAdmission {
            room: booking.into(),
            participant: String::new(),
            role,
            hard_end_at: Some(hard_end_at),
            strict: false,
        }
    }

    /// A vy socket of the open relay (no booking): room `vy:<meeting_id>`, no hard end. Not strict, no participant.
    pub fn open_relay(meeting_id: &str, role: Role) -> Self {
        VyAdmission {
            room: format!("vy:{meeting_id}"),
            participant: String::new(),
            role,
            hard_end_at: None,
            strict: false,
        }
    }

    /// Sets [`strict`](Self::strict).
    pub fn with_strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// Sets [`participant`](Self::participant).
    pub fn with_participant(mut self, participant: impl Into<String>) -> Self {
        self.participant = participant.into();
        self
    }

    /// The slot for the URL-decoded `isInstructorRole` query value, as the Virtual Y server decides it: exactly
    /// `"true"` is the instructor ([`Role::Host`]); anything else, or absent, is the customer ([`Role::Guest`]).
    pub fn role_from_query(is_instructor_role: Option<&str>) -> Role {
        if is_instructor_role == Some("true") { Role::Host } else { Role::Guest }
    }
}

/// A booking's new window after a reschedule or an extension ([`Hub::update_window`]), as verified by the daemon.
#[derive(Clone, Debug)]
pub struct WindowUpdate {
    /// The booking's `sequence` after the change (it went up; session tokens of older sequences are refused by the
    /// daemon on their next connect, the sockets already in the room stay).
    pub sequence: u64,
    /// Pre-serialised JSON object `{host_opens_at, opens_at, join_cutoff_at, hard_end_at}` (RFC 3339 strings), sent
    /// verbatim as `window` in the `{"type":"window","event":"changed"}` frame.
    pub window: Box<RawValue>,
    /// Monotonic instant of the new `hard_end_at`: warnings are planned again before it, close 4003 at it.
    pub hard_end_at: Instant,
    /// The same instant as RFC 3339 text, sent as `closes_at` in later `closing` warnings.
    pub hard_end_at_rfc3339: String,
}

/// Tuning of the hub. [`HubConfig::default`] gives the documented defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubConfig {
    /// Largest accepted frame in bytes (default 65 536, the signalhub cap; a simple-peer SDP is well under it, research
    /// §10.2 rule 5). A bigger frame gets `error too_big` and close 1009 (vy: close 1009 only).
    pub max_message_bytes: usize,
    /// Sustained per-socket frame rate (token bucket, burst = 2 × rate); default 50/s (research §10.2 rule 5, which
    /// leaves room for a trickle-ICE burst of candidates). Over it: `error rate_limited` and close 4029 (vy: close 4029
    /// only). 0 disables the limit.
    pub messages_per_second: u32,
    /// Interval of the driver's WebSocket pings (default 20 s); the hub only reports it in `welcome` as
    /// `ping_interval_s` (whole seconds).
    pub ping_interval: Duration,
    /// Lead times of the `window` closing warnings before `hard_end_at` (default 300 s and 60 s, DESIGN.md §3). Order
    /// does not matter; zero and duplicate entries are ignored. Native rooms only (vy sends nothing but `ready`).
    pub warn_before_end: Vec<Duration>,
    /// How long a WebSocket ping may stay unanswered before its connection stops counting as live (default 5 s).
    /// Only a vy occupant that is not live may be replaced by a newcomer ([`Hub::handle_connect_vy`]).
    pub pong_timeout: Duration,
    /// Most rooms open at once, native and vy together (default 50 000), of which rooms without a hard end (the vy
    /// open relay, which anyone may open) at most half, so anonymous rooms can never refuse a booked meeting. A
    /// connection that would open one more is closed with [`close_code::TRY_AGAIN_LATER`] (1013).
    pub max_rooms: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            max_message_bytes: 65_536,
            messages_per_second: 50,
            ping_interval: Duration::from_secs(20),
            warn_before_end: vec![Duration::from_secs(300), Duration::from_secs(60)],
            pong_timeout: Duration::from_secs(5),
            max_rooms: 50_000,
        }
    }
}

/// Per-connection state. The redundant `room` index makes a relayed signal cost one hash lookup.
#[derive(Debug)]
struct Conn {
    /// Index into `Hub::rooms`.
    room: usize,
    /// The slot this connection holds.
    role: Role,
    /// Native or vy (the same as its room's).
    mode: Mode,
    /// vy strict mode.
    strict: bool,
    /// Message rate limiter.
    bucket: TokenBucket,
    /// When the oldest WebSocket ping still unanswered was sent; `None` when every ping was answered (or any frame
    /// arrived since, which proves the socket alive as well).
    ping_sent_at: Option<Instant>,
}

/// Removes a connection and keeps the gauges in step.
fn remove_conn(conns: &mut HashMap<ConnectionId, Conn>, stats: &mut Stats, conn: ConnectionId) -> Option<Conn> {
    let c = conns.remove(&conn)?;
    stats.connections = conns.len();
    let m = stats.mode_mut(c.mode);
    m.connections = m.connections.saturating_sub(1);
    Some(c)
}

/// The sans-IO signaling hub for native v1 and vy sockets. See the crate documentation for the run loop and the
/// invariants.
#[derive(Debug)]
pub struct Hub {
    config: HubConfig,
    /// `config.warn_before_end` without zeros and duplicates, longest lead first.
    warn: Vec<Duration>,
    /// Live connections. Every entry's room exists and holds this connection in `role`'s slot.
    conns: HashMap<ConnectionId, Conn>,
    /// Room slab; `None` entries are listed in `free_rooms`.
    rooms: Vec<Option<Room>>,
    free_rooms: Vec<usize>,
    /// Booking id -> index into `rooms`, native rooms.
    by_booking: HashMap<String, usize>,
    /// Room key (booking id or `vy:<meetingId>`) -> index into `rooms`, vy rooms.
    by_vy: HashMap<String, usize>,
    /// One entry `(room.deadline, index)` per open room that has a deadline.
    timers: BTreeSet<(Instant, usize)>,
    /// Open rooms without a hard end (vy open relay).
    endless_rooms: usize,
    out: VecDeque<Output>,
    stats: Stats,
}

impl Hub {
    /// An empty hub.
    pub fn new(config: HubConfig) -> Self {
        let mut warn: Vec<Duration> = config.warn_before_end.iter().copied().filter(|d| !d.is_zero()).collect();
        warn.sort_unstable_by(|a, b| b.cmp(a));
        warn.dedup();
        Hub {
            config,
            warn,
            conns: HashMap::new(),
            rooms: Vec::new(),
            free_rooms: Vec::new(),
            by_booking: HashMap::new(),
            by_vy: HashMap::new(),
            timers: BTreeSet::new(),
            endless_rooms: 0,
            out: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// A native v1 socket admitted to its booking's room.
    ///
    /// Sends `welcome`; if the other role is present, `ready` to both with the room's `session` incremented (a
    /// per-room counter starting at 1). If the same role is already connected, the old connection gets Close 4008
    /// "replaced" and the other peer gets `peer-left` (reason `replaced`) and then `ready` again with a new session.
    /// If `now` is already at or past `admission.hard_end_at`, the socket is closed with 4003 and nothing else
    /// happens. Reusing the id of a live connection first disconnects the old one (as [`Hub::handle_disconnect`]).
    pub fn handle_connect(&mut self, now: Instant, conn: ConnectionId, admission: Admission) {
        if self.conns.contains_key(&conn) {
            self.detach(conn, LeaveReason::Closed, None);
        }
        if now >= admission.hard_end_at {
            self.close(conn, close_code::OUTSIDE_WINDOW, CloseReason::WindowClosed.text());
            return;
        }
        let Admission { booking, participant, role, ice_servers, window, hard_end_at, hard_end_at_rfc3339 } = admission;

        let Some(idx) = self.room_for(now, Mode::Native, booking.clone(), Some(hard_end_at), hard_end_at_rfc3339)
        else {
            self.refuse(conn, booking, role, close_code::TRY_AGAIN_LATER, "too many rooms");
            return;
        };
        let Some(room) = self.rooms.get_mut(idx).and_then(Option::as_mut) else {
            // Unreachable: `room_for` returns the index of an open room.
            return;
        };

        // Newest connection per role wins.
        if let Some(old) = room.take(role) {
            remove_conn(&mut self.conns, &mut self.stats, old.conn);
            self.stats.closes.bump(close_code::REPLACED);
            self.out.push_back(Output::Close { conn: old.conn, code: close_code::REPLACED, reason: "replaced" });
            if let Some(partner) = room.slot(role.other()) {
                self.out.push_back(Output::Send {
                    conn: partner.conn,
                    text: native::peer_left(room.session, &old.participant, LeaveReason::Replaced.peer_left_reason()),
                });
            }
            self.out.push_back(Output::Event(HubEvent::Left {
                booking: room.booking.clone(),
                participant: old.participant,
                role,
                reason: LeaveReason::Replaced,
            }));
        }

        self.out.push_back(Output::Send {
            conn,
            text: native::welcome(&native::Welcome {
                booking: &room.booking,
                participant: &participant,
                role,
                ice_servers: &ice_servers,
                window: &window,
                ping_interval_s: self.config.ping_interval.as_secs(),
            }),
        });
        self.out.push_back(Output::Event(HubEvent::Joined {
            booking: room.booking.clone(),
            participant: participant.clone(),
            role,
        }));
        let paired = room.occupy(role, Peer { conn, participant });
        self.insert_conn(
            now,
            conn,
            Conn { room: idx, role, mode: Mode::Native, strict: false, bucket: self.bucket(now), ping_sent_at: None },
        );

        let Some(room) = self.rooms.get(idx).and_then(Option::as_ref) else {
            return;
        };
        if let Some(session) = paired {
            // Both slots are occupied right after `occupy` returned a session.
            if let (Some(me), Some(partner)) = (room.slot(role), room.slot(role.other())) {
                self.out.push_back(Output::Send {
                    conn: me.conn,
                    text: native::ready(session, &partner.participant, role.other()),
                });
                self.out.push_back(Output::Send {
                    conn: partner.conn,
                    text: native::ready(session, &me.participant, role),
                });
            }
            self.out.push_back(Output::Event(HubEvent::Ready { booking: room.booking.clone(), session }));
            self.count_ready(Mode::Native);
        }
    }

    /// A Virtual Y socket (`vy` mode) admitted to its room (research/signaling.md §10.2).
    ///
    /// Nothing is sent to the new socket on connect. When this completes the pair, the exact 5-byte text `ready` goes
    /// to both sockets (this connection first), every time, including after either side reconnects, as the Virtual Y
    /// server's `sendAll('ready')` does. If `now` is at or past `hard_end_at`, the socket is closed with 4003 and
    /// nothing else happens. Reusing the id of a live connection first disconnects the old one.
    ///
    /// **Occupied slot.** The vy protocol has no credential per participant: the role is whatever the client's
    /// `isInstructorRole` says. So unlike native mode, a newcomer never displaces a *live* occupant (one with no
    /// WebSocket ping unanswered for longer than [`HubConfig::pong_timeout`], see [`Hub::handle_ping_sent`] and
    /// [`Hub::handle_pong`]): the newcomer is closed with [`close_code::ROOM_FULL`] (4009, reason `"slot taken"`) and
    /// receives no frame of the room, and the occupant gets a liveness probe ([`Output::Ping`]) unless one is already
    /// out. An occupant that is not live is closed with 4008 "replaced" and the newcomer takes the slot; its partner is
    /// told nothing. The Virtual Y client retries every second whatever the close code, so a participant whose old
    /// socket died silently is back within `pong_timeout` plus one retry; one whose old socket closed is back at once.
    /// Past [`HubConfig::max_rooms`] a newcomer that would open a room is closed with 1013.
    ///
    /// The driver answers WebSocket pings itself (e.g. every 20 s, closing after 2 missed pongs, then
    /// [`Hub::handle_liveness_timeout`]); the hub never sends any keepalive frame in vy mode.
    pub fn handle_connect_vy(&mut self, now: Instant, conn: ConnectionId, admission: VyAdmission) {
        if self.conns.contains_key(&conn) {
            self.detach(conn, LeaveReason::Closed, None);
        }
        if admission.hard_end_at.is_some_and(|end| now >= end) {
            self.close(conn, close_code::OUTSIDE_WINDOW, CloseReason::WindowClosed.text());
            return;
        }
        let VyAdmission { room: key, participant, role, hard_end_at, strict } = admission;
        let occupant = self.by_vy.get(&key).and_then(|&i| self.rooms.get(i)?.as_ref()?.slot(role)).map(|p| p.conn);
        if let Some(occupant) = occupant
            && self.is_live(now, occupant)
        {
            self.refuse(conn, key, role, close_code::ROOM_FULL, "slot taken");
            if let Some(c) = self.conns.get_mut(&occupant)
                && c.ping_sent_at.is_none()
            {
                c.ping_sent_at = Some(now);
                self.out.push_back(Output::Ping { conn: occupant });
            }
            return;
        }
        let Some(idx) = self.room_for(now, Mode::Vy, key.clone(), hard_end_at, String::new()) else {
            self.refuse(conn, key, role, close_code::TRY_AGAIN_LATER, "too many rooms");
            return;
        };
        let Some(room) = self.rooms.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        if let Some(old) = room.take(role) {
            remove_conn(&mut self.conns, &mut self.stats, old.conn);
            self.stats.closes.bump(close_code::REPLACED);
            self.out.push_back(Output::Close { conn: old.conn, code: close_code::REPLACED, reason: "replaced" });
            self.out.push_back(Output::Event(HubEvent::Left {
                booking: room.booking.clone(),
                participant: old.participant,
                role,
                reason: LeaveReason::Replaced,
            }));
        }
        self.out.push_back(Output::Event(HubEvent::Joined {
            booking: room.booking.clone(),
            participant: participant.clone(),
            role,
        }));
        let paired = room.occupy(role, Peer { conn, participant });
        if let (Some(session), Some(partner)) = (paired, room.slot(role.other())) {
            self.out.push_back(Output::Send { conn, text: vy::READY.to_owned() });
            self.out.push_back(Output::Send { conn: partner.conn, text: vy::READY.to_owned() });
            self.out.push_back(Output::Event(HubEvent::Ready { booking: room.booking.clone(), session }));
            self.count_ready(Mode::Vy);
        }
        self.insert_conn(
            now,
            conn,
            Conn { room: idx, role, mode: Mode::Vy, strict, bucket: self.bucket(now), ping_sent_at: None },
        );
    }

    /// The driver sent a WebSocket ping to `conn` (its periodic keepalive, or an [`Output::Ping`] probe). Until a pong
    /// or any frame arrives ([`Hub::handle_pong`], [`Hub::handle_text`], ...), the connection counts as live for
    /// [`HubConfig::pong_timeout`] from the first such ping. Unknown connection: no-op.
    pub fn handle_ping_sent(&mut self, now: Instant, conn: ConnectionId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.ping_sent_at.get_or_insert(now);
        }
    }

    /// A WebSocket pong arrived from `conn`: it is live (every ping so far is answered). Unknown connection: no-op.
    pub fn handle_pong(&mut self, _now: Instant, conn: ConnectionId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.ping_sent_at = None;
        }
    }

    /// A WebSocket ping arrived from `conn` (the driver's transport answers it with a pong). It proves the socket live
    /// and counts against the per-socket message rate like any frame: over the rate the socket is closed with 4029
    /// (native: after `error rate_limited`), so a client cannot make the server write pongs without limit.
    pub fn handle_ping(&mut self, now: Instant, conn: ConnectionId) {
        let _ = self.admit_frame(now, conn, 0);
    }

    /// Whether `conn` is live at `now`: known, and no ping unanswered for longer than [`HubConfig::pong_timeout`].
    pub fn is_live(&self, now: Instant, conn: ConnectionId) -> bool {
        self.conns
            .get(&conn)
            .is_some_and(|c| c.ping_sent_at.is_none_or(|t| now.saturating_duration_since(t) < self.config.pong_timeout))
    }

    /// One text frame from a connection.
    ///
    /// **Native v1.** Client messages: `{"type":"signal","session":N?,"data":{…}}`, `{"type":"ping","t":…}`,
    /// `{"type":"leave"}`.
    /// - `signal` is relayed to the partner as `{"type":"signal","session":N,"from":"<participant>","data":<data>}`
    ///   with `data` byte-identical. No partner: `error no_peer` (dropped, never queued). `session` present and not the
    ///   room's current one: `error stale_session` (dropped). `data` not an object with a truthy `sdp`, `candidate`,
    ///   `renegotiate` or `transceiverRequest`: `error bad_message`.
    /// - `ping` gets `{"type":"pong","t":<t verbatim>}`.
    /// - `leave` closes the socket with 1000 and the partner gets `peer-left` (reason `left`).
    /// - Invalid JSON, a non-object or an unknown `type`: `error bad_message`; the socket stays open.
    /// - Text longer than `max_message_bytes`: `error too_big`, then Close 1009. Over the message rate: `error
    ///   rate_limited`, then Close 4029. The partner gets `peer-left` (reason `closed`) in both cases.
    ///
    /// **vy.** The frame goes to the other slot byte-identical if it is occupied, otherwise it is dropped (never
    /// queued, never delivered later). In strict mode a frame that is not a simple-peer signal object is dropped. Over
    /// the size limit: Close 1009; over the rate: Close 4029. Nothing else is ever sent: no error frames, nothing to
    /// the partner when a socket goes.
    ///
    /// A frame for an unknown (closed or replaced) connection is counted as dropped and ignored.
    pub fn handle_text(&mut self, now: Instant, conn: ConnectionId, text: &str) {
        let Some((room_idx, role, mode, strict)) = self.admit_frame(now, conn, text.len()) else {
            return;
        };
        if mode == Mode::Vy {
            self.relay_vy(room_idx, role, strict, text);
            return;
        }
        let msg = match native::parse(text) {
            Ok(msg) => msg,
            Err(e) => {
                self.reject(conn, ErrorCode::BadMessage, e.message(), DropReason::BadMessage);
                return;
            }
        };
        match msg {
            ClientMsg::Signal { session, data } => self.relay(conn, room_idx, role, session, data),
            ClientMsg::Ping { t } => {
                self.stats.pongs = self.stats.pongs.saturating_add(1);
                self.out.push_back(Output::Send { conn, text: native::pong(t) });
            }
            ClientMsg::Leave => {
                self.detach(conn, LeaveReason::Left, Some((close_code::NORMAL, "left")));
            }
        }
    }

    /// A binary frame of `len` bytes. Binary frames are not part of native v1: `error bad_message`, dropped. In vy mode
    /// they are dropped silently (a relayed one would break the client's `JSON.parse`). Size and rate limits apply as
    /// for text (Close 1009 / 4029).
    pub fn handle_binary(&mut self, now: Instant, conn: ConnectionId, len: usize) {
        match self.admit_frame(now, conn, len) {
            Some((_, _, Mode::Vy, _)) => self.drop_frame(DropReason::Binary),
            Some(_) => self.reject(
                conn,
                ErrorCode::BadMessage,
                "binary frames are not supported; send JSON text",
                DropReason::Binary,
            ),
            None => {}
        }
    }

    /// The transport closed. The partner gets `peer-left` (reason `closed`) in native mode, nothing in vy mode.
    ///
    /// A connection the hub no longer knows (already closed by the hub, or replaced by a newer connection for its
    /// role) is ignored, so the late close of a replaced socket never clears its replacement's slot (the Virtual Y
    /// close race, research/signaling.md §1.3).
    pub fn handle_disconnect(&mut self, _now: Instant, conn: ConnectionId) {
        self.detach(conn, LeaveReason::Closed, None);
    }

    /// The driver's WebSocket pings went unanswered and it dropped the connection: like [`Hub::handle_disconnect`],
    /// but the partner's `peer-left` says `timeout` (native; nothing in vy). (Addition to the API contract.)
    pub fn handle_liveness_timeout(&mut self, _now: Instant, conn: ConnectionId) {
        self.detach(conn, LeaveReason::Timeout, None);
    }

    /// Closes every socket of the booking's rooms (the native room and the vy room keyed by this string) with
    /// `reason`'s code (4003 window closed, 4004 cancelled, 1001 shutdown) and forgets them (a room's session counter
    /// restarts if the booking is admitted again). For a vy open relay pass its room key `vy:<meetingId>`. Unknown
    /// booking: no-op.
    pub fn close_booking(&mut self, _now: Instant, booking: &str, reason: CloseReason) {
        let rooms = [self.by_booking.get(booking).copied(), self.by_vy.get(booking).copied()];
        for idx in rooms.into_iter().flatten() {
            self.close_room(idx, reason);
        }
    }

    /// Closes the native socket of `participant` in `booking`'s room with `code` and `reason` (the daemon sends 4001
    /// after a link rotation and 4004 after a revocation) and frees its slot; the partner gets `peer-left` with
    /// `closed` and stays. No socket of that participant: no-op. (Addition to the API contract.)
    pub fn close_participant(
        &mut self,
        _now: Instant,
        booking: &str,
        participant: &str,
        code: u16,
        reason: &'static str,
    ) {
        let Some(room) = self.by_booking.get(booking).and_then(|&i| self.rooms.get(i)).and_then(Option::as_ref) else {
            return;
        };
        let conn = [Role::Host, Role::Guest]
            .into_iter()
            .filter_map(|role| room.slot(role))
            .find(|p| p.participant == participant)
            .map(|p| p.conn);
        if let Some(conn) = conn {
            self.detach(conn, LeaveReason::Closed, Some((code, reason)));
        }
    }

    /// The booking's window moved (a reschedule or an extension; README, "Reschedule and extend"). The
    /// booking's native and vy rooms keep their sockets and session and take the new hard end: the `closing` warnings
    /// are planned again from `now` (a warning already sent for the old end is sent again before the new one), and
    /// the room closes with 4003 at the new hard end instead of the old one. Every socket of the native room gets
    /// `{"type":"window","event":"changed","sequence":N,"window":{…}}`; vy sockets get nothing (the vy protocol has
    /// no such frame). A hard end at or before `now` closes the rooms with 4003 at once. No room: no-op (the next
    /// admission carries the new window anyway). (Addition to the API contract.)
    pub fn update_window(&mut self, now: Instant, booking: &str, update: WindowUpdate) {
        if now >= update.hard_end_at {
            return self.close_booking(now, booking, CloseReason::WindowClosed);
        }
        let rooms = [self.by_booking.get(booking).copied(), self.by_vy.get(booking).copied()];
        for idx in rooms.into_iter().flatten() {
            let Some(room) = self.rooms.get_mut(idx).and_then(Option::as_mut) else {
                continue;
            };
            let warn: &[Duration] = if room.mode == Mode::Native { &self.warn } else { &[] };
            if let Some(d) = room.deadline {
                self.timers.remove(&(d, idx));
            }
            room.hard_end_at = Some(update.hard_end_at);
            room.hard_end_at_rfc3339.clone_from(&update.hard_end_at_rfc3339);
            room.schedule(now, warn);
            if let Some(d) = room.deadline {
                self.timers.insert((d, idx));
            }
            if room.mode == Mode::Native {
                let text = native::window_changed(update.sequence, &update.window);
                for (_, peer) in room.peers() {
                    self.out.push_back(Output::Send { conn: peer.conn, text: text.clone() });
                }
            }
        }
    }

    /// Closes every room and socket (shutdown).
    pub fn close_all(&mut self, _now: Instant, reason: CloseReason) {
        for idx in 0..self.rooms.len() {
            self.close_room(idx, reason);
        }
    }

    /// The next output, in the order the hub produced them; `None` when the queue is empty.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The next instant [`Hub::handle_timeout`] has work: the earliest pending window warning (T-5 min, T-1 min by
    /// default, native rooms) or hard end among all rooms. `None` when no open room has a hard end.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|&(at, _)| at)
    }

    /// Acts on every deadline at or before `now`: sends `{"type":"window","event":"closing","closes_at":…,
    /// "in_s":N}` to a native room's sockets (`in_s` = whole seconds left, rounded; if several warnings are overdue
    /// only the latest is sent), and at `hard_end_at` closes the room's sockets with 4003 and forgets the room (vy
    /// rooms: only the close, no frame).
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, idx)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, idx));
            let Some(room) = self.rooms.get_mut(idx).and_then(Option::as_mut) else {
                continue;
            };
            let Some(hard_end_at) = room.hard_end_at else {
                room.deadline = None;
                continue;
            };
            if now >= hard_end_at {
                self.close_room(idx, CloseReason::WindowClosed);
                continue;
            }
            let warn: &[Duration] = if room.mode == Mode::Native { &self.warn } else { &[] };
            // The latest warning already due; `room.next_warning` is due because `at` is its deadline.
            let mut i = room.next_warning;
            while i + 1 < warn.len() && room.deadline_from(i + 1, warn).is_some_and(|d| d <= now) {
                i += 1;
            }
            if i < warn.len() {
                let left = hard_end_at.saturating_duration_since(now);
                let in_s = u64::try_from(left.as_millis().saturating_add(500) / 1000).unwrap_or(u64::MAX);
                for (_, peer) in room.peers() {
                    self.out.push_back(Output::Send {
                        conn: peer.conn,
                        text: native::window_closing(&room.hard_end_at_rfc3339, in_s),
                    });
                    self.stats.window_warnings = self.stats.window_warnings.saturating_add(1);
                }
            }
            room.next_warning = (i + 1).min(warn.len());
            room.deadline = room.deadline_from(room.next_warning, warn);
            if let Some(d) = room.deadline {
                self.timers.insert((d, idx));
            }
        }
    }

    /// Counters and gauges (totals and per mode).
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Connections currently holding a slot (native and vy).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Rooms currently open (native and vy).
    pub fn room_count(&self) -> usize {
        self.by_booking.len() + self.by_vy.len()
    }

    // ----- internals -----

    /// A full token bucket for a new connection.
    fn bucket(&self, now: Instant) -> TokenBucket {
        TokenBucket::new(now, self.config.messages_per_second)
    }

    /// Registers an admitted connection and counts it.
    fn insert_conn(&mut self, _now: Instant, conn: ConnectionId, c: Conn) {
        let mode = c.mode;
        self.conns.insert(conn, c);
        self.stats.connections = self.conns.len();
        self.stats.connections_total = self.stats.connections_total.saturating_add(1);
        let m = self.stats.mode_mut(mode);
        m.connections = m.connections.saturating_add(1);
        m.connections_total = m.connections_total.saturating_add(1);
    }

    fn count_ready(&mut self, mode: Mode) {
        self.stats.ready_total = self.stats.ready_total.saturating_add(1);
        let m = self.stats.mode_mut(mode);
        m.ready_total = m.ready_total.saturating_add(1);
    }

    fn count_relayed(&mut self, mode: Mode, bytes: usize) {
        self.out.push_back(Output::Event(HubEvent::Relayed { bytes }));
        self.stats.signals_relayed = self.stats.signals_relayed.saturating_add(1);
        self.stats.signal_bytes_relayed =
            self.stats.signal_bytes_relayed.saturating_add(u64::try_from(bytes).unwrap_or(u64::MAX));
        let m = self.stats.mode_mut(mode);
        m.relayed = m.relayed.saturating_add(1);
    }

    fn sync_room_gauges(&mut self) {
        self.stats.rooms = self.by_booking.len() + self.by_vy.len();
        self.stats.native.rooms = self.by_booking.len();
        self.stats.vy.rooms = self.by_vy.len();
    }

    /// The index of the room `key` of `mode`, opening it if needed; the newest admission sets the hard end. `None`
    /// when the room is not open and [`HubConfig::max_rooms`] are.
    fn room_for(
        &mut self,
        now: Instant,
        mode: Mode,
        key: String,
        hard_end_at: Option<Instant>,
        rfc3339: String,
    ) -> Option<usize> {
        let open_rooms = self.by_booking.len() + self.by_vy.len();
        let warn: &[Duration] = if mode == Mode::Native { &self.warn } else { &[] };
        let map = if mode == Mode::Native { &mut self.by_booking } else { &mut self.by_vy };
        if let Some(&idx) = map.get(&key)
            && let Some(room) = self.rooms.get_mut(idx).and_then(Option::as_mut)
        {
            if room.hard_end_at != hard_end_at || room.hard_end_at_rfc3339 != rfc3339 {
                if let Some(d) = room.deadline {
                    self.timers.remove(&(d, idx));
                }
                room.hard_end_at = hard_end_at;
                room.hard_end_at_rfc3339 = rfc3339;
                room.schedule(now, warn);
                if let Some(d) = room.deadline {
                    self.timers.insert((d, idx));
                }
            }
            return Some(idx);
        }
        if open_rooms >= self.config.max_rooms
            || (hard_end_at.is_none() && self.endless_rooms >= self.config.max_rooms / 2)
        {
            return None;
        }
        if hard_end_at.is_none() {
            self.endless_rooms += 1;
        }
        let mut room = Room::new(key.clone(), mode, hard_end_at, rfc3339);
        room.schedule(now, warn);
        let deadline = room.deadline;
        let idx = match self.free_rooms.pop() {
            Some(idx) if idx < self.rooms.len() => {
                self.rooms[idx] = Some(room);
                idx
            }
            _ => {
                self.rooms.push(Some(room));
                self.rooms.len() - 1
            }
        };
        if let Some(d) = deadline {
            self.timers.insert((d, idx));
        }
        map.insert(key.clone(), idx);
        self.sync_room_gauges();
        self.stats.rooms_total = self.stats.rooms_total.saturating_add(1);
        self.out.push_back(Output::Event(HubEvent::RoomOpened { booking: key }));
        Some(idx)
    }

    /// Closes a newcomer that gets no slot, with `code`, before it receives anything of the room.
    fn refuse(&mut self, conn: ConnectionId, booking: String, role: Role, code: u16, reason: &'static str) {
        self.close(conn, code, reason);
        self.out.push_back(Output::Event(HubEvent::Refused { booking, role, code }));
    }

    /// Common gate for every client frame: known connection, size limit, rate limit. Returns the connection's room,
    /// role, mode and strictness when the frame may be processed. Native sockets get an `error` frame before the
    /// close; vy sockets only the close.
    fn admit_frame(&mut self, now: Instant, conn: ConnectionId, len: usize) -> Option<(usize, Role, Mode, bool)> {
        let rate = self.config.messages_per_second;
        let Some(c) = self.conns.get_mut(&conn) else {
            self.drop_frame(DropReason::UnknownConnection);
            return None;
        };
        c.ping_sent_at = None;
        let (room, role, mode, strict) = (c.room, c.role, c.mode, c.strict);
        if len > self.config.max_message_bytes {
            if mode == Mode::Native {
                self.out.push_back(Output::Send {
                    conn,
                    text: native::error(ErrorCode::TooBig, "frame exceeds the size limit"),
                });
            }
            self.detach(conn, LeaveReason::TooBig, Some((close_code::TOO_BIG, "too big")));
            return None;
        }
        if !c.bucket.take(now, rate) {
            if mode == Mode::Native {
                self.out.push_back(Output::Send {
                    conn,
                    text: native::error(ErrorCode::RateLimited, "message rate exceeded"),
                });
            }
            self.detach(conn, LeaveReason::RateLimited, Some((close_code::RATE_LIMITED, "rate limited")));
            return None;
        }
        Some((room, role, mode, strict))
    }

    /// Relays one validated signal to the partner, or answers `no_peer` / `stale_session`.
    fn relay(&mut self, conn: ConnectionId, room_idx: usize, role: Role, session: Option<u64>, data: &RawValue) {
        let Some(room) = self.rooms.get(room_idx).and_then(Option::as_ref) else {
            return;
        };
        let (Some(me), Some(partner)) = (room.slot(role), room.slot(role.other())) else {
            self.reject(conn, ErrorCode::NoPeer, "no peer connected; signal dropped", DropReason::NoPeer);
            return;
        };
        if session.is_some_and(|s| s != room.session) {
            self.reject(conn, ErrorCode::StaleSession, "signal for an old session; dropped", DropReason::StaleSession);
            return;
        }
        self.out
            .push_back(Output::Send { conn: partner.conn, text: native::signal(room.session, &me.participant, data) });
        self.count_relayed(Mode::Native, data.get().len());
    }

    /// vy: the frame verbatim to the partner slot, or a silent drop.
    fn relay_vy(&mut self, room_idx: usize, role: Role, strict: bool, text: &str) {
        if strict && !vy::is_strict_signal(text) {
            self.drop_frame(DropReason::BadMessage);
            return;
        }
        let Some(partner) = self.rooms.get(room_idx).and_then(Option::as_ref).and_then(|r| r.slot(role.other())) else {
            self.drop_frame(DropReason::NoPeer);
            return;
        };
        self.out.push_back(Output::Send { conn: partner.conn, text: text.to_owned() });
        self.count_relayed(Mode::Vy, text.len());
    }

    /// Sends an `error` frame to `conn` and counts the drop.
    fn reject(&mut self, conn: ConnectionId, code: ErrorCode, message: &str, reason: DropReason) {
        self.out.push_back(Output::Send { conn, text: native::error(code, message) });
        self.drop_frame(reason);
    }

    fn drop_frame(&mut self, reason: DropReason) {
        self.stats.drops.bump(reason);
        self.out.push_back(Output::Event(HubEvent::Dropped { reason }));
    }

    /// Pushes a Close output and counts it.
    fn close(&mut self, conn: ConnectionId, code: u16, reason: &'static str) {
        self.stats.closes.bump(code);
        self.out.push_back(Output::Close { conn, code, reason });
    }

    /// Removes a known connection from its slot: optional Close, `Left` event, `peer-left` to a native partner.
    /// Unknown connections are ignored (this is the close-race fix together with `Room::vacate`).
    fn detach(&mut self, conn: ConnectionId, reason: LeaveReason, close: Option<(u16, &'static str)>) {
        let Some(c) = remove_conn(&mut self.conns, &mut self.stats, conn) else {
            return;
        };
        if let Some((code, text)) = close {
            self.close(conn, code, text);
        }
        let Some(room) = self.rooms.get_mut(c.room).and_then(Option::as_mut) else {
            return;
        };
        let Some(peer) = room.vacate(c.role, conn) else {
            return;
        };
        if room.mode == Mode::Native
            && let Some(partner) = room.slot(c.role.other())
        {
            self.out.push_back(Output::Send {
                conn: partner.conn,
                text: native::peer_left(room.session, &peer.participant, reason.peer_left_reason()),
            });
        }
        self.out.push_back(Output::Event(HubEvent::Left {
            booking: room.booking.clone(),
            participant: peer.participant,
            role: c.role,
            reason,
        }));
        // A room without a hard end (vy open relay) would never be closed by a timer: forget it when it empties.
        let empty_without_end = room.hard_end_at.is_none() && room.peers().next().is_none();
        if empty_without_end && let Some(room) = self.forget_room(c.room) {
            self.out.push_back(Output::Event(HubEvent::RoomFreed { booking: room.booking }));
        }
    }

    /// Removes room `idx` from the slab, its index and the timers, and returns it (its slots untouched).
    fn forget_room(&mut self, idx: usize) -> Option<Room> {
        let room = self.rooms.get_mut(idx).and_then(Option::take)?;
        if room.hard_end_at.is_none() {
            self.endless_rooms = self.endless_rooms.saturating_sub(1);
        }
        if let Some(d) = room.deadline {
            self.timers.remove(&(d, idx));
        }
        if room.mode == Mode::Native {
            self.by_booking.remove(&room.booking);
        } else {
            self.by_vy.remove(&room.booking);
        }
        self.free_rooms.push(idx);
        self.sync_room_gauges();
        Some(room)
    }

    /// Closes every connection of room `idx` and forgets the room.
    fn close_room(&mut self, idx: usize, reason: CloseReason) {
        let Some(mut room) = self.forget_room(idx) else {
            return;
        };
        for role in [Role::Host, Role::Guest] {
            let Some(peer) = room.take(role) else {
                continue;
            };
            remove_conn(&mut self.conns, &mut self.stats, peer.conn);
            self.close(peer.conn, reason.code(), reason.text());
            self.out.push_back(Output::Event(HubEvent::Left {
                booking: room.booking.clone(),
                participant: peer.participant,
                role,
                reason: reason.into(),
            }));
        }
        self.sync_room_gauges();
        self.out.push_back(Output::Event(HubEvent::RoomClosed { booking: room.booking, reason }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(t0: Instant, booking: &str, role: Role) -> Admission {
        let raw = |s: &str| RawValue::from_string(s.to_owned());
        let (Ok(ice_servers), Ok(window)) = (raw("[]"), raw("{}")) else { panic!("constant JSON") };
        Admission {
            booking: booking.to_owned(),
            participant: format!("par_{}", role.as_str()),
            role,
            ice_servers,
            window,
            hard_end_at: t0 + Duration::from_secs(3600),
            hard_end_at_rfc3339: "2026-01-01T11:15:00Z".to_owned(),
        }
    }

    /// Internal indices agree: every connection's room holds it in its slot, one timer per open room.
    fn assert_consistent(hub: &Hub) {
        for (id, c) in &hub.conns {
            let room = hub.rooms[c.room].as_ref();
            assert_eq!(room.and_then(|r| r.slot(c.role)).map(|p| p.conn), Some(*id));
        }
        let timed = hub.rooms.iter().flatten().filter(|r| r.deadline.is_some()).count();
        assert_eq!(hub.timers.len(), timed);
        for &(at, idx) in &hub.timers {
            let room = hub.rooms[idx].as_ref();
            assert_eq!(room.and_then(|r| r.deadline), Some(at));
        }
        for (map, mode) in [(&hub.by_booking, Mode::Native), (&hub.by_vy, Mode::Vy)] {
            for (booking, &idx) in map {
                let room = hub.rooms[idx].as_ref();
                assert_eq!(room.map(|r| (r.booking.as_str(), r.mode)), Some((booking.as_str(), mode)));
            }
        }
        assert_eq!(hub.stats.connections, hub.conns.len());
        assert_eq!(hub.stats.rooms, hub.by_booking.len() + hub.by_vy.len());
        let vy = hub.conns.values().filter(|c| c.mode == Mode::Vy).count();
        assert_eq!((hub.stats.vy.connections, hub.stats.native.connections), (vy, hub.conns.len() - vy));
        for c in hub.conns.values() {
            assert_eq!(hub.rooms[c.room].as_ref().map(|r| r.mode), Some(c.mode));
        }
    }

    #[test]
    fn warn_list_is_sorted_descending_without_zero_or_duplicates() {
        let hub = Hub::new(HubConfig {
            warn_before_end: vec![
                Duration::from_secs(60),
                Duration::ZERO,
                Duration::from_secs(300),
                Duration::from_secs(60),
            ],
            ..HubConfig::default()
        });
        assert_eq!(hub.warn, [Duration::from_secs(300), Duration::from_secs(60)]);
    }

    #[test]
    fn room_slots_are_reused_and_indices_stay_consistent() {
        let t0 = crate::virtual_base();
        let mut hub = Hub::new(HubConfig::default());
        hub.handle_connect(t0, ConnectionId(1), admission(t0, "a", Role::Host));
        hub.handle_connect(t0, ConnectionId(2), admission(t0, "b", Role::Host));
        hub.handle_connect(t0, ConnectionId(3), admission(t0, "b", Role::Guest));
        assert_consistent(&hub);
        hub.close_booking(t0, "a", CloseReason::Cancelled);
        assert_consistent(&hub);
        hub.handle_connect(t0, ConnectionId(4), admission(t0, "c", Role::Guest));
        assert_eq!(hub.rooms.len(), 2, "the freed slab entry is reused");
        assert_consistent(&hub);
        hub.handle_timeout(t0 + Duration::from_secs(3300));
        assert_consistent(&hub);
        hub.close_all(t0, CloseReason::Shutdown);
        assert_consistent(&hub);
        assert!(hub.timers.is_empty() && hub.conns.is_empty());
    }

    #[test]
    fn a_reused_connection_id_leaves_its_old_slot_first() {
        let t0 = crate::virtual_base();
        let mut hub = Hub::new(HubConfig::default());
        hub.handle_connect(t0, ConnectionId(1), admission(t0, "a", Role::Host));
        hub.handle_connect(t0, ConnectionId(1), admission(t0, "b", Role::Guest));
        assert_consistent(&hub);
        assert_eq!(hub.connection_count(), 1);
        let a = hub.by_booking.get("a").and_then(|&i| hub.rooms[i].as_ref());
        assert_eq!(a.map(|r| r.peers().count()), Some(0));
    }

    #[test]
    fn an_extended_window_moves_the_warnings_and_the_close() {
        let t0 = crate::virtual_base();
        let mut hub = Hub::new(HubConfig::default());
        hub.handle_connect(t0, ConnectionId(1), admission(t0, "a", Role::Host));
        hub.handle_connect(t0, ConnectionId(2), admission(t0, "a", Role::Guest));
        // Past the T-5 warning of the old end (t0 + 3600).
        hub.handle_timeout(t0 + Duration::from_secs(3300));
        while hub.poll_output().is_some() {}
        let new_end = t0 + Duration::from_secs(5400);
        let window = RawValue::from_string(r#"{"hard_end_at":"2026-01-01T11:45:00Z"}"#.to_owned()).expect("json");
        let update = WindowUpdate {
            sequence: 3,
            window,
            hard_end_at: new_end,
            hard_end_at_rfc3339: "2026-01-01T11:45:00Z".to_owned(),
        };
        hub.update_window(t0 + Duration::from_secs(3400), "a", update);
        assert_consistent(&hub);
        let sent: Vec<serde_json::Value> = std::iter::from_fn(|| hub.poll_output())
            .filter_map(|o| match o {
                Output::Send { text, .. } => serde_json::from_str(&text).ok(),
                _ => None,
            })
            .collect();
        assert_eq!(sent.len(), 2, "{sent:?}");
        for v in &sent {
            assert_eq!((v["type"].as_str(), v["event"].as_str()), (Some("window"), Some("changed")));
            assert_eq!(v["sequence"], 3);
            assert_eq!(v["window"]["hard_end_at"], "2026-01-01T11:45:00Z");
        }
        assert_eq!(hub.poll_timeout(), Some(new_end - Duration::from_secs(300)), "T-5 of the new end is planned again");
        hub.handle_timeout(t0 + Duration::from_secs(3600));
        assert_eq!(hub.connection_count(), 2, "the old hard end no longer closes the room");
        hub.handle_timeout(new_end);
        assert_eq!(hub.connection_count(), 0, "the new hard end does");
        assert_consistent(&hub);
    }

    #[test]
    fn a_window_ending_in_the_past_closes_the_room() {
        let t0 = crate::virtual_base();
        let mut hub = Hub::new(HubConfig::default());
        hub.handle_connect(t0, ConnectionId(1), admission(t0, "a", Role::Host));
        let window = RawValue::from_string("{}".to_owned()).expect("json");
        let update = WindowUpdate { sequence: 1, window, hard_end_at: t0, hard_end_at_rfc3339: String::new() };
        hub.update_window(t0 + Duration::from_secs(1), "a", update);
        assert_eq!(hub.connection_count(), 0);
        assert_consistent(&hub);
    }
}
