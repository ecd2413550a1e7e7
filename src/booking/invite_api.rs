//! The invitation routes: one participant's iCalendar file ([`super::ics`]), for the app (API key) and for the
//! participant itself (its link).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::api::{ApiError, authenticate, plausible_id};
use super::ics::{self, Recipient};
use super::store::{Booking, Participant};
use crate::api_key::Scope;
use crate::app::{AppState, unix_now};
use crate::openapi::ErrorBody;

/// The 200 answer: the file with `Content-Type: text/calendar; charset=utf-8; method=…`, as an attachment named
/// `invite.ics`, `no-store` (it carries a link token).
fn ics_response(state: &AppState, b: &Booking, p: &Participant, join_url: Option<&str>) -> Response {
    let to = Recipient { participant: p, join_url };
    let (method, text) = ics::invitation(b, to, &state.public_base, unix_now());
    let content_type = HeaderValue::from_str(&method.content_type())
        .unwrap_or_else(|_| HeaderValue::from_static("text/calendar; charset=utf-8"));
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment; filename=\"invite.ics\"")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        text,
    )
        .into_response()
}

/// `GET /v1/bookings/{id}/participants/{pid}/invite.ics` (scope `bookings:read`): the participant's invitation
/// (RFC 5545/5546) with its own join link, decrypted from `link_token_enc` (none when the link was revoked or the
/// participant predates encrypted links: the description says so). `METHOD:REQUEST` for a pending (`STATUS:TENTATIVE`)
/// or confirmed booking, `METHOD:CANCEL` (`STATUS:CANCELLED`) for a cancelled or rejected one; `SEQUENCE` is the
/// booking's. 404 `not_found` for an unknown booking (or another tenant's) or participant.
#[utoipa::path(
    get,
    path = "/v1/bookings/{id}/participants/{pid}/invite.ics",
    tag = "bookings",
    operation_id = "participant_invite",
    security(("bearerAuth" = ["bookings:read"])),
    params(
        ("id" = String, Path, description = "Booking id, `bkg_…`."),
        ("pid" = String, Path, description = "Participant id, `par_…`.")
    ),
    responses(
        (status = 200, description = "The participant's iCalendar invitation (`Content-Type: text/calendar; charset=utf-8; method=REQUEST|CANCEL`).", content_type = "text/calendar", body = String),
        (status = 404, description = "No such booking in the caller's tenant, or no such participant in it (`not_found`).", body = ErrorBody),
    )
)]
pub async fn participant_invite(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, pid)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsRead).await?;
    if !plausible_id(&id) || !plausible_id(&pid) {
        return Err(ApiError::not_found());
    }
    let b = state.store.booking(Some(&tenant), &id).await?.ok_or_else(ApiError::not_found)?;
    let p = b.participants.iter().find(|p| p.id == pid).ok_or_else(ApiError::not_found)?;
    let sealer = state.link_sealer();
    let join_url =
        p.link_token_enc.as_deref().and_then(|s| sealer.open(&p.id, s)).map(|t| format!("{}/j/{t}", state.public_base));
    Ok(ics_response(&state, &b, p, join_url.as_deref()))
}

/// `GET /v1/join/{link_token}/invite.ics` (no API key: the link is the capability): the invitation of the
/// participant the link belongs to, with that link. 404 `link_invalid_or_revoked` for an unknown or revoked link,
/// as `POST /v1/join/{link_token}`.
#[utoipa::path(
    get,
    path = "/v1/join/{link_token}/invite.ics",
    tag = "join",
    operation_id = "link_invite",
    security(()),
    params(("link_token" = String, Path, description = "The link token of a participant's join URL (the capability; no API key).")),
    responses(
        (status = 200, description = "The participant's iCalendar invitation (`Content-Type: text/calendar; charset=utf-8; method=REQUEST|CANCEL`).", content_type = "text/calendar", body = String),
        (status = 404, description = "`link_invalid_or_revoked`.", body = ErrorBody),
    )
)]
pub async fn link_invite(State(state): State<AppState>, Path(link_token): Path<String>) -> Result<Response, ApiError> {
    let (b, p) = super::api::by_link_token(&state, &link_token).await?;
    // The token in the path is the participant's live link (a revoked link's hash is replaced: it finds nothing).
    let join_url = format!("{}/j/{link_token}", state.public_base);
    Ok(ics_response(&state, &b, &p, Some(&join_url)))
}
