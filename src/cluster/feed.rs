//! The booking feed: what a change of one booking means for the live calls, on every node (README, "Several
//! nodes").
//!
//! A node that changes a booking (cancel, reschedule, extension, link rotation or revocation, erasure) applies the
//! change to its own relay and hub at once ([`announce`]) and, in cluster mode, publishes a [`FeedEvent`] on
//! `duet:feed`; every other node applies the same event to its relay and hub when it arrives ([`run`]), in
//! milliseconds. The relay's rules are replace-or-raise and idempotent, so an event seen twice changes nothing.
//! A window change carries no instants: each node reads the booking again from the database, so two changes that
//! arrive out of order still leave every node on the stored window.
//!
//! Every time the Redis link comes (back) up, each node rebuilds its relay's view from the database
//! ([`crate::daemon::sync_relay`]) and closes the rooms of bookings cancelled meanwhile, so a node that missed
//! messages during an outage is right again.

use duet_signaling::CloseReason;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::app::AppState;

/// One change of a booking, as published on `duet:feed` (JSON, tagged by `event`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum FeedEvent {
    /// The booking was cancelled (or otherwise revoked): its rooms close with 4004 and its TURN credentials are
    /// refused until `until` (unix seconds, the latest hard end the booking ever had).
    Revoked {
        /// Booking id.
        booking: String,
        /// Unix seconds.
        until: i64,
    },
    /// A participant's link was rotated (socket closed 4001: join again) or revoked or erased (4004). TURN
    /// credentials of links older than `epoch` are refused until `keep_until` (unix seconds).
    Participant {
        /// Booking id.
        booking: String,
        /// Participant id.
        participant: String,
        /// The participant's link epoch after the change.
        epoch: i64,
        /// Unix seconds.
        keep_until: i64,
        /// True for a rotation (close 4001), false for a revocation or erasure (close 4004).
        rotated: bool,
    },
    /// The booking's window changed (reschedule, extension): each node reads it again and follows it.
    Window {
        /// Tenant id.
        tenant: String,
        /// Booking id.
        booking: String,
    },
}

/// The message on the wire: the event and the number of the node that sent it (which has applied it already).
#[derive(Serialize, Deserialize)]
struct Envelope {
    from: u32,
    #[serde(flatten)]
    event: FeedEvent,
}

/// Applies `event` to this node's relay and hub now and, in cluster mode, sends it to every other node.
pub async fn announce(state: &AppState, event: FeedEvent) {
    if let Some(cluster) = &state.cluster
        && let Ok(bytes) = serde_json::to_vec(&Envelope { from: cluster.node(), event: event.clone() })
    {
        cluster.publish_feed(&bytes);
    }
    apply(state, event).await;
}

/// Applies `event` to this node's relay and hub only.
pub async fn apply(state: &AppState, event: FeedEvent) {
    match event {
        FeedEvent::Revoked { booking, until } => {
            state.hub.cancel_booking(&booking);
            state.relay.revoke_booking(&booking, until);
        }
        FeedEvent::Participant { booking, participant, epoch, keep_until, rotated } => {
            let (code, reason) = if rotated { (4001, "link rotated, join again") } else { (4004, "link revoked") };
            state.hub.close_participant(&booking, &participant, code, reason);
            state.relay.revoke_participant(&booking, &participant, epoch, keep_until);
        }
        FeedEvent::Window { tenant, booking } => {
            crate::booking::reschedule::follow_window_local(state, &tenant, &booking).await;
        }
    }
}

/// Consumes the feed until `shutdown`: applies other nodes' events, and after every (re)connect of the Redis link
/// rebuilds this node's relay from the database and closes the rooms of bookings cancelled meanwhile.
pub async fn run(state: AppState, cluster: Cluster, mut rx: mpsc::Receiver<Vec<u8>>, shutdown: CancellationToken) {
    let mut epochs = cluster.link_epochs();
    // The start-up already built the relay from the database: only later connects resynchronise.
    let mut seen = 1;
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { return };
                match serde_json::from_slice::<Envelope>(&msg) {
                    Ok(env) if env.from == cluster.node() => {}
                    Ok(env) => apply(&state, env.event).await,
                    Err(e) => tracing::warn!(target: "duet::cluster", error = %e, "unreadable booking-feed message"),
                }
            }
            changed = epochs.changed() => {
                if changed.is_err() {
                    return;
                }
                let epoch = *epochs.borrow_and_update();
                if epoch > seen {
                    seen = epoch;
                    resync(&state).await;
                }
            }
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Rebuilds the relay's revocations and windows from the database, and closes the rooms of cancelled bookings.
async fn resync(state: &AppState) {
    match crate::daemon::sync_relay(&state.store, &state.relay).await {
        Ok(cancelled) => {
            for booking in &cancelled {
                state.hub.close_booking(booking, CloseReason::Cancelled);
            }
            tracing::info!(target: "duet::cluster", cancelled = cancelled.len(), "relay and rooms rebuilt from the database after the Redis link came back");
        }
        Err(e) => tracing::error!(target: "duet::cluster", error = %e, "rebuilding the relay from the database"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trip_is_flat_json() {
        let env = Envelope { from: 7, event: FeedEvent::Window { tenant: "ten_a".into(), booking: "bkg_b".into() } };
        let text = serde_json::to_string(&env).unwrap_or_default();
        assert_eq!(text, r#"{"from":7,"event":"window","tenant":"ten_a","booking":"bkg_b"}"#);
        let back: Envelope = serde_json::from_str(&text).expect("parses");
        assert_eq!(back.from, 7);
        assert_eq!(back.event, FeedEvent::Window { tenant: "ten_a".into(), booking: "bkg_b".into() });
        let revoked: Envelope =
            serde_json::from_str(r#"{"from":1,"event":"revoked","booking":"bkg_x","until":5}"#).expect("parses");
        assert_eq!(revoked.event, FeedEvent::Revoked { booking: "bkg_x".into(), until: 5 });
        assert!(serde_json::from_str::<Envelope>(r#"{"from":1,"event":"nope"}"#).is_err());
    }
}
