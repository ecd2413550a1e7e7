//! Plain counters the daemon exports as Prometheus metrics (no globals, no atomics).

use crate::{DropReason, Mode, close_code};

/// The hub's gauges and counters, read with [`Hub::stats`](crate::Hub::stats).
///
/// Gauges (`connections`, `rooms`) are current values; every other field is a monotonically increasing total since
/// the hub was created.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Gauge: connections currently holding a slot.
    pub connections: usize,
    /// Gauge: rooms currently open (including rooms whose participants are momentarily disconnected).
    pub rooms: usize,
    /// Connections admitted with [`Hub::handle_connect`](crate::Hub::handle_connect).
    pub connections_total: u64,
    /// Rooms opened.
    pub rooms_total: u64,
    /// Pairings: each one sends `ready` to both peers.
    pub ready_total: u64,
    /// `signal` frames relayed to a partner.
    pub signals_relayed: u64,
    /// Bytes of relayed `data` values.
    pub signal_bytes_relayed: u64,
    /// `pong` frames sent in answer to client `ping`.
    pub pongs: u64,
    /// `window` closing warnings sent (one per connection per warning).
    pub window_warnings: u64,
    /// Dropped client frames, by reason.
    pub drops: DropCounts,
    /// Connections closed by the hub, by close code.
    pub closes: CloseCounts,
    /// The share of the figures above that belongs to native v1 sockets and rooms.
    pub native: ModeStats,
    /// The share of the figures above that belongs to vy sockets and rooms.
    pub vy: ModeStats,
}

impl Stats {
    /// Connections currently holding a slot, per mode the hub serves (`native`, `vy`), for
    /// `duet_signal_connections{mode}`; add [`PeerjsStats::connections`](crate::peerjs::PeerjsStats::connections) for
    /// `peerjs`.
    pub fn connections_by_mode(&self) -> [(Mode, usize); 2] {
        [(Mode::Native, self.native.connections), (Mode::Vy, self.vy.connections)]
    }

    /// The per-mode share for `mode` (all zero for [`Mode::Peerjs`], which the hub does not serve).
    pub fn mode(&self, mode: Mode) -> ModeStats {
        match mode {
            Mode::Native => self.native.clone(),
            Mode::Vy => self.vy.clone(),
            Mode::Peerjs => ModeStats::default(),
        }
    }

    pub(crate) fn mode_mut(&mut self, mode: Mode) -> &mut ModeStats {
        match mode {
            Mode::Vy => &mut self.vy,
            _ => &mut self.native,
        }
    }
}

/// Figures of one protocol mode inside [`Stats`] (gauges are current values, the rest totals).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModeStats {
    /// Gauge: connections of this mode currently holding a slot.
    pub connections: usize,
    /// Gauge: rooms of this mode currently open.
    pub rooms: usize,
    /// Connections of this mode admitted.
    pub connections_total: u64,
    /// Pairings (`ready` to both) in rooms of this mode.
    pub ready_total: u64,
    /// Frames relayed to a partner (native `signal`, vy verbatim frames).
    pub relayed: u64,
}

/// Dropped client frames by [`DropReason`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DropCounts {
    /// [`DropReason::StaleSession`].
    pub stale_session: u64,
    /// [`DropReason::NoPeer`].
    pub no_peer: u64,
    /// [`DropReason::BadMessage`].
    pub bad_message: u64,
    /// [`DropReason::Binary`].
    pub binary: u64,
    /// [`DropReason::UnknownConnection`].
    pub unknown_connection: u64,
    /// [`DropReason::QueueFull`] (peerjs mode only).
    pub queue_full: u64,
}

impl DropCounts {
    /// The count for one reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::StaleSession => self.stale_session,
            DropReason::NoPeer => self.no_peer,
            DropReason::BadMessage => self.bad_message,
            DropReason::Binary => self.binary,
            DropReason::UnknownConnection => self.unknown_connection,
            DropReason::QueueFull => self.queue_full,
        }
    }

    /// Every reason with its count, for export with a `reason` label ([`DropReason::as_str`]).
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> {
        [
            (DropReason::StaleSession, self.stale_session),
            (DropReason::NoPeer, self.no_peer),
            (DropReason::BadMessage, self.bad_message),
            (DropReason::Binary, self.binary),
            (DropReason::UnknownConnection, self.unknown_connection),
            (DropReason::QueueFull, self.queue_full),
        ]
        .into_iter()
    }

    pub(crate) fn bump(&mut self, reason: DropReason) {
        let slot = match reason {
            DropReason::StaleSession => &mut self.stale_session,
            DropReason::NoPeer => &mut self.no_peer,
            DropReason::BadMessage => &mut self.bad_message,
            DropReason::Binary => &mut self.binary,
            DropReason::UnknownConnection => &mut self.unknown_connection,
            DropReason::QueueFull => &mut self.queue_full,
        };
        *slot = slot.saturating_add(1);
    }
}

/// Connections closed by the hub, by WebSocket close code (see [`close_code`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CloseCounts {
    /// 1000, after `leave`.
    pub normal: u64,
    /// 1001, shutdown (and peerjs `alive_timeout`).
    pub shutdown: u64,
    /// 1008, policy violation (peerjs `ID-TAKEN`, `ERROR`, failed send).
    pub policy: u64,
    /// 1009, frame too big.
    pub too_big: u64,
    /// 4003, hard end of the window passed.
    pub outside_window: u64,
    /// 4004, booking cancelled.
    pub unknown_booking: u64,
    /// 4008, replaced by a newer connection.
    pub replaced: u64,
    /// 4029, rate limited.
    pub rate_limited: u64,
    /// 4009, vy newcomer refused: its slot is held by a live participant.
    pub slot_taken: u64,
    /// 1013, try again later: the hub's room cap is reached.
    pub try_again_later: u64,
}

impl CloseCounts {
    /// The count for one close code (0 for codes the hub never sends).
    pub fn get(&self, code: u16) -> u64 {
        self.iter().find(|(c, _)| *c == code).map_or(0, |(_, n)| n)
    }

    /// Every code the hub sends with its count, for export with a `code` label.
    pub fn iter(&self) -> impl Iterator<Item = (u16, u64)> {
        [
            (close_code::NORMAL, self.normal),
            (close_code::SHUTDOWN, self.shutdown),
            (close_code::POLICY, self.policy),
            (close_code::TOO_BIG, self.too_big),
            (close_code::OUTSIDE_WINDOW, self.outside_window),
            (close_code::UNKNOWN_BOOKING, self.unknown_booking),
            (close_code::REPLACED, self.replaced),
            (close_code::RATE_LIMITED, self.rate_limited),
            (close_code::ROOM_FULL, self.slot_taken),
            (close_code::TRY_AGAIN_LATER, self.try_again_later),
        ]
        .into_iter()
    }

    pub(crate) fn bump(&mut self, code: u16) {
        let slot = match code {
            close_code::NORMAL => &mut self.normal,
            close_code::SHUTDOWN => &mut self.shutdown,
            close_code::POLICY => &mut self.policy,
            close_code::TOO_BIG => &mut self.too_big,
            close_code::OUTSIDE_WINDOW => &mut self.outside_window,
            close_code::UNKNOWN_BOOKING => &mut self.unknown_booking,
            close_code::REPLACED => &mut self.replaced,
            close_code::RATE_LIMITED => &mut self.rate_limited,
            close_code::ROOM_FULL => &mut self.slot_taken,
            close_code::TRY_AGAIN_LATER => &mut self.try_again_later,
            _ => return,
        };
        *slot = slot.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bump_and_get_agree() {
        let mut d = DropCounts::default();
        d.bump(DropReason::NoPeer);
        d.bump(DropReason::NoPeer);
        assert_eq!(d.get(DropReason::NoPeer), 2);
        assert_eq!(d.iter().map(|(_, n)| n).sum::<u64>(), 2);

        let mut c = CloseCounts::default();
        c.bump(close_code::REPLACED);
        c.bump(close_code::BAD_TOKEN); // not a hub code: ignored
        assert_eq!(c.get(close_code::REPLACED), 1);
        assert_eq!(c.get(close_code::BAD_TOKEN), 0);
        assert_eq!(c.iter().count(), 10);
    }
}
