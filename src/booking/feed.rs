//! The host's subscribable calendar (issue 9; README, "Email and calendar"): `GET /calendar/{host_secret}.ics`, every
//! booking of the host from a week ago on (at most [`MAX_EVENTS`], ordered by start), one `VEVENT` each, so a
//! calendar application that subscribes to the URL shows the host's meetings and follows their changes.
//!
//! The feed is a published calendar (RFC 5545; `METHOD:PUBLISH` as RFC 5546 §3.2.1 describes for one-way
//! publication): each event has the same `UID` as the booking's invitations ([`super::ics::uid`]) and `SEQUENCE` =
//! the booking's sequence, so a reschedule replaces the event; cancelled and rejected bookings stay in the feed with
//! `STATUS:CANCELLED` so subscribers remove them. The host joins from the agenda (`/agenda/{secret}/call/{id}`): the
//! feed URL already is the host's secret, so the event's link adds no new capability. An unknown secret is 404 with
//! an empty body; the answer is `no-store` with `Referrer-Policy: no-referrer`, like the agenda.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::ics::{escape_text, fold, uid, utc_date_time};
use super::store::{Booking, ListFilter, Status};
use super::tokens;
use super::window::Role;
use crate::app::{AppState, unix_now};

/// Most events one feed holds.
pub const MAX_EVENTS: u32 = 500;
/// How far back the feed reaches, seconds (a week: recent meetings stay visible).
pub const LOOKBACK_S: i64 = 7 * 86_400;

/// The `PRODID` of the feed.
const PRODID: &str = "-//Duet//Host calendar//EN";

/// `GET /calendar/{host_secret}.ics`: the host's bookings as a published iCalendar feed (see the module
/// documentation). 404 for an unknown secret or a path without `.ics`.
pub async fn host_calendar(State(state): State<AppState>, Path(file): Path<String>) -> Response {
    let Some(secret) = file.strip_suffix(".ics") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !secret.starts_with("hs_") || secret.len() > 128 {
        return StatusCode::NOT_FOUND.into_response();
    }
    let host = match state.store.host_by_secret(&tokens::link_token_hash(secret)).await {
        Ok(Some(h)) => h,
        Ok(None) => return StatusCode::NOT_FOUND.into_response(),
        Err(e) => return super::api::ApiError::from(e).into_response(),
    };
    let now = unix_now();
    let filter = ListFilter {
        from: Some(now - LOOKBACK_S),
        participant_ref: Some(host.reference.clone()),
        limit: MAX_EVENTS,
        now,
        ..ListFilter::default()
    };
    let bookings = match state.store.list(&host.tenant_id, &filter).await {
        Ok(b) => b,
        Err(e) => return super::api::ApiError::from(e).into_response(),
    };
    // Only bookings where this host is the host (a guest with the same ref is someone else's meeting).
    let mine: Vec<&Booking> = bookings
        .iter()
        .filter(|b| {
            b.participants.iter().any(|p| p.role == Role::Host && p.reference.as_deref() == Some(&host.reference))
        })
        .collect();
    let agenda = format!("{}/agenda/{secret}", state.public_base);
    let body = feed(&host.display_name, &mine, &agenda, &state.public_base, now);
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/calendar; charset=utf-8; method=PUBLISH"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

/// The feed text of `bookings` for the host named `host_name` (CRLF, folded at 75 octets), generated at `now`;
/// `agenda` is the host's agenda URL, the base of each event's join link.
pub fn feed(host_name: &str, bookings: &[&Booking], agenda: &str, public_base: &str, now: i64) -> String {
    let mut lines: Vec<String> = vec![
        "BEGIN:VCALENDAR".into(),
        "VERSION:2.0".into(),
        format!("PRODID:{PRODID}"),
        "CALSCALE:GREGORIAN".into(),
        "METHOD:PUBLISH".into(),
        format!("X-WR-CALNAME:{}", escape_text(&format!("Duet: {host_name}"))),
        // A hint to clients about how often to refresh (RFC 7986 §5.7).
        "REFRESH-INTERVAL;VALUE=DURATION:PT15M".into(),
    ];
    for b in bookings {
        let status = match b.status {
            Status::Pending => "TENTATIVE",
            Status::Confirmed => "CONFIRMED",
            Status::Rejected | Status::Cancelled => "CANCELLED",
        };
        lines.push("BEGIN:VEVENT".into());
        lines.push(format!("UID:{}", uid(&b.id, public_base)));
        lines.push(format!("SEQUENCE:{}", b.sequence.max(0)));
        lines.push(format!("DTSTAMP:{}", utc_date_time(now)));
        lines.push(format!("DTSTART:{}", utc_date_time(b.start_at)));
        lines.push(format!("DTEND:{}", utc_date_time(b.end_at)));
        lines.push(format!("SUMMARY:{}", escape_text(&b.title)));
        let guest = b.participants.iter().find(|p| p.role == Role::Guest).map_or("", |p| p.display_name.as_str());
        let mut description = format!("With {guest}.");
        if b.status.is_revoked() {
            description.push_str(" Cancelled.");
        } else {
            let join = format!("{agenda}/call/{}", b.id);
            description.push_str(&format!("\nJoin: {join}"));
            lines.push(format!("URL:{join}"));
        }
        lines.push(format!("DESCRIPTION:{}", escape_text(&description)));
        lines.push(format!("STATUS:{status}"));
        lines.push(format!("TRANSP:{}", if b.status.is_revoked() { "TRANSPARENT" } else { "OPAQUE" }));
        lines.push("END:VEVENT".into());
    }
    lines.push("END:VCALENDAR".into());
    let mut out = String::new();
    for l in &lines {
        fold(l, &mut out);
    }
    out
}
