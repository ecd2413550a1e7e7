//! `GET /v1/signal?token=…`: the native v1 protocol (research/signaling.md §10.3). The session token and the booking
//! are checked before the upgrade; a refused socket is still upgraded so the browser sees the close code: 4001 bad or
//! outdated token (the booking's `sequence` or the participant's link epoch moved: reschedule, link rotated or
//! revoked), 4003 outside the window, 4004 unknown, cancelled or external-link booking.
//!
//! Per-client counting (every mode, [`guard`]): an upgrade holds a *pending* place while its credential is checked
//! (and, when refused, while its close code is delivered); only a verified socket takes one of the client's
//! `max_connections_per_ip` places, so bogus upgrades cannot fill them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use duet_signaling::{Admission, Mode, close_code};
use serde::Deserialize;

use super::{Admit, close, connection, guard};
use crate::app::{AppState, unix_now};
use crate::booking::api::{ApiError, ice_servers, window_json};
use crate::booking::store::{Kind, Status};
use crate::client_ip::{IpKey, client_ip};

/// Query of `GET /v1/signal`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SignalQuery {
    /// The `session_token` of a `POST /v1/join/{link_token}` answer. A missing, bad or outdated token still gets
    /// the upgrade, then the close code (4001 bad or outdated token, 4003 outside the window, 4004 unknown or
    /// cancelled booking).
    token: Option<String>,
}

/// Refusals before any verification: `Origin` not allowed (403) or too many upgrades of this client being checked
/// (429). Returns the client's key (its address behind trusted proxies, IPv6 by /64) and its pending place.
pub(super) fn precheck(
    state: &AppState,
    mode: Mode,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<(IpKey, guard::Slot), Box<Response>> {
    let hub = &state.hub;
    if let Err(s) = guard::check_origin(&hub.config.allowed_origins, headers) {
        hub.count_refused(mode, "origin");
        return Err(ApiError::new(s, "origin_not_allowed", "this Origin may not open signaling sockets")
            .into_response()
            .into());
    }
    let ip = IpKey::of(client_ip(peer, headers, &hub.config.trusted_proxies, hub.config.forwarded_header));
    match hub.pending.acquire(ip) {
        Some(pending) => Ok((ip, pending)),
        None => {
            hub.count_refused(mode, "pending_upgrades");
            Err(too_many("too many upgrades from this address are being checked"))
        }
    }
}

/// The place of a verified socket among its client's `max_connections_per_ip` (429 when they are all taken).
pub(super) fn admitted(state: &AppState, mode: Mode, ip: IpKey) -> Result<guard::Slot, Box<Response>> {
    state.hub.guard.acquire(ip).ok_or_else(|| {
        state.hub.count_refused(mode, "too_many_connections");
        too_many("too many sockets from this address")
    })
}

fn too_many(message: &str) -> Box<Response> {
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_connections", message).into_response().into()
}

/// Read buffer of one WebSocket. tungstenite's default is 128 KiB per socket, zero-filled on the first read: it made
/// an idle signaling socket cost 133 KiB of RSS (benches/signal_vs_peerjs.sh idle, 20 000 sockets); 8 KiB brings it to
/// 13 KiB, as peerjs-server, and a 64 KiB frame still reads fine (the buffer grows for it).
const READ_BUFFER: usize = 8 * 1024;

/// The transport settings of every signaling socket: the read buffer above, and frames up to twice the cores' limit,
/// so that between the two the cores close with 1009 themselves (with an `error too_big` first in native mode).
pub(super) fn configure(ws: WebSocketUpgrade, state: &AppState) -> WebSocketUpgrade {
    let limit = state.hub.config.max_message_bytes * 2;
    ws.read_buffer_size(READ_BUFFER).max_message_size(limit).max_frame_size(limit)
}

/// `GET /v1/signal?token=…`: the native v1 signaling WebSocket (no API key: the session token of a join is the
/// credential). The token, the booking and the window are checked before the upgrade.
#[utoipa::path(
    get,
    path = "/v1/signal",
    tag = "signaling",
    operation_id = "signal",
    security(()),
    params(SignalQuery),
    responses(
        (status = 101, description = "Switching Protocols: a WebSocket carrying the native v1 signaling protocol (JSON text frames); a refused token is told by the close code."),
        (status = 400, description = "Not a WebSocket upgrade request (text/plain)."),
        (status = 403, description = "`Origin` not allowed.", body = crate::openapi::ErrorBody),
        (status = 429, description = "Too many upgrades or sockets from this client.", body = crate::openapi::ErrorBody)
    )
)]
pub async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<SignalQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let (ip, pending) = match precheck(&state, Mode::Native, peer, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    match admit(&state, q.token.as_deref().unwrap_or("")).await {
        Ok(admission) => {
            let slot = match admitted(&state, Mode::Native, ip) {
                Ok(s) => s,
                Err(r) => return *r,
            };
            drop(pending);
            configure(ws, &state).on_upgrade(move |socket| async move {
                tracing::info!(target: "signaling", booking = %admission.booking, role = admission.role.as_str(), "native socket admitted");
                connection(socket, state.hub.clone(), Admit::Native(admission), slot).await
            })
        }
        Err((code, reason)) => configure(ws, &state).on_upgrade(move |socket| async move {
            tracing::debug!(target: "signaling", code, reason, "native socket refused");
            state.hub.count_refused(Mode::Native, "bad_token");
            state.metrics.signal_closes.with_label_values(&[&code.to_string()]).inc();
            close(socket, code, reason, pending).await
        }),
    }
}

async fn admit(state: &AppState, token: &str) -> Result<Admission, (u16, &'static str)> {
    let claims = state.session_keys().verify(token).map_err(|_| (close_code::BAD_TOKEN, "invalid or expired token"))?;
    let booking = state
        .store
        .booking(None, &claims.bkg)
        .await
        .map_err(|_| (1011, "internal error"))?
        .ok_or((close_code::UNKNOWN_BOOKING, "unknown booking"))?;
    if booking.status != Status::Confirmed {
        return Err((close_code::UNKNOWN_BOOKING, "booking cancelled, rejected or not confirmed"));
    }
    if booking.kind != Kind::Hosted {
        return Err((close_code::UNKNOWN_BOOKING, "an external-link booking has no room"));
    }
    if booking.sequence != claims.seq {
        return Err((close_code::BAD_TOKEN, "token outdated, join again"));
    }
    let participant = booking
        .participants
        .iter()
        .find(|p| p.id == claims.sub)
        .ok_or((close_code::BAD_TOKEN, "unknown participant"))?;
    if participant.link_epoch != claims.pep {
        return Err((close_code::BAD_TOKEN, "link rotated or revoked"));
    }
    let now = unix_now();
    if now >= booking.window.hard_end_at || now < booking.window.opens_for(participant.role) {
        return Err((close_code::OUTSIDE_WINDOW, "outside the meeting window"));
    }
    let ice = ice_servers(state, &booking, participant);
    let window = window_json(&booking.window);
    let raw = |v: &serde_json::Value| serde_json::value::to_raw_value(v).map_err(|_| (1011, "internal error"));
    Ok(Admission {
        booking: booking.id.clone(),
        participant: participant.id.clone(),
        role: participant.role,
        ice_servers: raw(&ice)?,
        hard_end_at_rfc3339: window["hard_end_at"].as_str().unwrap_or_default().to_string(),
        window: raw(&window)?,
        hard_end_at: instant_of(booking.window.hard_end_at),
    })
}

/// The monotonic instant of a Unix time (seconds) in the future; a past time maps to now.
pub(crate) fn instant_of(unix: i64) -> Instant {
    Instant::now() + Duration::from_secs((unix - unix_now()).max(0) as u64)
}
