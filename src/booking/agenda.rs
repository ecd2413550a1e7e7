//! The host agenda (README, "Booking page and agenda"; the OpenTok kit's rep view): a page reached by the host's
//! own secret (`hs_…`, from `POST /v1/hosts` or its rotation; only its SHA-256 is stored) that lists one local day
//! of the host's bookings in the host's zone, with a Join button per meeting, navigation by day and a cancel form.
//!
//! Routes (every URL holds the secret: pages are `no-store`, `Referrer-Policy: no-referrer`):
//! - `GET /agenda/{host_secret}?date=YYYY-MM-DD` (default today in the host's zone);
//! - `POST /agenda/{host_secret}/cancel/{booking_id}` (`token`): cancels, 303 back to that day;
//! - `GET /agenda/{host_secret}/call/{booking_id}`: the join page, which joins as the booking's host through
//! - `POST /agenda/{host_secret}/join/{booking_id}`: the answer of `POST /v1/join/{link_token}` for the host
//!   participant (same JSON, same errors and join-window rules), so the host needs no link token (links are
//!   stored hashed and cannot be shown again).
//!
//! An unknown secret, or a booking that is not the host's (another host, another tenant), is 404.

use std::fmt::Write as _;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::NaiveDate;
use chrono_tz::Tz;

use super::api::{apply_transition, plausible_id};
use super::catalog::Host;
use super::pages::{
    api_error_page, day_heading, error_page, esc, forbidden, form_fields, not_found, page, query_fields, same_origin,
    see_other,
};
use super::store::{Booking, ListFilter, Participant, Status};
use super::tokens;
use super::window::Role;
use crate::app::{AppState, unix_now};
use crate::scheduling::slots::{first_instant, local_date};

/// Most bookings one agenda day lists.
const MAX_PER_DAY: u32 = 200;

/// The host whose secret is `secret`, if any.
async fn host_of(state: &AppState, secret: &str) -> Option<Host> {
    if !secret.starts_with("hs_") || secret.len() > 128 {
        return None;
    }
    state.store.host_by_secret(&tokens::link_token_hash(secret)).await.ok().flatten()
}

/// Booking `id` of host `h` (its host participant has the host's `ref`) with that participant.
async fn booking_of(state: &AppState, h: &Host, id: &str) -> Option<(Booking, Participant)> {
    if !plausible_id(id) {
        return None;
    }
    let b = state.store.booking(Some(&h.tenant_id), id).await.ok().flatten()?;
    let p = b.participants.iter().find(|p| p.role == Role::Host && p.reference.as_deref() == Some(&h.reference))?;
    let p = p.clone();
    Some((b, p))
}

/// `GET /agenda/{host_secret}?date=YYYY-MM-DD`: the bookings of the host starting on that local date of the host's
/// zone (default today), ordered by start, each with its time, title, guest, status, a Join button (pending or
/// confirmed, not ended, hosted) and a cancel form (pending or confirmed, not ended); links to the previous and the
/// next day and a date form. 404 page for an unknown secret, 400 page for a bad date.
pub async fn agenda(State(state): State<AppState>, Path(secret): Path<String>, RawQuery(query): RawQuery) -> Response {
    let Some(h) = host_of(&state, &secret).await else { return not_found() };
    let tz: Tz = h.time_zone.parse().unwrap_or(chrono_tz::UTC);
    let now = unix_now();
    let q = query_fields(query.as_deref());
    let today = local_date(tz, now).unwrap_or_default();
    let date = match q.get("date").map(String::as_str) {
        None | Some("") => today,
        Some(v) => match NaiveDate::parse_from_str(v, "%Y-%m-%d") {
            Ok(d) => d,
            Err(_) => {
                return error_page(
                    StatusCode::BAD_REQUEST,
                    "Unknown date",
                    "The date must be written YYYY-MM-DD.",
                    None,
                );
            }
        },
    };
    let midnight = |d: NaiveDate| d.and_hms_opt(0, 0, 0).and_then(|t| first_instant(tz, t));
    let next = date.succ_opt().unwrap_or(date);
    let prev = date.pred_opt().unwrap_or(date);
    let (Some(from), Some(to)) = (midnight(date), midnight(next)) else { return not_found() };
    let filter = ListFilter {
        from: Some(from),
        to: Some(to),
        participant_ref: Some(h.reference.clone()),
        limit: MAX_PER_DAY,
        now,
        ..ListFilter::default()
    };
    let Ok(bookings) = state.store.list(&h.tenant_id, &filter).await else {
        return error_page(StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong", "Please try again.", None);
    };
    let hhmm = |t: i64| {
        use chrono::TimeZone;
        tz.timestamp_opt(t, 0).single().map(|l| l.format("%H:%M").to_string()).unwrap_or_default()
    };
    let mut body = format!(
        "<header>\n<p class=\"host\">Agenda of {}</p>\n<h1>{}</h1>\n<p class=\"meta\">Times in {}</p>\n</header>\n\
         <nav class=\"days\" aria-label=\"Days\">\n<a href=\"?date={prev}\" rel=\"prev\">← Previous day</a>\n\
         <a href=\"?date={today}\">Today</a>\n<a href=\"?date={next}\" rel=\"next\">Next day →</a>\n</nav>\n\
         <form method=\"get\" class=\"zone\"><label for=\"date\">Go to date</label>\
         <input id=\"date\" name=\"date\" type=\"date\" value=\"{date}\"><button type=\"submit\">Show</button></form>\n",
        esc(&h.display_name),
        esc(&day_heading(date)),
        esc(tz.name())
    );
    let mine: Vec<&Booking> = bookings
        .iter()
        .filter(|b| b.participants.iter().any(|p| p.role == Role::Host && p.reference.as_deref() == Some(&h.reference)))
        .collect();
    if mine.is_empty() {
        body += "<p class=\"none\" id=\"empty\">No bookings on this day.</p>\n";
    } else {
        body += "<table class=\"agenda\">\n<caption>Bookings</caption>\n<thead><tr><th scope=\"col\">Time</th>\
                 <th scope=\"col\">Meeting</th><th scope=\"col\">Guest</th><th scope=\"col\">Status</th>\
                 <th scope=\"col\">Actions</th></tr></thead>\n<tbody>\n";
        for b in mine {
            let guest = b.participants.iter().find(|p| p.role == Role::Guest).map_or("", |p| p.display_name.as_str());
            let status = b.status_at(now);
            let live = matches!(b.status, Status::Pending | Status::Confirmed) && now < b.window.hard_end_at;
            let mut actions = String::new();
            if live && b.status == Status::Confirmed {
                let _ = write!(
                    actions,
                    "<a class=\"button primary\" href=\"/agenda/{secret}/call/{}\" aria-label=\"Join the meeting with {} at {}\">Join</a>",
                    esc(&b.id),
                    esc(guest),
                    hhmm(b.start_at)
                );
            }
            if live {
                let token = state.pages.form_token("agenda-cancel", &b.id, now);
                let _ = write!(
                    actions,
                    "<form method=\"post\" action=\"/agenda/{secret}/cancel/{}\"><input type=\"hidden\" name=\"token\" \
                     value=\"{}\"><button type=\"submit\" class=\"danger\" aria-label=\"Cancel the meeting with {} at {}\">Cancel</button></form>",
                    esc(&b.id),
                    esc(&token),
                    esc(guest),
                    hhmm(b.start_at)
                );
            }
            let _ = writeln!(
                body,
                "<tr data-booking=\"{}\"><td>{}–{}</td><td>{}</td><td>{}</td><td class=\"status {}\">{}</td><td class=\"actions\">{}</td></tr>",
                esc(&b.id),
                hhmm(b.start_at),
                hhmm(b.end_at),
                esc(&b.title),
                esc(guest),
                status,
                status,
                actions
            );
        }
        body += "</tbody>\n</table>\n";
    }
    page(StatusCode::OK, &format!("Agenda – {}", h.display_name), &body)
}

/// `POST /agenda/{host_secret}/cancel/{booking_id}` (`token`): 403 page for a foreign origin or a bad token, 404
/// page for an unknown secret or a booking that is not the host's, else the booking is cancelled as by
/// `POST /v1/bookings/{id}/cancel` (room closed, TURN revoked, `booking.cancelled` webhook; a cancelled booking
/// stays cancelled, a rejected one is left as is) and 303 back to its day.
pub async fn cancel(
    State(state): State<AppState>,
    Path((secret, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(h) = host_of(&state, &secret).await else { return not_found() };
    let Some((b, _)) = booking_of(&state, &h, &id).await else { return not_found() };
    let f = form_fields(&body.unwrap_or_default());
    let now = unix_now();
    let token = f.get("token").map_or("", String::as_str);
    if !same_origin(&headers, &state.public_base) || !state.pages.check_form_token(token, "agenda-cancel", &b.id, now) {
        return forbidden();
    }
    let tz: Tz = h.time_zone.parse().unwrap_or(chrono_tz::UTC);
    let day = local_date(tz, b.start_at).map(|d| d.to_string()).unwrap_or_default();
    let back = format!("/agenda/{secret}?date={day}");
    match apply_transition(&state, &h.tenant_id, &b.id, Status::Cancelled, &[Status::Pending, Status::Confirmed], now)
        .await
    {
        Ok(Some(_)) => see_other(&back),
        Ok(None) => not_found(),
        Err(e) => api_error_page(e, "The booking could not be cancelled", Some((&back, "Back to the agenda"))).await,
    }
}

/// `GET /agenda/{host_secret}/call/{booking_id}`: the join page (the same document and headers as `/j/{link}`)
/// for a booking of the host; its script joins through [`join`]. 404 page otherwise.
pub async fn call_page(State(state): State<AppState>, Path((secret, id)): Path<(String, String)>) -> Response {
    let Some(h) = host_of(&state, &secret).await else { return not_found() };
    if booking_of(&state, &h, &id).await.is_none() {
        return not_found();
    }
    crate::daemon::join_page().await.into_response()
}

/// `POST /agenda/{host_secret}/join/{booking_id}`: joins as the host of the booking, answering exactly as
/// `POST /v1/join/{link_token}` with the host's link would (session token, signal URL, ICE servers; 403
/// `join_too_early`, 409 `booking_pending_confirmation`, 410 `booking_cancelled` / `join_window_closed`, ...). An
/// unknown secret or a booking that is not the host's: 404 `link_invalid_or_revoked`. A revoked host link does
/// not matter here: the host secret is the capability.
pub async fn join(State(state): State<AppState>, Path((secret, id)): Path<(String, String)>) -> Response {
    let invalid = || super::api::link_invalid().into_response();
    let Some(h) = host_of(&state, &secret).await else { return invalid() };
    let Some((b, p)) = booking_of(&state, &h, &id).await else { return invalid() };
    let mut r = super::api::join_participant(&state, b, p).await.into_response();
    r.headers_mut().insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    r.headers_mut().insert(axum::http::header::REFERRER_POLICY, axum::http::HeaderValue::from_static("no-referrer"));
    r
}
