//! Call reports over HTTP (README, "Call reports"): the join page's own summary at hang-up
//! (`POST /v1/join/{link_token}/report`, the link is the capability) and the per-booking report
//! (`GET /v1/bookings/{id}/report`, scope `bookings:read`).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::ToSchema;

use super::api::{ApiError, authenticate, body_error, parse_json, plausible_id, rfc3339};
use super::calls::{ConnectionPath, participant_totals, rfc3339_ms, unix_ms};
use super::store::StoreError;
use crate::api_key::Scope;
use crate::app::AppState;
use crate::openapi::ErrorBody;

/// Largest browser summary body: 4 KiB (the summary is a few hundred bytes; larger answers 413).
pub const MAX_SUMMARY_BYTES: usize = 4096;

/// How long after the booking's `hard_end_at` a summary is still taken (seconds): a page closed at the hard end
/// sends it a moment later.
pub const SUMMARY_GRACE_S: i64 = 3600;

/// ICE candidate type (RFC 8445 §5.1.1.1; `RTCIceCandidateType` of W3C WebRTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CandidateType {
    /// A host candidate (a local interface address).
    Host,
    /// Server reflexive (the address a STUN server saw).
    Srflx,
    /// Peer reflexive (learned from a connectivity check).
    Prflx,
    /// Relayed (a TURN relay address).
    Relay,
}

/// Transport of the selected pair between the peers (`RTCIceProtocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum IceProtocol {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
}

/// Transport between the browser and its TURN server when the local candidate is a relay candidate
/// (`RTCIceCandidateStats.relayProtocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RelayProtocol {
    /// TURN over UDP.
    Udp,
    /// TURN over TCP.
    Tcp,
    /// TURN over TLS (TURNS).
    Tls,
}

/// The browser family, never the full user agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UserAgentFamily {
    /// Chrome or Chromium.
    Chrome,
    /// Edge (Chromium).
    Edge,
    /// Firefox.
    Firefox,
    /// Safari (WebKit).
    Safari,
    /// Anything else.
    Other,
}

/// The ICE candidate pair the browser selected (`RTCIceCandidatePairStats` of the transport's selected pair).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CandidatePairSummary {
    /// The local candidate's type.
    pub local_type: CandidateType,
    /// The remote candidate's type.
    pub remote_type: CandidateType,
    /// The pair's transport.
    pub protocol: IceProtocol,
    /// With a local `relay` candidate: the transport to the TURN server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_protocol: Option<RelayProtocol>,
}

/// The join page's own summary of its call, from `RTCPeerConnection.getStats()` at hang-up. Every member is
/// optional, at least one is required; unknown members are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BrowserSummary {
    /// The selected candidate pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_pair: Option<CandidatePairSummary>,
    /// The selected pair's `currentRoundTripTime`, milliseconds (0 to 60 000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_trip_time_ms: Option<f64>,
    /// Fraction of inbound RTP packets lost, `packetsLost / (packetsReceived + packetsLost)` (0 to 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet_loss: Option<f64>,
    /// Average inbound bitrate over the call, bits per second (at most 10^10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_bitrate_bps: Option<u64>,
    /// Average outbound bitrate over the call, bits per second (at most 10^10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_bitrate_bps: Option<u64>,
    /// The browser family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent_family: Option<UserAgentFamily>,
}

impl BrowserSummary {
    /// 422 `invalid_field` naming the first member out of its range, or `invalid_summary` for an empty one.
    fn validate(&self) -> Result<(), ApiError> {
        let bad = |field: &str, what: &str| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", what.to_string()).field(field)
        };
        if self.candidate_pair.is_none()
            && self.round_trip_time_ms.is_none()
            && self.packet_loss.is_none()
            && self.inbound_bitrate_bps.is_none()
            && self.outbound_bitrate_bps.is_none()
            && self.user_agent_family.is_none()
        {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_summary",
                "the summary has no member; send at least one",
            ));
        }
        if let Some(p) = &self.candidate_pair
            && p.relay_protocol.is_some()
            && p.local_type != CandidateType::Relay
        {
            return Err(bad("candidate_pair.relay_protocol", "relay_protocol needs a local relay candidate"));
        }
        if self.round_trip_time_ms.is_some_and(|v| !(0.0..=60_000.0).contains(&v)) {
            return Err(bad("round_trip_time_ms", "0 to 60000 milliseconds"));
        }
        if self.packet_loss.is_some_and(|v| !(0.0..=1.0).contains(&v)) {
            return Err(bad("packet_loss", "a fraction from 0 to 1"));
        }
        for (field, v) in
            [("inbound_bitrate_bps", self.inbound_bitrate_bps), ("outbound_bitrate_bps", self.outbound_bitrate_bps)]
        {
            if v.is_some_and(|v| v > 10_000_000_000) {
                return Err(bad(field, "at most 10000000000 bits per second"));
            }
        }
        Ok(())
    }
}

/// `POST /v1/join/{link_token}/report`: the join page's summary of its call (sent with `navigator.sendBeacon` at
/// hang-up). The link token is the capability (no API key). The latest summary of each participant is kept and shown
/// in `GET /v1/bookings/{id}/report`. Accepted from the participant's opening instant until an hour after the
/// booking's `hard_end_at`. Any `Content-Type` (a beacon sends `text/plain` for a string); the body must be JSON.
#[utoipa::path(
    post,
    path = "/v1/join/{link_token}/report",
    tag = "join",
    operation_id = "send_browser_summary",
    security(()),
    params(("link_token" = String, Path, description = "The link token of the participant's join URL.")),
    request_body(content = BrowserSummary, content_type = "application/json"),
    responses(
        (status = 204, description = "Stored (it replaces the participant's previous summary)."),
        (status = 400, description = "Malformed JSON, unknown member, wrong type or unknown enum value (`invalid_request`, `field` when known).", body = ErrorBody),
        (status = 403, description = "`join_too_early`: the participant's window has not opened.", body = ErrorBody),
        (status = 404, description = "`link_invalid_or_revoked`.", body = ErrorBody),
        (status = 410, description = "`join_window_closed`: more than an hour after the booking's `hard_end_at`.", body = ErrorBody),
        (status = 413, description = "Body over 4 KiB (`payload_too_large`).", body = ErrorBody),
        (status = 422, description = "`invalid_field` (a member out of range, `field` names it), `invalid_summary` (no member).", body = ErrorBody)
    )
)]
pub async fn send_browser_summary(
    State(state): State<AppState>,
    Path(link_token): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if link_token.is_empty() || link_token.len() > 128 {
        return Err(super::api::link_invalid());
    }
    let body = body.map_err(body_error)?;
    if body.len() > MAX_SUMMARY_BYTES {
        return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "the summary is over 4 KiB"));
    }
    let (b, p) = super::api::by_link_token(&state, &link_token).await?;
    let summary: BrowserSummary = parse_json(&body)?;
    summary.validate()?;
    let now_ms = unix_ms();
    let now = now_ms / 1000;
    if now < b.window.opens_for(p.role) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "join_too_early", "the meeting is not open yet"));
    }
    if now > b.window.hard_end_at + SUMMARY_GRACE_S {
        return Err(ApiError::new(StatusCode::GONE, "join_window_closed", "the meeting's window has closed"));
    }
    let text = serde_json::to_string(&summary).map_err(ApiError::internal)?;
    sqlx::query(
        "INSERT INTO call_client_reports (booking_id, participant_id, received_ms, summary) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (booking_id, participant_id) DO UPDATE SET received_ms = excluded.received_ms, \
         summary = excluded.summary",
    )
    .bind(&b.id)
    .bind(&p.id)
    .bind(now_ms)
    .bind(&text)
    .execute(&state.store.pool)
    .await
    .map_err(StoreError::from)?;
    tracing::info!(target: "booking", booking = %b.id, role = p.role.as_str(), "browser summary stored");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// One admission to the room.
#[derive(Debug, Serialize, ToSchema)]
pub struct JoinEntry {
    /// When, RFC 3339 UTC with milliseconds.
    pub at: String,
}

/// One departure from the room.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeaveEntry {
    /// When, RFC 3339 UTC with milliseconds.
    pub at: String,
    /// Why: `closed` (the connection closed), `left` (the page said so), `replaced` (a newer connection of the same
    /// participant took over), `timeout` (no pong), `window_closed` (hard end), `cancelled`, `shutdown`,
    /// `rate_limited`, `too_big`, `send_failed`.
    pub reason: String,
}

/// One participant's part of a call report.
#[derive(Debug, Serialize, ToSchema)]
pub struct ParticipantReport {
    /// `par_…`.
    pub participant_id: String,
    /// `host` or `guest`.
    pub role: String,
    /// The app's id of the person.
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    /// Display name.
    pub display_name: String,
    /// Admitted to the room at least once.
    pub joined: bool,
    /// A no-show: the booking is confirmed, its `join_cutoff_at` passed and the participant never joined.
    pub no_show: bool,
    /// Connected right now.
    pub connected_now: bool,
    /// Admissions in order (at most 1000 entries per booking are listed).
    pub joins: Vec<JoinEntry>,
    /// Departures in order.
    pub leaves: Vec<LeaveEntry>,
    /// Admissions after the first.
    pub reconnects: i64,
    /// Seconds connected in all (the current connection up to now).
    pub connected_s: i64,
    /// `relayed` when Duet's relay carried at least 32 KiB of its media, else `direct`.
    pub transport: ConnectionPath,
    /// With `relayed`: `udp`, `tcp` or `tls` between the participant and the relay.
    pub relay_transport: Option<String>,
    /// TURN allocations made with the participant's credentials.
    pub relay_allocations: i64,
    /// Payload bytes the relay carried from the participant to the other side.
    pub relayed_bytes_to_peer: i64,
    /// Payload bytes the relay carried to the participant.
    pub relayed_bytes_to_client: i64,
    /// The join page's own summary at hang-up, when it sent one.
    pub browser_summary: Option<BrowserSummary>,
    /// When that summary arrived, RFC 3339 UTC.
    pub browser_summary_received_at: Option<String>,
}

/// `GET /v1/bookings/{id}/report`: scheduled and actual times and what each participant's connection did.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallReport {
    /// `bkg_…`.
    pub booking_id: String,
    /// The booking's status now (`pending`, `confirmed`, `rejected`, `cancelled`, `ended`).
    pub status: String,
    /// Scheduled start, RFC 3339 UTC.
    pub start_at: String,
    /// Scheduled end, RFC 3339 UTC.
    pub end_at: String,
    /// No first join after it.
    pub join_cutoff_at: String,
    /// The room closes then.
    pub hard_end_at: String,
    /// First admission of anyone.
    pub first_join_at: Option<String>,
    /// Actual start: both participants connected for the first time (`meeting.started`).
    pub started_at: Option<String>,
    /// Actual end (`meeting.ended`).
    pub ended_at: Option<String>,
    /// `window_closed`, `cancelled` or `all_left`.
    pub end_reason: Option<String>,
    /// Seconds from the actual start to the actual end (to now while the meeting runs).
    pub duration_s: Option<i64>,
    /// How often the two participants were paired (`ready` sent; 1 for an uninterrupted call).
    pub sessions: i64,
    /// Host then guest.
    pub participants: Vec<ParticipantReport>,
}

/// `GET /v1/bookings/{id}/report`.
#[utoipa::path(
    get,
    path = "/v1/bookings/{id}/report",
    tag = "bookings",
    operation_id = "get_call_report",
    security(("bearerAuth" = ["bookings:read"])),
    params(("id" = String, Path, description = "Booking id, `bkg_…`.")),
    responses(
        (status = 200, description = "The call report (empty figures before anyone joined).", body = CallReport),
        (status = 404, description = "No such booking in the caller's tenant (`not_found`).", body = ErrorBody)
    )
)]
pub async fn get_call_report(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsRead).await?;
    if !plausible_id(&id) {
        return Err(ApiError::not_found());
    }
    let b = state.store.booking(Some(&tenant), &id).await?.ok_or_else(ApiError::not_found)?;
    let now_ms = unix_ms();
    let live = state.relay.booking_usage(&b.id);
    let mut tx = state.store.pool.begin().await.map_err(StoreError::from)?;
    let session = sqlx::query(
        "SELECT first_join_ms, started_ms, ended_ms, end_reason, sessions FROM call_sessions WHERE booking_id = $1",
    )
    .bind(&b.id)
    .fetch_optional(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    let totals = participant_totals(&mut tx, &b, now_ms, &live).await?;
    let events =
        sqlx::query("SELECT participant_id, kind, at_ms, reason FROM call_events WHERE booking_id = $1 ORDER BY n")
            .bind(&b.id)
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::from)?;
    let summaries =
        sqlx::query("SELECT participant_id, received_ms, summary FROM call_client_reports WHERE booking_id = $1")
            .bind(&b.id)
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::from)?;
    tx.commit().await.map_err(StoreError::from)?;
    let get = |r: &sqlx::any::AnyRow, c: &str| -> Result<Option<i64>, ApiError> {
        r.try_get::<Option<i64>, _>(c).map_err(ApiError::internal)
    };
    let (first_join, started, ended, end_reason, sessions) = match &session {
        Some(r) => (
            get(r, "first_join_ms")?,
            get(r, "started_ms")?,
            get(r, "ended_ms")?,
            r.try_get::<Option<String>, _>("end_reason").map_err(ApiError::internal)?,
            get(r, "sessions")?.unwrap_or(0),
        ),
        None => (None, None, None, None, 0),
    };
    let mut participants = Vec::new();
    for (pid, t) in totals {
        let Some(p) = b.participants.iter().find(|p| p.id == pid) else { continue };
        let mut joins = Vec::new();
        let mut leaves = Vec::new();
        for e in events.iter().filter(|e| e.try_get::<String, _>("participant_id").is_ok_and(|x| x == pid)) {
            let at = rfc3339_ms(e.try_get::<i64, _>("at_ms").map_err(ApiError::internal)?);
            match e.try_get::<String, _>("kind").map_err(ApiError::internal)?.as_str() {
                "join" => joins.push(JoinEntry { at }),
                _ => leaves.push(LeaveEntry {
                    at,
                    reason: e.try_get::<Option<String>, _>("reason").map_err(ApiError::internal)?.unwrap_or_default(),
                }),
            }
        }
        let summary = summaries.iter().find(|r| r.try_get::<String, _>("participant_id").is_ok_and(|x| x == pid));
        let (browser_summary, received) = match summary {
            Some(r) => {
                let text: String = r.try_get("summary").map_err(ApiError::internal)?;
                let received: i64 = r.try_get("received_ms").map_err(ApiError::internal)?;
                (serde_json::from_str::<BrowserSummary>(&text).ok(), Some(rfc3339_ms(received)))
            }
            None => (None, None),
        };
        let joined = t.joins > 0 || p.first_joined_at.is_some();
        let local_relay = browser_summary
            .as_ref()
            .and_then(|s| s.candidate_pair.as_ref())
            .is_some_and(|c| c.local_type == CandidateType::Relay);
        participants.push(ParticipantReport {
            participant_id: pid.clone(),
            role: p.role.as_str().to_string(),
            reference: p.reference.clone(),
            display_name: p.display_name.clone(),
            joined,
            no_show: b.no_show(p, now_ms / 1000) && t.joins == 0,
            connected_now: t.connected_now,
            joins,
            leaves,
            reconnects: (t.joins - 1).max(0),
            connected_s: t.connected_ms / 1000,
            transport: t.transport_seen_by(local_relay),
            relay_transport: t.relay_transport.clone(),
            relay_allocations: t.relay_allocations,
            relayed_bytes_to_peer: t.bytes_to_peer,
            relayed_bytes_to_client: t.bytes_to_client,
            browser_summary,
            browser_summary_received_at: received,
        });
    }
    let report = CallReport {
        booking_id: b.id.clone(),
        status: b.status_at(now_ms / 1000).to_string(),
        start_at: rfc3339(b.start_at),
        end_at: rfc3339(b.end_at),
        join_cutoff_at: rfc3339(b.window.join_cutoff_at),
        hard_end_at: rfc3339(b.window.hard_end_at),
        first_join_at: first_join.map(rfc3339_ms),
        started_at: started.map(rfc3339_ms),
        ended_at: ended.map(rfc3339_ms),
        end_reason,
        duration_s: started.map(|s| (ended.unwrap_or(now_ms) - s).max(0) / 1000),
        sessions,
        participants,
    };
    Ok(axum::Json(report).into_response())
}
