//! Sans-IO signaling hub for Duet: rooms, slots and sessions for scheduled 1-on-1 WebRTC meetings, in three wire
//! protocols (`native` v1, the Virtual Y drop-in `vy`, the peerjs-server drop-in `peerjs`).
//!
//! Browsers exchange simple-peer signals (offer, answer, candidate, renegotiate, transceiverRequest) over WebSocket.
//! This crate holds the whole signaling state machine and does no IO: it never opens a socket, reads a file, spawns a
//! task or reads a clock. The daemon (`src/signal_io/`) owns the sockets and the clock and drives a [`Hub`].
//!
//! # Run loop
//!
//! The driver owns one [`Hub`] (native and vy sockets) and, if peerjs mode is on, one [`peerjs::PeerjsServer`], and
//! feeds each everything that happens to its sockets, each call carrying the current `now`:
//!
//! ```text
//! loop {
//!     // 1. feed inputs
//!     native socket (token and booking verified) -> hub.handle_connect(now, conn, admission)
//!     vy socket (meetingId looked up, in window) -> hub.handle_connect_vy(now, conn, vy_admission)
//!     peerjs socket (key checked)                -> peerjs.handle_connect(now, conn, registration)
//!                         (wrong key)            -> peerjs.reject(conn, PeerjsError::InvalidKey)
//!     text frame                                 -> hub.handle_text(now, conn, &text)      / peerjs.handle_text
//!     binary frame                               -> hub.handle_binary(now, conn, len)      / peerjs.handle_binary
//!     socket closed                              -> hub.handle_disconnect(now, conn)       / peerjs.handle_disconnect
//!     WebSocket ping timeout                     -> hub.handle_liveness_timeout(now, conn) / peerjs.handle_disconnect
//!     WebSocket ping sent to a client            -> hub.handle_ping_sent(now, conn)
//!     WebSocket pong (or ping) from a client     -> hub.handle_pong(now, conn) / hub.handle_ping(now, conn)
//!                                                   (peerjs.handle_ping(now, conn) for a client ping)
//!     could not deliver a Send (queue full)      -> hub.handle_disconnect(now, conn)
//!                                                   / peerjs.handle_send_failed(now, conn, &text)
//!     booking cancelled                          -> hub.close_booking(now, booking, CloseReason::Cancelled)
//!                                                   and peerjs.close_booking(…)
//!     shutdown                                   -> hub.close_all(now, CloseReason::Shutdown) and peerjs.close_all(…)
//!     timer fired                                -> hub.handle_timeout(now)                / peerjs.handle_timeout
//!     // 2. drain outputs after every input
//!     while let Some(out) = hub.poll_output() {    // same for peerjs.poll_output()
//!         Output::Send { conn, text }          => write one text frame to conn
//!         Output::Close { conn, code, reason } => send a close frame; the state machine has already forgotten conn
//!         Output::Ping { conn }                => send a WebSocket ping now, then hub.handle_ping_sent(now, conn)
//!         Output::Event(event)                 => metrics, webhooks, logs
//!     }
//!     // 3. re-arm the timers
//!     sleep until min(hub.poll_timeout(), peerjs.poll_timeout())   (None: no timer needed)
//! }
//! ```
//!
//! [`Hub::handle_timeout`] may be called early or late; it only acts on deadlines that are due at `now`. The hub keeps
//! no queue of its own beyond the outputs not yet polled, so the driver must drain [`Hub::poll_output`] after every
//! call. Connection ids must be unique across both state machines' live connections (one counter is simplest).
//!
//! Keepalive per mode:
//! - **native**: WebSocket ping/pong control frames are the driver's job (the hub only announces
//!   [`HubConfig::ping_interval`] in `welcome`); a missed pong is reported with [`Hub::handle_liveness_timeout`].
//! - **vy**: the same WebSocket pings (e.g. every 20 s, close after 2 missed pongs); the hub never sends a keepalive
//!   frame, since the Virtual Y client would hand it to simple-peer.
//! - **peerjs**: the client's `{"type":"HEARTBEAT"}` (every 5 s in PeerJS) is the liveness signal; the server closes
//!   a socket silent for [`peerjs::PeerjsConfig::alive_timeout`] itself. WebSocket pings are optional.
//!
//! vy admission (research/signaling.md §10.2): the driver answers HTTP 400 without `meetingId` and 403 outside the
//! booking's window *before* upgrading, maps `isInstructorRole` with [`VyAdmission::role_from_query`], and passes
//! [`VyAdmission::booking`] (room = booking id, closed 4003 at the hard end) or, for the open relay without a booking
//! (`vy.require_booking = false`), [`VyAdmission::open_relay`] (room = `vy:<meetingId>`, no hard end).
//!
//! Metrics per mode (`duet_signal_connections{mode}`): [`Stats::connections_by_mode`] for `native` and `vy`,
//! [`peerjs::PeerjsStats::connections`] for `peerjs`; labels from [`Mode::as_str`].
//!
//! # Invariants
//!
//! - **One room per booking and protocol.** Rooms are keyed by booking id (vy: booking id or `vy:<meetingId>`) and
//!   created on the first admitted connection. A native room and a vy room of the same booking are distinct: sockets
//!   of different protocols are never paired. A room outlives its connections (its `session` counter keeps counting
//!   across reconnects) until the booking's hard end, its cancellation or shutdown; a room without a hard end (vy open
//!   relay) is forgotten as soon as its last slot empties.
//! - **One slot per role.** A room has exactly two slots, `host` and `guest`; room capacity is 2.
//! - **Newest connection per role wins (native).** A second connection for an occupied role replaces the first, which
//!   is closed with [`close_code::REPLACED`] (4008); the native partner sees `peer-left` (reason `replaced`) and then
//!   `ready` with a new session. Native connections carry a session token naming their participant, so the newcomer
//!   is that participant.
//! - **A live vy participant is never displaced.** Virtual Y clients declare their own role, so in vy mode a newcomer
//!   only replaces an occupant that is not live (its last WebSocket ping went unanswered for
//!   [`HubConfig::pong_timeout`]); otherwise the newcomer is closed with [`close_code::ROOM_FULL`] (4009) before any
//!   frame of the room, and the occupant is probed with [`Output::Ping`] so that a dead one is found within
//!   `pong_timeout` and the real participant's next reconnect gets in.
//! - **Bounded rooms.** At most [`HubConfig::max_rooms`] rooms; a room without a hard end (vy open relay) is forgotten
//!   when its last slot empties.
//! - **Close race fixed.** A connection's disconnect only clears a slot that still holds *that* connection, so the late
//!   close of a replaced socket never evicts its replacement (the Virtual Y server bug, research/signaling.md §1.3).
//!   The peerjs server applies the same rule to a same-token re-attach.
//! - **No queueing** in native and vy: a signal sent while the partner is absent is dropped (native answers
//!   `error no_peer`, vy says nothing); clients rebuild their peers on `ready`. peerjs queues for
//!   `expire_timeout`, as upstream.
//! - **Opaque payloads.** The `data` of a relayed `signal`, a vy frame and a peerjs `payload` are forwarded
//!   byte-identical (never re-serialised).
//! - **Never panics on input.** Every malformed frame is data: an `error` frame (native), a counted drop or a close
//!   code.
//! - **Outputs are addressed by [`ConnectionId`], rooms by booking id**, so that a later `Bus` seam can carry outputs for
//!   peers connected to another node.
//!
//! # Protocols
//!
//! - `native` v1 (research/signaling.md §10.3, DESIGN.md §5): JSON text frames with a `type` field.
//! - `vy` (§10.2): the literal text `ready` and the partner's frames verbatim; nothing else, ever.
//! - `peerjs` (§4, §10.4): peerjs-server 1.0.x's `OPEN`, `ID-TAKEN`, `ERROR`, relayed `OFFER`/`ANSWER`/`CANDIDATE`/
//!   `LEAVE`/`EXPIRE` and `HEARTBEAT`, in [`peerjs`].
//!
//! Wire encodings live in their own modules, apart from the room model, which native and vy share.

mod event;
mod hub;
mod native;
pub mod peerjs;
mod rate;
mod room;
mod stats;
mod vy;

use std::fmt;

pub use event::{CloseReason, DropReason, HubEvent, LeaveReason, Output, PeerjsEvent};
pub use hub::{Admission, Hub, HubConfig, VyAdmission, WindowUpdate};
pub use stats::{CloseCounts, DropCounts, ModeStats, Stats};

/// The wire protocol of a connection, for metrics (`duet_signal_connections{mode}`) and logs.
///
/// [`Hub`] serves [`Mode::Native`] and [`Mode::Vy`] sockets (in separate rooms, never paired with each other);
/// [`peerjs::PeerjsServer`] serves [`Mode::Peerjs`] sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// Duet's own JSON protocol, `native` v1 (`GET /v1/signal?token=…`).
    Native,
    /// Drop-in for the Virtual Y signaling server: literal `ready` plus verbatim relay (`?meetingId=…`).
    Vy,
    /// Drop-in for peerjs-server 1.0.x (`{path}peerjs?key=…&id=…&token=…`).
    Peerjs,
}

impl Mode {
    /// Every mode, in label order.
    pub const ALL: [Mode; 3] = [Mode::Native, Mode::Vy, Mode::Peerjs];

    /// Stable lowercase label for metrics and logs: `"native"`, `"vy"`, `"peerjs"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::Vy => "vy",
            Mode::Peerjs => "peerjs",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifies one WebSocket connection. Chosen by the driver; must be unique among live connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// A participant's role in a booking, which is also the slot it occupies in the room.
///
/// On the wire it is `"host"` or `"guest"`. The host is the simple-peer initiator (like the Virtual Y instructor).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The booking's host (clinician, trainer, support rep): the WebRTC initiator.
    Host,
    /// The booking's guest (patient, client, customer).
    Guest,
}

impl Role {
    /// The role of the other slot in the room.
    pub fn other(self) -> Role {
        match self {
            Role::Host => Role::Guest,
            Role::Guest => Role::Host,
        }
    }

    /// The wire name: `"host"` or `"guest"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Host => "host",
            Role::Guest => "guest",
        }
    }

    /// Parses the wire (and stored) name; `None` for anything but `"host"` and `"guest"`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "host" => Some(Role::Host),
            "guest" => Some(Role::Guest),
            _ => None,
        }
    }

    /// Whether this role starts the WebRTC negotiation (`initiator` in `welcome`): true for the host.
    pub fn is_initiator(self) -> bool {
        self == Role::Host
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WebSocket close codes used by Duet's signaling (DESIGN.md §5; RFC 6455 §7.4.1 for the 1xxx codes, the 4xxx range
/// is application-defined per RFC 6455 §7.4.2).
///
/// The hub and the peerjs server emit [`NORMAL`](close_code::NORMAL), [`SHUTDOWN`](close_code::SHUTDOWN),
/// [`POLICY`](close_code::POLICY) (peerjs only),
/// [`TOO_BIG`](close_code::TOO_BIG), [`OUTSIDE_WINDOW`](close_code::OUTSIDE_WINDOW),
/// [`UNKNOWN_BOOKING`](close_code::UNKNOWN_BOOKING), [`REPLACED`](close_code::REPLACED) and
/// [`RATE_LIMITED`](close_code::RATE_LIMITED); the daemon uses [`BAD_TOKEN`](close_code::BAD_TOKEN) and
/// [`ROOM_FULL`](close_code::ROOM_FULL) before a socket reaches the hub.
pub mod close_code {
    /// 1000: normal closure; the client sent `leave` (RFC 6455 §7.4.1).
    pub const NORMAL: u16 = 1000;
    /// 1001: going away (RFC 6455 §7.4.1): the server shuts down; also a peerjs socket silent past `alive_timeout`
    /// (reason `"alive timeout"`), as the daemon's own ping timeout does.
    pub const SHUTDOWN: u16 = 1001;
    /// 1008: policy violation (RFC 6455 §7.4.1). Used by [`PeerjsServer`](crate::peerjs::PeerjsServer) after an
    /// `ID-TAKEN` or `ERROR` frame (upstream peerjs-server closes without a code; PeerJS clients ignore the code) and
    /// when a send to a socket failed.
    pub const POLICY: u16 = 1008;
    /// 1009: message too big; a frame exceeded `max_message_bytes` (RFC 6455 §7.4.1).
    pub const TOO_BIG: u16 = 1009;
    /// 4001: bad or expired session token (checked by the daemon).
    pub const BAD_TOKEN: u16 = 4001;
    /// 4003: outside the booking's join window; sent at `hard_end_at`.
    pub const OUTSIDE_WINDOW: u16 = 4003;
    /// 4004: unknown or cancelled booking.
    pub const UNKNOWN_BOOKING: u16 = 4004;
    /// 4008: replaced by a newer connection for the same role.
    pub const REPLACED: u16 = 4008;
    /// 4009: the slot is taken. Sent by the hub to a Virtual Y newcomer whose role's slot is held by a live
    /// participant (one whose last WebSocket ping was answered, see [`Hub::handle_connect_vy`](crate::Hub::handle_connect_vy)):
    /// in vy mode roles are self-declared, so a newcomer never displaces a live socket. The refused socket gets no
    /// frame of the room.
    pub const ROOM_FULL: u16 = 4009;
    /// 1013: try again later (RFC 6455 §7.4.1 registry, IANA): the hub holds [`HubConfig::max_rooms`](crate::HubConfig::max_rooms)
    /// rooms and cannot open another.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// 4029: per-socket message rate exceeded.
    pub const RATE_LIMITED: u16 = 4029;
}

/// The base instant of unit tests' virtual time. Test-only: the library itself never reads a clock.
#[cfg(test)]
pub(crate) fn virtual_base() -> std::time::Instant {
    std::time::Instant::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_wire_names_and_other() {
        assert_eq!(Role::Host.as_str(), "host");
        assert_eq!(Role::Guest.to_string(), "guest");
        assert_eq!(Role::Host.other(), Role::Guest);
        assert_eq!(Role::Guest.other(), Role::Host);
        assert!(Role::Host.is_initiator());
        assert!(!Role::Guest.is_initiator());
        assert_eq!(serde_json::to_string(&Role::Guest).ok().as_deref(), Some("\"guest\""));
        let parsed: Result<Role, _> = serde_json::from_str("\"host\"");
        assert_eq!(parsed.ok(), Some(Role::Host));
    }
}
