//! Virtual Y mode: a drop-in for the Virtual Y signaling server (open-y-subprojects/virtual_y_signaling_server,
//! research/signaling.md §10.2). A WebSocket upgrade on **any path** with `?meetingId=…&isInstructorRole=…` joins the
//! meeting's room: `isInstructorRole=true` is the instructor (host), anything else the customer (guest). The
//! `meetingId` is looked up as a booking's `external_id` and the upgrade is refused with 403 outside its join window
//! (the client's 1 s retry loop then polls until the window opens); `require_booking = false` gives the original open
//! relay. Requests without `meetingId` fall through to the JSON 404 of the API.

use std::net::SocketAddr;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use duet_signaling::VyAdmission;
use serde::Deserialize;

use super::native::{configure, core_role, instant_of, precheck};
use super::{Admit, connection};
use crate::app::{AppState, unix_now};
use crate::booking::api::ApiError;
use crate::booking::window::Role;

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
    let slot = match precheck(&state, peer, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let role = VyAdmission::role_from_query(q.is_instructor_role.as_deref());
    let cfg = &state.hub.config.vy;
    let admission = if cfg.require_booking {
        let bookings = match state.store.by_external_id(&meeting_id).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(target: "signaling", error = %e, "vy booking lookup");
                return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error").into_response();
            }
        };
        let booking_role = if role == duet_signaling::Role::Host { Role::Host } else { Role::Guest };
        let now = unix_now();
        let open = bookings.into_iter().find(|b| now >= b.window.opens_for(booking_role) && now < b.window.hard_end_at);
        let Some(b) = open else {
            tracing::debug!(target: "signaling", meeting_id, "vy upgrade outside any window");
            return ApiError::new(StatusCode::FORBIDDEN, "outside_window", "the meeting is not open").into_response();
        };
        let participant = b.participants.iter().find(|p| p.role == booking_role).map(|p| p.id.clone());
        VyAdmission::booking(b.id.clone(), core_role(booking_role), instant_of(b.window.hard_end_at))
            .with_participant(participant.unwrap_or_default())
            .with_strict(cfg.strict)
    } else {
        VyAdmission::open_relay(&meeting_id, role).with_strict(cfg.strict)
    };
    tracing::info!(target: "signaling", room = %admission.room, role = admission.role.as_str(), "vy socket admitted");
    configure(ws, &state).on_upgrade(move |socket| connection(socket, state.hub.clone(), Admit::Vy(admission), slot))
}
