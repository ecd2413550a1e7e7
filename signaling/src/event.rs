//! What the hub hands back to its driver: [`Output`]s, and the [`HubEvent`]s among them.

use crate::{ConnectionId, Role, close_code};

/// One thing the driver must do, returned by [`Hub::poll_output`](crate::Hub::poll_output) in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send one text frame to the connection. `text` is a complete JSON document in native v1 and peerjs mode; in vy
    /// mode it is the literal `ready` or a partner's frame, byte-identical.
    Send {
        /// The destination connection.
        conn: ConnectionId,
        /// The frame's UTF-8 text.
        text: String,
    },
    /// Close the connection with this WebSocket close code (see [`close_code`]) and reason; after this the hub has
    /// forgotten it, so the later [`Hub::handle_disconnect`](crate::Hub::handle_disconnect) for it is a no-op.
    Close {
        /// The connection to close.
        conn: ConnectionId,
        /// WebSocket close code (RFC 6455 §7.4).
        code: u16,
        /// Close reason text (ASCII, well under the 123-byte limit of RFC 6455 §5.5).
        reason: &'static str,
    },
    /// Send a WebSocket ping to the connection now and report it with
    /// [`Hub::handle_ping_sent`](crate::Hub::handle_ping_sent): a liveness probe of a vy slot's occupant after a
    /// newcomer was refused (the answer, or its absence within [`HubConfig::pong_timeout`](crate::HubConfig::pong_timeout),
    /// decides whether the next newcomer may replace it).
    Ping {
        /// The connection to probe.
        conn: ConnectionId,
    },
    /// For metrics, webhooks and logs. Never contains SDP or tokens.
    Event(HubEvent),
}

/// Something worth counting, logging or turning into a webhook (`participant.joined`, `meeting.ended`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HubEvent {
    /// A connection took its role's slot in the booking's room (native or vy).
    Joined {
        /// Booking id (room key; for a vy open relay `vy:<meetingId>`).
        booking: String,
        /// Participant id (vy: whatever [`VyAdmission::participant`](crate::VyAdmission::participant) said, possibly
        /// empty).
        participant: String,
        /// The slot taken.
        role: Role,
    },
    /// A connection left its slot (closed, replaced, left, timed out, kicked or room closed).
    Left {
        /// Booking id (room key).
        booking: String,
        /// Participant id.
        participant: String,
        /// The slot vacated.
        role: Role,
        /// Why it left.
        reason: LeaveReason,
    },
    /// Both slots are filled and `ready` went to both with this session number (vy: the literal `ready`; the session
    /// is counted internally all the same).
    Ready {
        /// Booking id (room key).
        booking: String,
        /// The room's session counter (1 for the first pairing, +1 on each re-pairing).
        session: u64,
    },
    /// One `signal` was relayed to the partner.
    Relayed {
        /// Length in bytes of the relayed `data` value.
        bytes: usize,
    },
    /// A client frame was dropped (an `error` frame went back when the connection is known).
    Dropped {
        /// Why.
        reason: DropReason,
    },
    /// The booking's room was created (first admitted connection).
    RoomOpened {
        /// Booking id.
        booking: String,
    },
    /// A room without a hard end (vy open relay) was forgotten when its last slot emptied.
    RoomFreed {
        /// Room key (`vy:<meetingId>`).
        booking: String,
    },
    /// A newcomer was refused: the hub holds `max_rooms` rooms (closed 1013), or in vy mode its slot is held by a
    /// live participant (closed 4009).
    Refused {
        /// Room key.
        booking: String,
        /// The role the newcomer asked for.
        role: Role,
        /// The close code it got.
        code: u16,
    },
    /// The booking's room was closed with all its connections.
    RoomClosed {
        /// Booking id.
        booking: String,
        /// Why.
        reason: CloseReason,
    },
    /// Something [`PeerjsServer`](crate::peerjs::PeerjsServer) did (never emitted by [`Hub`](crate::Hub)).
    Peerjs(PeerjsEvent),
}

/// Registrations and expiries of [`PeerjsServer`](crate::peerjs::PeerjsServer), inside [`HubEvent::Peerjs`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerjsEvent {
    /// An id was registered (`OPEN` sent) or a same-token socket re-attached to it (no `OPEN`).
    Registered {
        /// The registration's namespace (key, or booking id when scoped).
        namespace: String,
        /// The PeerJS id.
        id: String,
        /// True for a same-token re-attach.
        reattached: bool,
    },
    /// An id's registration ended (its socket is closed or was closed by the server).
    Unregistered {
        /// Namespace.
        namespace: String,
        /// The PeerJS id.
        id: String,
        /// Why.
        reason: LeaveReason,
    },
    /// A connection attempt got `ID-TAKEN` (the id is registered with another token) and was closed.
    IdTaken {
        /// Namespace.
        namespace: String,
        /// The contested id.
        id: String,
    },
    /// Messages queued for `dst` went unread for `expire_timeout`: dropped, `EXPIRE` sent to each connected sender.
    Expired {
        /// Namespace.
        namespace: String,
        /// The absent destination id.
        dst: String,
        /// How many queued messages were dropped.
        messages: usize,
    },
}

/// Why a whole room is closed: [`Hub::close_booking`](crate::Hub::close_booking),
/// [`Hub::close_all`](crate::Hub::close_all) or the booking's hard end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The booking's `hard_end_at` passed: close code 4003.
    WindowClosed,
    /// The booking was cancelled (or is unknown): close code 4004.
    Cancelled,
    /// The daemon shuts down: close code 1001.
    Shutdown,
}

impl CloseReason {
    /// The WebSocket close code sent to every socket of the room.
    pub fn code(self) -> u16 {
        match self {
            CloseReason::WindowClosed => close_code::OUTSIDE_WINDOW,
            CloseReason::Cancelled => close_code::UNKNOWN_BOOKING,
            CloseReason::Shutdown => close_code::SHUTDOWN,
        }
    }

    /// The close reason text sent with [`code`](Self::code).
    pub fn text(self) -> &'static str {
        match self {
            CloseReason::WindowClosed => "window closed",
            CloseReason::Cancelled => "booking cancelled",
            CloseReason::Shutdown => "shutdown",
        }
    }

    /// Stable lowercase label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::WindowClosed => "window_closed",
            CloseReason::Cancelled => "cancelled",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// Why a connection left its slot ([`HubEvent::Left`]).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LeaveReason {
    /// The transport closed ([`Hub::handle_disconnect`](crate::Hub::handle_disconnect)). Partner sees `"closed"`.
    Closed,
    /// A newer connection took the same role (closed 4008). Partner sees `"replaced"`.
    Replaced,
    /// The client sent `{"type":"leave"}` (closed 1000). Partner sees `"left"`.
    Left,
    /// The driver saw no pong in time ([`Hub::handle_liveness_timeout`](crate::Hub::handle_liveness_timeout)).
    /// Partner sees `"timeout"`.
    Timeout,
    /// Over the per-socket message rate (closed 4029). Partner sees `"closed"`.
    RateLimited,
    /// A frame over `max_message_bytes` (closed 1009). Partner sees `"closed"`.
    TooBig,
    /// The room closed at the booking's hard end (closed 4003).
    WindowClosed,
    /// The booking was cancelled (closed 4004).
    Cancelled,
    /// The daemon shut down (closed 1001).
    Shutdown,
    /// The driver could not deliver a frame to the socket (peerjs mode: closed 1008, `LEAVE` to the sender).
    SendFailed,
}

impl LeaveReason {
    /// Stable lowercase label for metrics, logs and webhooks.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Closed => "closed",
            LeaveReason::Replaced => "replaced",
            LeaveReason::Left => "left",
            LeaveReason::Timeout => "timeout",
            LeaveReason::RateLimited => "rate_limited",
            LeaveReason::TooBig => "too_big",
            LeaveReason::WindowClosed => "window_closed",
            LeaveReason::Cancelled => "cancelled",
            LeaveReason::Shutdown => "shutdown",
            LeaveReason::SendFailed => "send_failed",
        }
    }

    /// The `reason` of the `peer-left` frame the partner receives: `closed`, `replaced`, `left` or `timeout`.
    pub fn peer_left_reason(self) -> &'static str {
        match self {
            LeaveReason::Replaced => "replaced",
            LeaveReason::Left => "left",
            LeaveReason::Timeout => "timeout",
            _ => "closed",
        }
    }
}

impl From<CloseReason> for LeaveReason {
    fn from(reason: CloseReason) -> Self {
        match reason {
            CloseReason::WindowClosed => LeaveReason::WindowClosed,
            CloseReason::Cancelled => LeaveReason::Cancelled,
            CloseReason::Shutdown => LeaveReason::Shutdown,
        }
    }
}

/// Why a client frame was dropped ([`HubEvent::Dropped`], counted in [`DropCounts`](crate::DropCounts)).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// `signal` with a `session` other than the room's current one: `error stale_session`.
    StaleSession,
    /// `signal` while the partner slot is empty (nothing is queued): `error no_peer`. In vy mode: any frame while the
    /// partner slot is empty (silently). In peerjs mode: `LEAVE`/`EXPIRE` for an absent id, or a `dst` registered in
    /// another booking.
    NoPeer,
    /// Not JSON, not an object, unknown `type`, or `data` that is not a simple-peer signal: `error bad_message`. In vy
    /// strict mode: a frame that is not a simple-peer signal (silently). In peerjs mode: a frame upstream ignores
    /// (not a JSON object, no handled `type`, a non-string `dst`).
    BadMessage,
    /// A binary frame (not part of native v1 or vy): `error bad_message` in native mode, silent in the others.
    Binary,
    /// A frame for a connection the hub does not know (already closed or replaced); nothing is sent.
    UnknownConnection,
    /// peerjs mode: a message for an absent id whose queue already holds `max_queued_per_peer` messages.
    QueueFull,
}

impl DropReason {
    /// Stable lowercase label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::StaleSession => "stale_session",
            DropReason::NoPeer => "no_peer",
            DropReason::BadMessage => "bad_message",
            DropReason::Binary => "binary",
            DropReason::UnknownConnection => "unknown_connection",
            DropReason::QueueFull => "queue_full",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_map_to_design_codes() {
        assert_eq!(CloseReason::WindowClosed.code(), 4003);
        assert_eq!(CloseReason::Cancelled.code(), 4004);
        assert_eq!(CloseReason::Shutdown.code(), 1001);
        assert_eq!(LeaveReason::from(CloseReason::Cancelled), LeaveReason::Cancelled);
    }

    #[test]
    fn peer_left_reasons_are_the_four_wire_values() {
        assert_eq!(LeaveReason::Closed.peer_left_reason(), "closed");
        assert_eq!(LeaveReason::Replaced.peer_left_reason(), "replaced");
        assert_eq!(LeaveReason::Left.peer_left_reason(), "left");
        assert_eq!(LeaveReason::Timeout.peer_left_reason(), "timeout");
        assert_eq!(LeaveReason::RateLimited.peer_left_reason(), "closed");
        assert_eq!(LeaveReason::TooBig.peer_left_reason(), "closed");
    }
}
