//! Reschedule and extend: `PATCH /v1/bookings/{id}` (an API key, `If-Match`) and `POST /v1/join/{link}/extend` (the
//! host, from inside the call). Both keep the booking id, raise `sequence` and make the live call follow the new
//! window: the hub moves the room's warnings and close and sends both sockets a `window` `changed` frame, the relay
//! ends the booking's credentials and allocations at the new hard end (README, "Reschedule and extend").
//!
//! Concurrency is optimistic (RFC 9110 §13.1.1): the write succeeds only if the stored `sequence` is still the one
//! the change was computed from ([`Store::update_booking`](super::store::Store::update_booking)); the database still
//! enforces the host's no-overlap rule on the new times.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use duet_signaling::{CloseReason, WindowUpdate, close_code};
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::api::{
    ApiError, BookingView, WindowView, authenticate, body_error, booking_response, check_join_policy, check_times,
    parse_instant, parse_json, plausible_id, rfc3339, slot_unavailable, window_json,
};
use super::store::{Booking, Kind, RescheduleEvent, Status, StoreError};
use super::window::{JoinPolicy, JoinWindow, Role};
use crate::api_key::Scope;
use crate::app::{AppState, unix_now};
use crate::openapi::ErrorBody;

/// `PATCH /v1/bookings/{id}` body: every member is optional, those present replace the booking's (unknown members:
/// 400 `invalid_request`).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchBooking {
    /// 1 to 200 characters without control characters.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub title: Option<String>,
    /// RFC 3339 with an offset. A changed start is checked as on create (not in the past beyond `start_leeway`, at
    /// most `horizon` ahead); an unchanged one is not, so a running call can be extended.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub start_at: Option<String>,
    /// RFC 3339 with an offset: after `start_at`, at most `max_duration` later, and the new hard end
    /// (`end_at + overrun_grace`) after now (else 422 `invalid_duration`).
    #[serde(default)]
    #[schema(format = DateTime)]
    pub end_at: Option<String>,
    /// Any JSON object of at most 4096 bytes and 4 levels (else 422 `invalid_field`); replaces the stored one.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Box<RawValue>>,
    /// Members present replace the booking's own join policy (the window is computed again).
    #[serde(default)]
    pub join_policy: Option<JoinPolicy>,
}

/// The sequence an `If-Match` header asks for: `Ok(None)` for `*` (any current version), 428
/// `precondition_required` without the header, 412 `precondition_failed` for a value that is not one strong entity
/// tag `"<sequence>"` (it can match no version).
fn if_match(headers: &HeaderMap, current: i64) -> Result<Option<i64>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_REQUIRED,
            "precondition_required",
            "send `If-Match: \"<sequence>\"` with the booking's current sequence (its ETag)",
        )
        .field("If-Match"));
    };
    let text = v.to_str().unwrap_or_default().trim();
    if text == "*" {
        return Ok(None);
    }
    match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')).and_then(|t| t.parse::<i64>().ok()) {
        Some(seq) => Ok(Some(seq)),
        None => Err(stale(current)),
    }
}

/// 412 `precondition_failed` with the current `sequence`.
fn stale(current: i64) -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        "precondition_failed",
        "the booking changed since you read it: read it again (its ETag is the current sequence)",
    )
    .field("If-Match")
    .with("sequence", json!(current))
}

/// 409 `booking_not_modifiable` with the booking's current `status`.
fn not_modifiable(b: &Booking, now: i64) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "booking_not_modifiable",
        format!("a {} booking cannot be rescheduled or extended", b.status_at(now)),
    )
    .with("status", json!(b.status_at(now)))
}

/// Whether a booking may still change at `now`: pending or confirmed, and its hard end not passed.
fn modifiable(b: &Booking, now: i64) -> bool {
    matches!(b.status, Status::Pending | Status::Confirmed) && now < b.window.hard_end_at
}

/// `PATCH /v1/bookings/{id}`: reschedule (new `start_at` / `end_at`), extend (a later `end_at`, also during the
/// call), retitle, replace `metadata`, change the booking's `join_policy`. Needs `If-Match: "<sequence>"` (the
/// `ETag` of booking responses; `*` for any). The id stays, `sequence` goes up by one, session tokens of the old
/// sequence stop working, and a live call follows the new window (see the module documentation). A body that
/// changes nothing answers 200 with the booking unchanged.
#[utoipa::path(
    patch,
    path = "/v1/bookings/{id}",
    tag = "bookings",
    operation_id = "patch_booking",
    security(("bearerAuth" = ["bookings:write"])),
    params(
        ("id" = String, Path, description = "Booking id, `bkg_…`."),
        ("If-Match" = String, Header, description = "The booking's ETag, `\"<sequence>\"`, or `*` (any version).", min_length = 1, max_length = 20, pattern = r#"^(\*|"[0-9]{1,18}")$"#)
    ),
    request_body = PatchBooking,
    responses(
        (status = 200, description = "The booking after the change.", body = BookingView, headers(("ETag" = String, description = "`\"<sequence>\"`: the `If-Match` of the next change."))),
        (status = 400, description = "`invalid_request`: not JSON, unknown member, wrong type.", body = ErrorBody),
        (status = 404, description = "No such booking in the caller's tenant (`not_found`).", body = ErrorBody),
        (status = 409, description = "`booking_not_modifiable` (member `status`: cancelled, rejected or ended), `slot_unavailable` (the new times overlap another booking of the host, buffers included).", body = ErrorBody),
        (status = 412, description = "`precondition_failed`: `If-Match` is not the current sequence (member `sequence`).", body = ErrorBody),
        (status = 413, description = "`payload_too_large`.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`.", body = ErrorBody),
        (status = 422, description = "`invalid_datetime`, `invalid_duration`, `start_in_past`, `outside_booking_horizon`, `invalid_field`.", body = ErrorBody),
        (status = 428, description = "`precondition_required`: no `If-Match`.", body = ErrorBody)
    )
)]
pub async fn patch_booking(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsWrite).await?;
    if !plausible_id(&id) {
        return Err(ApiError::not_found());
    }
    let body = body.map_err(body_error)?;
    let old = state.store.booking(Some(&tenant), &id).await?.ok_or_else(ApiError::not_found)?;
    let expected = if_match(&headers, old.sequence)?.unwrap_or(old.sequence);
    if expected != old.sequence {
        return Err(stale(old.sequence));
    }
    let req: PatchBooking = parse_json(&body)?;
    let now = unix_now();
    if !modifiable(&old, now) {
        return Err(not_modifiable(&old, now));
    }
    if let Some(t) = &req.title {
        super::api::check_text("title", t, 200)?;
    }
    if let Some(m) = &req.metadata {
        super::api::check_metadata(m)?;
    }
    let start = req.start_at.as_deref().map(|v| parse_instant("start_at", v)).transpose()?.unwrap_or(old.start_at);
    let end = req.end_at.as_deref().map(|v| parse_instant("end_at", v)).transpose()?.unwrap_or(old.end_at);
    check_times(&state, start, end, now, start != old.start_at)?;
    let join_policy = match &req.join_policy {
        Some(p) => {
            check_join_policy(p)?;
            old.join_policy.merged(p)
        }
        None => old.join_policy,
    };
    let window = JoinWindow::compute(start, end, &join_policy.apply(&state.policy));
    if window.hard_end_at <= now {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_duration",
            "the new `end_at` (plus the overrun grace) is in the past: cancel the booking instead",
        )
        .field("end_at"));
    }
    let mut new = old.clone();
    new.title = req.title.unwrap_or(new.title);
    new.metadata = req.metadata.map(|m| m.get().to_string()).or(new.metadata);
    new.start_at = start;
    new.end_at = end;
    new.window = window;
    new.join_policy = join_policy;
    let rescheduled = new.window != old.window || (start, end) != (old.start_at, old.end_at);
    if !rescheduled && new.title == old.title && new.metadata == old.metadata && new.join_policy == old.join_policy {
        return Ok(booking_response(StatusCode::OK, &old));
    }
    if rescheduled {
        new.rescheduled_at = Some(now);
        new.max_hard_end_at = old.max_hard_end_at.max(window.hard_end_at);
    }
    new.sequence = old.sequence + 1;
    new.updated_at = now;
    let reason = if start == old.start_at && end > old.end_at { "extended" } else { "rescheduled" };
    let event =
        RescheduleEvent { reason, from_call: false, previous_start_at: old.start_at, previous_end_at: old.end_at };
    match state.store.update_booking(&new, expected, rescheduled.then_some(&event)).await {
        Ok(true) => {}
        Ok(false) => {
            // Changed (or cancelled) between our read and our write.
            let cur = state.store.booking(Some(&tenant), &id).await?.ok_or_else(ApiError::not_found)?;
            return Err(if modifiable(&cur, now) { stale(cur.sequence) } else { not_modifiable(&cur, now) });
        }
        Err(StoreError::SlotUnavailable) => return Err(conflict(&state, &new).await),
        Err(e) => return Err(e.into()),
    }
    let label = if rescheduled { reason } else { "updated" };
    state.metrics.bookings.with_label_values(&[label]).inc();
    tracing::info!(target: "booking", booking = %new.id, sequence = new.sequence, start, end, event = label, node = crate::cluster::node_name(), "booking changed");
    if rescheduled {
        follow_window(&state, &new.tenant_id, &new.id).await;
    }
    let b = state.store.booking(Some(&tenant), &id).await?.unwrap_or(new);
    Ok(booking_response(StatusCode::OK, &b))
}

/// Moves booking `old` to `[start, end)` (Unix seconds) the way `PATCH /v1/bookings/{id}` does: the times checked
/// as on create, the window computed again with the booking's join policy, `sequence` up by one, the write
/// conditional on the sequence read ([`Store::update_booking`](super::store::Store::update_booking), which writes
/// the `booking.rescheduled` event), then the live call follows ([`follow_window`]). Used by the guest's manage page.
/// Errors: 409 `booking_not_modifiable`, 412 `precondition_failed` (changed meanwhile), 409 `slot_unavailable`, the
/// 422s of the time checks.
pub(crate) async fn reschedule_to(state: &AppState, old: &Booking, start: i64, end: i64) -> Result<Booking, ApiError> {
    let now = unix_now();
    if !modifiable(old, now) {
        return Err(not_modifiable(old, now));
    }
    check_times(state, start, end, now, start != old.start_at)?;
    let window = JoinWindow::compute(start, end, &old.join_policy.apply(&state.policy));
    if (start, end) == (old.start_at, old.end_at) {
        return Ok(old.clone());
    }
    let mut new = old.clone();
    new.start_at = start;
    new.end_at = end;
    new.window = window;
    new.rescheduled_at = Some(now);
    new.max_hard_end_at = old.max_hard_end_at.max(window.hard_end_at);
    new.sequence = old.sequence + 1;
    new.updated_at = now;
    let event = RescheduleEvent {
        reason: "rescheduled",
        from_call: false,
        previous_start_at: old.start_at,
        previous_end_at: old.end_at,
    };
    match state.store.update_booking(&new, old.sequence, Some(&event)).await {
        Ok(true) => {}
        Ok(false) => {
            let cur = state.store.booking(Some(&old.tenant_id), &old.id).await?.ok_or_else(ApiError::not_found)?;
            return Err(if modifiable(&cur, now) { stale(cur.sequence) } else { not_modifiable(&cur, now) });
        }
        Err(StoreError::SlotUnavailable) => return Err(conflict(state, &new).await),
        Err(e) => return Err(e.into()),
    }
    state.metrics.bookings.with_label_values(&["rescheduled"]).inc();
    tracing::info!(target: "booking", booking = %new.id, sequence = new.sequence, start, end, event = "rescheduled", node = crate::cluster::node_name(), "booking changed");
    follow_window(state, &old.tenant_id, &old.id).await;
    Ok(state.store.booking(Some(&old.tenant_id), &old.id).await?.unwrap_or(new))
}

/// 409 `slot_unavailable` naming the caller's booking in the way, when it can still be found.
async fn conflict(state: &AppState, b: &Booking) -> ApiError {
    let host = b.participants.iter().find(|p| p.role == Role::Host).and_then(|p| p.reference.clone());
    let (from, to) = b.blocked();
    let conflicting = match host {
        Some(h) => state.store.host_conflict(&b.tenant_id, &h, from, to, &b.id).await.ok().flatten(),
        None => None,
    };
    slot_unavailable(conflicting)
}

/// Makes the live call of hosted booking `id` follow its window as stored now (after a write). The booking is read
/// again here, so of two changes committed back to back the later one wins even if their requests finish in the
/// other order:
/// - the relay ends the booking's credentials and allocations at the new hard end (kept until `max_hard_end_at`);
/// - if the window now opens later than now, nobody may be in the call: the rooms close with 4003 and the booking's
///   TURN credentials are refused until the host's new opening instant (a later move back to an earlier time lifts
///   that at once: the relay's not-before instant is replaced, never only raised);
/// - otherwise the rooms take the new hard end and both sockets get `{"type":"window","event":"changed",…}`; a
///   guest whose own opening moved past now is closed with 4003.
///
/// In cluster mode every other node does the same ([`crate::cluster::feed`]).
pub(crate) async fn follow_window(state: &AppState, tenant: &str, id: &str) {
    let event = crate::cluster::feed::FeedEvent::Window { tenant: tenant.to_string(), booking: id.to_string() };
    crate::cluster::feed::announce(state, event).await;
}

/// [`follow_window`] on this node only (its relay and hub).
pub(crate) async fn follow_window_local(state: &AppState, tenant: &str, id: &str) {
    let b = match state.store.booking(Some(tenant), id).await {
        Ok(Some(b)) => b,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(target: "booking", booking = id, error = %e, "reading a rescheduled booking");
            return;
        }
    };
    if b.kind != Kind::Hosted || b.status.is_revoked() {
        return;
    }
    let now = unix_now();
    state.relay.set_booking_end(&b.id, b.window.hard_end_at, b.max_hard_end_at);
    state.relay.set_booking_not_before(&b.id, b.window.host_opens_at);
    if now < b.window.host_opens_at {
        state.hub.close_booking(&b.id, CloseReason::WindowClosed);
        return;
    }
    let window = window_json(&b.window);
    let Ok(raw) = serde_json::value::to_raw_value(&window) else {
        return;
    };
    state.hub.update_window(
        &b.id,
        WindowUpdate {
            sequence: u64::try_from(b.sequence).unwrap_or(0),
            window: raw,
            hard_end_at: crate::signal_io::native::instant_of(b.window.hard_end_at),
            hard_end_at_rfc3339: rfc3339(b.window.hard_end_at),
        },
    );
    if now < b.window.opens_at
        && let Some(guest) = b.participants.iter().find(|p| p.role == Role::Guest)
    {
        state.hub.close_participant(&b.id, &guest.id, close_code::OUTSIDE_WINDOW, "outside the meeting window");
    }
}

/// `POST /v1/join/{link_token}/extend` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    /// Minutes to add to the booking's end, 1 to 120; in all at most `[booking] host_extend_max` per booking.
    #[schema(minimum = 1, maximum = 120)]
    pub minutes: i64,
}

/// The 200 answer of `POST /v1/join/{link_token}/extend`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExtendAnswer {
    /// The booking's new `end_at`, RFC 3339 UTC.
    pub end_at: String,
    /// The new window.
    pub window: WindowView,
    /// The booking's sequence after the change (session tokens of older ones stop working on reconnect: join
    /// again with the link).
    pub sequence: i64,
    /// Seconds the host added in all, from inside the call.
    pub extended_s: i64,
    /// Seconds the host may still add (`[booking] host_extend_max` minus `extended_s`).
    pub remaining_s: i64,
}

/// The largest single extension from inside the call, minutes.
const MAX_EXTEND_MINUTES: i64 = 120;

/// `POST /v1/join/{link_token}/extend`: the host adds minutes to the booking's end from inside the call, with the
/// link as the capability (no API key). Allowed for the host of a confirmed booking whose window is open (the host's
/// opening instant passed, the hard end not) after the host joined; at most `[booking] host_extend_max` in all
/// (default 30 minutes); refused when the longer booking would overlap the host's next one (buffers included). Then
/// as a `PATCH` of `end_at`: `sequence` goes up, the hub and the relay follow, both sockets get the `window` frame.
#[utoipa::path(
    post,
    path = "/v1/join/{link_token}/extend",
    tag = "join",
    operation_id = "extend_from_call",
    security(()),
    params(("link_token" = String, Path, description = "The host's link token (the capability; no API key).")),
    request_body = ExtendRequest,
    responses(
        (status = 200, description = "Extended.", body = ExtendAnswer),
        (status = 400, description = "`invalid_request`.", body = ErrorBody),
        (status = 403, description = "`host_only`: the link is the guest's.", body = ErrorBody),
        (status = 404, description = "`link_invalid_or_revoked`.", body = ErrorBody),
        (status = 409, description = "`booking_not_modifiable` (not confirmed, window not open, host not joined, or ended), `slot_unavailable` (the host's next booking), `busy` (changed concurrently, retry).", body = ErrorBody),
        (status = 413, description = "`payload_too_large`.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`.", body = ErrorBody),
        (status = 422, description = "`invalid_field` (`minutes` out of 1-120), `extension_limit` (member `remaining_s`), `invalid_duration` (longer than `max_duration`).", body = ErrorBody)
    )
)]
pub async fn extend_from_call(
    State(state): State<AppState>,
    Path(link_token): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if link_token.is_empty() || link_token.len() > 128 {
        return Err(super::api::link_invalid());
    }
    let body = body.map_err(body_error)?;
    let req: ExtendRequest = parse_json(&body)?;
    if !(1..=MAX_EXTEND_MINUTES).contains(&req.minutes) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            format!("`minutes` must be 1 to {MAX_EXTEND_MINUTES}"),
        )
        .field("minutes"));
    }
    let max = i64::try_from(state.policy.host_extend_max.as_secs()).unwrap_or(i64::MAX);
    // A concurrent change of the booking (another extension, a PATCH) makes the write miss: read and try again.
    for _ in 0..3 {
        let (old, p) = super::api::by_link_token(&state, &link_token).await?;
        if p.role != Role::Host {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "host_only", "only the host may extend the meeting"));
        }
        let now = unix_now();
        let open = old.status == Status::Confirmed
            && now >= old.window.host_opens_at
            && now < old.window.hard_end_at
            && p.first_joined_at.is_some();
        if !open {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "booking_not_modifiable",
                "the meeting can be extended by its host during its window, after joining",
            )
            .with("status", json!(old.status_at(now))));
        }
        let add = req.minutes * 60;
        if old.extended_s + add > max {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "extension_limit",
                format!("the meeting may be extended by at most {} minutes in all", max / 60),
            )
            .field("minutes")
            .with("remaining_s", json!((max - old.extended_s).max(0))));
        }
        let end = old.end_at + add;
        check_times(&state, old.start_at, end, now, false)?;
        let mut new = old.clone();
        new.end_at = end;
        new.window = JoinWindow::compute(old.start_at, end, &old.join_policy.apply(&state.policy));
        new.extended_s = old.extended_s + add;
        new.rescheduled_at = Some(now);
        new.max_hard_end_at = old.max_hard_end_at.max(new.window.hard_end_at);
        new.sequence = old.sequence + 1;
        new.updated_at = now;
        let event = RescheduleEvent {
            reason: "extended",
            from_call: true,
            previous_start_at: old.start_at,
            previous_end_at: old.end_at,
        };
        match state.store.update_booking(&new, old.sequence, Some(&event)).await {
            Ok(true) => {}
            Ok(false) => continue,
            // The conflicting booking is not named: the caller holds a link, not an API key.
            Err(StoreError::SlotUnavailable) => return Err(slot_unavailable(None)),
            Err(e) => return Err(e.into()),
        }
        state.metrics.bookings.with_label_values(&["extended"]).inc();
        tracing::info!(target: "booking", booking = %new.id, sequence = new.sequence, added_s = add, "booking extended by its host");
        follow_window(&state, &new.tenant_id, &new.id).await;
        let answer = ExtendAnswer {
            end_at: rfc3339(new.end_at),
            window: WindowView::of(&new.window),
            sequence: new.sequence,
            extended_s: new.extended_s,
            remaining_s: (max - new.extended_s).max(0),
        };
        return Ok(axum::Json(answer).into_response());
    }
    Err(ApiError::new(StatusCode::CONFLICT, "busy", "the booking is being changed; retry"))
}
