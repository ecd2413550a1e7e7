//! The room model shared by every protocol mode: one room per booking, two slots (host, guest), a session counter and
//! the booking's hard end. Nothing here knows the wire encoding.

use std::time::{Duration, Instant};

use crate::{ConnectionId, Mode, Role};

/// The occupant of one slot.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    /// The connection holding the slot.
    pub(crate) conn: ConnectionId,
    /// Participant id (`par_…`), the peer id on the wire.
    pub(crate) participant: String,
}

/// One booking's room.
#[derive(Debug)]
pub(crate) struct Room {
    /// Room key: the booking id (native, vy with a booking) or `vy:<meetingId>` (vy open relay).
    pub(crate) booking: String,
    /// The protocol of every socket in this room ([`Mode::Native`] or [`Mode::Vy`]); rooms never mix protocols.
    pub(crate) mode: Mode,
    /// Indexed by [`slot_index`].
    slots: [Option<Peer>; 2],
    /// Incremented each time the pair forms; 0 until the first pairing.
    pub(crate) session: u64,
    /// The booking's hard end (monotonic); `None` for a vy open relay, which never ends on its own.
    pub(crate) hard_end_at: Option<Instant>,
    /// The same instant as RFC 3339 text, for the wire.
    pub(crate) hard_end_at_rfc3339: String,
    /// Index into the hub's warning list (descending lead times) of the next warning not yet due.
    pub(crate) next_warning: usize,
    /// The single timer of this room: the next warning or the hard end; `None` without a hard end.
    pub(crate) deadline: Option<Instant>,
}

/// Slot index of a role.
fn slot_index(role: Role) -> usize {
    match role {
        Role::Host => 0,
        Role::Guest => 1,
    }
}

impl Room {
    /// An empty room. Call [`Room::schedule`] before using `deadline`.
    pub(crate) fn new(booking: String, mode: Mode, hard_end_at: Option<Instant>, hard_end_at_rfc3339: String) -> Self {
        Room {
            booking,
            mode,
            slots: [None, None],
            session: 0,
            hard_end_at,
            hard_end_at_rfc3339,
            next_warning: 0,
            deadline: hard_end_at,
        }
    }

    /// The occupant of a slot.
    pub(crate) fn slot(&self, role: Role) -> Option<&Peer> {
        self.slots[slot_index(role)].as_ref()
    }

    /// Empties a slot regardless of who holds it (used for replacement) and returns the old occupant.
    pub(crate) fn take(&mut self, role: Role) -> Option<Peer> {
        self.slots[slot_index(role)].take()
    }

    /// Puts a peer into an empty or just-emptied slot. Returns the new session number if this completes the pair.
    pub(crate) fn occupy(&mut self, role: Role, peer: Peer) -> Option<u64> {
        self.slots[slot_index(role)] = Some(peer);
        if self.slot(role.other()).is_some() {
            self.session = self.session.saturating_add(1);
            Some(self.session)
        } else {
            None
        }
    }

    /// Empties the slot only if it still holds `conn` (the close-race fix). Returns the removed peer.
    pub(crate) fn vacate(&mut self, role: Role, conn: ConnectionId) -> Option<Peer> {
        let slot = &mut self.slots[slot_index(role)];
        if slot.as_ref().is_some_and(|p| p.conn == conn) { slot.take() } else { None }
    }

    /// Every occupied slot with its role.
    pub(crate) fn peers(&self) -> impl Iterator<Item = (Role, &Peer)> {
        [Role::Host, Role::Guest].into_iter().filter_map(|r| self.slot(r).map(|p| (r, p)))
    }

    /// Sets `next_warning` to the first warning still ahead of `now` and `deadline` to it (or to the hard end).
    /// `warn` holds lead times in strictly descending order. Without a hard end there is no deadline.
    pub(crate) fn schedule(&mut self, now: Instant, warn: &[Duration]) {
        let Some(end) = self.hard_end_at else {
            self.next_warning = warn.len();
            self.deadline = None;
            return;
        };
        self.next_warning =
            warn.iter().position(|w| end.checked_sub(*w).is_some_and(|at| at >= now)).unwrap_or(warn.len());
        self.deadline = self.deadline_from(self.next_warning, warn);
    }

    /// The instant of warning `i`, or the hard end when there is none left; `None` without a hard end.
    pub(crate) fn deadline_from(&self, i: usize, warn: &[Duration]) -> Option<Instant> {
        let end = self.hard_end_at?;
        Some(warn.get(i).and_then(|w| end.checked_sub(*w)).unwrap_or(end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u64) -> Peer {
        Peer { conn: ConnectionId(n), participant: format!("par_{n}") }
    }

    #[test]
    fn pair_forms_once_per_completion_and_session_counts_up() {
        let t0 = crate::virtual_base();
        let mut room = Room::new("bkg_1".into(), Mode::Native, Some(t0 + Duration::from_secs(3600)), "x".into());
        assert_eq!(room.occupy(Role::Guest, peer(1)), None);
        assert_eq!(room.occupy(Role::Host, peer(2)), Some(1));
        assert!(room.vacate(Role::Host, ConnectionId(2)).is_some());
        assert_eq!(room.occupy(Role::Host, peer(3)), Some(2));
        assert_eq!(room.peers().count(), 2);
    }

    #[test]
    fn vacate_ignores_a_connection_that_no_longer_holds_the_slot() {
        let t0 = crate::virtual_base();
        let mut room = Room::new("bkg_1".into(), Mode::Native, Some(t0 + Duration::from_secs(3600)), "x".into());
        room.occupy(Role::Host, peer(1));
        let old = room.take(Role::Host);
        assert_eq!(old.map(|p| p.conn), Some(ConnectionId(1)));
        room.occupy(Role::Host, peer(2));
        assert!(room.vacate(Role::Host, ConnectionId(1)).is_none());
        assert_eq!(room.slot(Role::Host).map(|p| p.conn), Some(ConnectionId(2)));
    }

    #[test]
    fn schedule_skips_warnings_already_passed() {
        let t0 = crate::virtual_base();
        let end = t0 + Duration::from_secs(200);
        let warn = [Duration::from_secs(300), Duration::from_secs(60)];
        let mut room = Room::new("b".into(), Mode::Native, Some(end), "x".into());
        room.schedule(t0, &warn);
        assert_eq!(room.next_warning, 1);
        assert_eq!(room.deadline, Some(end - Duration::from_secs(60)));
        room.schedule(end - Duration::from_secs(10), &warn);
        assert_eq!(room.next_warning, 2);
        assert_eq!(room.deadline, Some(end));
    }

    #[test]
    fn a_room_without_hard_end_has_no_deadline() {
        let t0 = crate::virtual_base();
        let mut room = Room::new("vy:m".into(), Mode::Vy, None, String::new());
        room.schedule(t0, &[Duration::from_secs(60)]);
        assert_eq!(room.deadline, None);
    }
}
