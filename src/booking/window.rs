//! The join window (DESIGN §3): the instants that decide who may join when. Pure functions of the booking and the
//! policy, on Unix seconds (UTC), so they are tested without a clock.

use serde::Serialize;

use crate::config::BookingPolicy;

/// A participant's role in a 1-on-1 booking: the hub's own type (`duet_signaling::Role`), so the store, the API and
/// the hub share one: `"host"` (may join `host_early_join` before start; the WebRTC initiator) or `"guest"` (may
/// join `early_join` before start).
pub use duet_signaling::Role;

/// A booking's own join policy (`join_policy` on create and `PATCH`): each member present replaces the daemon's
/// `[booking]` default for this booking; an absent (null) one keeps following the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinPolicy {
    /// Seconds before `start_at` the guest may join, 0 to 3600 (`[booking] early_join` when null).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 3600)]
    pub early_join_s: Option<i64>,
    /// Seconds before `start_at` the host may join, 0 to 3600 (`[booking] host_early_join` when null).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 3600)]
    pub host_early_join_s: Option<i64>,
    /// Seconds after `end_at` admitted participants may stay, 0 to 7200 (`[booking] overrun_grace` when null).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 7200)]
    pub overrun_grace_s: Option<i64>,
}

impl JoinPolicy {
    /// The largest `early_join_s` and `host_early_join_s`, seconds (60 minutes, as Jitsi and cal.com bound early join).
    pub const MAX_EARLY_JOIN_S: i64 = 3600;
    /// The largest `overrun_grace_s`, seconds (two hours).
    pub const MAX_OVERRUN_GRACE_S: i64 = 7200;

    /// The first member out of its range, as `(name, max)`.
    pub fn out_of_range(&self) -> Option<(&'static str, i64)> {
        [
            ("early_join_s", self.early_join_s, Self::MAX_EARLY_JOIN_S),
            ("host_early_join_s", self.host_early_join_s, Self::MAX_EARLY_JOIN_S),
            ("overrun_grace_s", self.overrun_grace_s, Self::MAX_OVERRUN_GRACE_S),
        ]
        .into_iter()
        .find(|(_, v, max)| v.is_some_and(|v| !(0..=*max).contains(&v)))
        .map(|(name, _, max)| (name, max))
    }

    /// `self` with the members present in `patch` replaced.
    pub fn merged(self, patch: &JoinPolicy) -> JoinPolicy {
        JoinPolicy {
            early_join_s: patch.early_join_s.or(self.early_join_s),
            host_early_join_s: patch.host_early_join_s.or(self.host_early_join_s),
            overrun_grace_s: patch.overrun_grace_s.or(self.overrun_grace_s),
        }
    }

    /// The daemon's defaults with this booking's members applied.
    pub fn apply(&self, defaults: &BookingPolicy) -> BookingPolicy {
        let secs = |own: Option<i64>, d: std::time::Duration| {
            own.map_or(d, |s| std::time::Duration::from_secs(s.max(0) as u64))
        };
        BookingPolicy {
            early_join: secs(self.early_join_s, defaults.early_join),
            host_early_join: secs(self.host_early_join_s, defaults.host_early_join),
            overrun_grace: secs(self.overrun_grace_s, defaults.overrun_grace),
            ..*defaults
        }
    }
}

/// The window instants of one booking, Unix seconds UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinWindow {
    /// `start - host_early_join`.
    pub host_opens_at: i64,
    /// `start - early_join`.
    pub opens_at: i64,
    /// `end`: no first-time join at or after it.
    pub join_cutoff_at: i64,
    /// `end + overrun_grace`: the room closes and TURN credentials expire.
    pub hard_end_at: i64,
}

/// Why a join is refused (mapped to HTTP 403/410 by the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinRefusal {
    /// Before the participant's opening instant; carries that instant.
    TooEarly {
        /// Unix seconds when this participant may join.
        opens_at: i64,
    },
    /// At or after `hard_end_at`, or after `join_cutoff_at` for someone who never joined.
    Closed,
}

impl JoinWindow {
    /// Computes the window of a booking from `start`/`end` (Unix seconds) and the policy.
    pub fn compute(start: i64, end: i64, policy: &BookingPolicy) -> JoinWindow {
        JoinWindow {
            host_opens_at: start - policy.host_early_join.as_secs() as i64,
            opens_at: start - policy.early_join.as_secs() as i64,
            join_cutoff_at: end,
            hard_end_at: end + policy.overrun_grace.as_secs() as i64,
        }
    }

    /// The instant `role` may first join.
    pub fn opens_for(&self, role: Role) -> i64 {
        match role {
            Role::Host => self.host_opens_at,
            Role::Guest => self.opens_at,
        }
    }

    /// Decides a join at `now`. `joined_before`: the participant was admitted earlier (may reconnect after the
    /// cutoff, until `hard_end_at`).
    pub fn admit(&self, role: Role, now: i64, joined_before: bool) -> Result<(), JoinRefusal> {
        let opens_at = self.opens_for(role);
        if now < opens_at {
            return Err(JoinRefusal::TooEarly { opens_at });
        }
        if now >= self.hard_end_at || (now >= self.join_cutoff_at && !joined_before) {
            return Err(JoinRefusal::Closed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn policy() -> BookingPolicy {
        BookingPolicy {
            early_join: Duration::from_secs(600),
            host_early_join: Duration::from_secs(900),
            overrun_grace: Duration::from_secs(900),
            max_duration: Duration::from_secs(8 * 3600),
            start_leeway: Duration::from_secs(60),
            horizon: Duration::from_secs(365 * 86_400),
            host_extend_max: Duration::from_secs(1800),
        }
    }

    const START: i64 = 1_800_000_000;
    const END: i64 = START + 1800;

    #[test]
    fn instants_follow_the_policy() {
        let w = JoinWindow::compute(START, END, &policy());
        assert_eq!(w.host_opens_at, START - 900);
        assert_eq!(w.opens_at, START - 600);
        assert_eq!(w.join_cutoff_at, END);
        assert_eq!(w.hard_end_at, END + 900);
    }

    #[test]
    fn host_opens_before_guest() {
        let w = JoinWindow::compute(START, END, &policy());
        let t = START - 700;
        assert_eq!(w.admit(Role::Host, t, false), Ok(()));
        assert_eq!(w.admit(Role::Guest, t, false), Err(JoinRefusal::TooEarly { opens_at: START - 600 }));
        assert_eq!(w.admit(Role::Guest, START - 600, false), Ok(()), "the opening instant itself is inside");
    }

    #[test]
    fn cutoff_stops_first_joins_but_not_reconnects() {
        let w = JoinWindow::compute(START, END, &policy());
        assert_eq!(w.admit(Role::Guest, END - 1, false), Ok(()));
        assert_eq!(w.admit(Role::Guest, END, false), Err(JoinRefusal::Closed));
        assert_eq!(w.admit(Role::Guest, END, true), Ok(()));
        assert_eq!(w.admit(Role::Guest, END + 899, true), Ok(()));
        assert_eq!(w.admit(Role::Guest, END + 900, true), Err(JoinRefusal::Closed));
        assert_eq!(w.admit(Role::Host, END + 900, true), Err(JoinRefusal::Closed));
    }

    #[test]
    fn a_booking_policy_replaces_only_its_own_members() {
        let own = JoinPolicy { early_join_s: Some(0), host_early_join_s: None, overrun_grace_s: Some(60) };
        let w = JoinWindow::compute(START, END, &own.apply(&policy()));
        assert_eq!((w.opens_at, w.host_opens_at, w.hard_end_at), (START, START - 900, END + 60));
        let patched = own.merged(&JoinPolicy { overrun_grace_s: Some(120), ..JoinPolicy::default() });
        assert_eq!(patched, JoinPolicy { early_join_s: Some(0), host_early_join_s: None, overrun_grace_s: Some(120) });
        assert_eq!(JoinPolicy { overrun_grace_s: Some(7201), ..own }.out_of_range(), Some(("overrun_grace_s", 7200)));
        assert_eq!(JoinPolicy { early_join_s: Some(-1), ..own }.out_of_range(), Some(("early_join_s", 3600)));
        assert_eq!(own.out_of_range(), None);
    }
}
