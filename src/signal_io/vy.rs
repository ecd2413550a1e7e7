//! Virtual Y mode: a drop-in for the Virtual Y signaling server (open-y-subprojects/virtual_y_signaling_server,
//! research/signaling.md §10.2). A WebSocket upgrade on **any path** with `?meetingId=…&isInstructorRole=…` joins the
//! meeting's room: `isInstructorRole=true` is the instructor (host), anything else the customer (guest). The
//! `meetingId` is looked up as the `external_id` of a booking of `[signaling.vy] tenant` and the upgrade is refused
//! with 403 outside its join window (the client's 1 s retry loop then polls until the window opens);
//! `require_booking = false` gives the original open relay. Requests without `meetingId` fall through to the JSON 404
//! of the API. The mode is off unless `[signaling.vy] enabled = true`.
//!
//! **Security.** The protocol carries no credential: whoever knows the meeting id may knock, and the role is the
//! client's own claim. Duet therefore (1) never lets a newcomer displace a live participant (the hub closes it with
//! 4009 before it sees any frame of the room, see [`duet_signaling::Hub::handle_connect_vy`]), (2) limits refused
//! upgrades (unknown or closed meeting ids, taken slots) per client with a token bucket, answering 429 before any
//! lookup once it is empty, so ids cannot be enumerated fast, and (3) looks ids up in one tenant with one index probe.
//! What remains (documented in the README): a stranger who learns a meeting id can take a slot that nobody holds yet.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use duet_signaling::{Mode, VyAdmission};
use serde::Deserialize;

use super::native::{admitted, configure, instant_of, precheck};
use super::{Admit, connection};
use crate::app::{AppState, unix_now};
use crate::booking::api::ApiError;

#[derive(Deserialize)]
struct VyQuery {
    #[serde(rename = "meetingId")]
    meeting_id: Option<String>,
    #[serde(rename = "isInstructorRole")]
    is_instructor_role: Option<String>,
}

/// Fallback of the HTTP router (and the whole router of a dedicated Virtual Y listener).
pub async fn fallback(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let q: Option<VyQuery> = query.as_deref().and_then(|q| serde_urlencoded::from_str(q).ok());
    let vy_enabled = state.hub.config.vy.enabled;
    let Some(q) = q.filter(|q| q.meeting_id.is_some()) else {
        // A WebSocket upgrade on an unknown path is a Virtual Y client without its meetingId (research §10.2: 400).
        if vy_enabled && ws.is_ok() {
            return ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", "meetingId is required").into_response();
        }
        return ApiError::not_found().into_response();
    };
    if !vy_enabled {
        return ApiError::not_found().into_response();
    }
    let meeting_id = q.meeting_id.unwrap_or_default();
    if meeting_id.is_empty() || meeting_id.len() > 256 {
        return ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", "meetingId is required").into_response();
    }
    let Ok(ws) = ws else {
        return ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", "a WebSocket upgrade is required")
            .into_response();
    };
    let (ip, pending) = match precheck(&state, Mode::Vy, peer, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let hub = &state.hub;
    // A token is taken now and given back if the upgrade is admitted: concurrent guesses of one client cannot all
    // pass the check while their lookups run.
    if !hub.refusals.try_take(ip, Instant::now()) {
        hub.count_refused(Mode::Vy, "rate_limited");
        return ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many refused upgrades; retry later")
            .into_response();
    }
    let role = VyAdmission::role_from_query(q.is_instructor_role.as_deref());
    let cfg = &hub.config.vy;
    let admission = if cfg.require_booking {
        let now = unix_now();
        let booking = match state.store.live_by_external_id(&cfg.tenant, &meeting_id, now).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(target: "signaling", error = %e, "vy booking lookup");
                return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error").into_response();
            }
        };
        let Some(b) = booking.filter(|b| now >= b.window.opens_for(role)) else {
            tracing::debug!(target: "signaling", "vy upgrade outside any window");
            hub.count_refused(Mode::Vy, "outside_window");
            return ApiError::new(StatusCode::FORBIDDEN, "outside_window", "the meeting is not open").into_response();
        };
        let participant = b.participants.iter().find(|p| p.role == role).map(|p| p.id.clone());
        VyAdmission::booking(b.id.clone(), role, instant_of(b.window.hard_end_at))
            .with_participant(participant.unwrap_or_default())
            .with_strict(cfg.strict)
    } else {
        VyAdmission::open_relay(&meeting_id, role).with_strict(cfg.strict)
    };
    let slot = match admitted(&state, Mode::Vy, ip) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    hub.refusals.refund(ip, Instant::now());
    drop(pending);
    // The booking id, never the meeting id: that is what keeps strangers out of a vy meeting.
    let room = if admission.hard_end_at.is_some() { admission.room.as_str() } else { "open relay" };
    tracing::info!(target: "signaling", room, role = admission.role.as_str(), "vy socket admitted");
    configure(ws, &state).on_upgrade(move |socket| connection(socket, state.hub.clone(), Admit::Vy(admission), slot))
}
