//! The server-rendered pages of the booking service (README, "Booking page and agenda"): the public **booking
//! page** of an event type, the guest's **confirmation and manage page** reached by the guest's link token, and
//! the pieces they share with the host agenda ([`super::agenda`]): HTML escaping, the page frame and its security
//! headers, signed form tokens, the same-origin check and the per-client booking limit.
//!
//! Every page works without JavaScript: links and `application/x-www-form-urlencoded` form posts answered with
//! `303 See Other`. The one script (`/book.js`) only sets the visitor's time zone on a first visit. Pages carry
//! [`PAGES_CSP`] (the join page's policy with forms allowed to this origin), are never framed, never cached
//! (`no-store`: they carry form tokens, and the manage and agenda URLs are capabilities) and send no referrer.
//!
//! Routes:
//! - `GET /book/{tenant_id}/{host_ref}/{slug}?tz=&from=`: the event type, then [`BookingPageConfig::days`] days of
//!   free times from local date `from` (`YYYY-MM-DD`, default today) in zone `tz` (IANA; default the host's);
//!   `&start=<unix seconds>` shows the booking form of that slot.
//! - `POST /book/{tenant_id}/{host_ref}/{slug}`: books (fields `token`, `start`, `tz`, `name`, `email`, `note`),
//!   303 to `/manage/{link_token}`.
//! - `GET /manage/{link_token}?tz=`: the booking as the guest sees it, with its join link, the calendar file and
//!   the manage actions; `GET /manage/{link_token}/reschedule?from=&tz=` the free times to move to;
//!   `POST /manage/{link_token}/cancel` and `POST /manage/{link_token}/reschedule` (fields `token`, `start`).

// The page helpers answer `Result<_, Response>`: the error is the page to send (rare, and tiny next to rendering).
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{NaiveDate, TimeZone};
use chrono_tz::Tz;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::api::{ApiError, CreateParticipant, apply_transition, plausible_email, plausible_id, valid_time_zone};
use super::catalog::{EventType, Host};
use super::catalog_api::{self, MAX_NOTE_CHARS, OfferedSlot};
use super::store::{Booking, Participant, Status, Transition};
use super::tokens;
use super::window::Role;
use crate::app::{AppState, unix_now};
use crate::client_ip::{ForwardedHeader, IpKey, client_ip};
use crate::config::BookingPageConfig;
use crate::scheduling::slots::{first_instant, local_date};
use duet_relay::policy::IpNet;

/// The pages' Content-Security-Policy: the join page's ([`crate::daemon::JOIN_PAGE_CSP`]) without media and
/// WebSocket, and with form posts to this origin only (`form-action 'self'`).
pub const PAGES_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// How long a form token is accepted after the page that carries it was served, seconds (a visitor filling in the
/// form at leisure; the slot itself is checked again on submit).
pub const FORM_TOKEN_TTL_S: i64 = 2 * 3600;

/// The most client addresses the booking limit remembers; beyond, full buckets are forgotten first, then the least
/// recently used.
const MAX_BUCKETS: usize = 100_000;

/// State of the pages: their config, the form-token key and the per-client booking limit.
pub struct PageState {
    /// `[booking_page]`.
    pub config: BookingPageConfig,
    /// HMAC-SHA256 key of form tokens: derived from the daemon's `nonce_key` (`secrets.toml`) with a label of its
    /// own, so it is stable across restarts and independent of every other use of that key.
    form_key: [u8; 32],
    /// `[http] trusted_proxies`: whose forwarding header names the client.
    trusted_proxies: Vec<IpNet>,
    /// `[http] forwarded_header`.
    forwarded_header: ForwardedHeader,
    /// Per client key: tokens left and when they were counted.
    buckets: Mutex<HashMap<IpKey, (f64, Instant)>>,
}

impl PageState {
    /// The pages' state: `secret` is the daemon's 32-byte `nonce_key`, from which the form key is derived
    /// (HMAC-SHA256 with the label `duet booking-page form key v1`).
    pub fn new(
        config: BookingPageConfig,
        secret: &[u8],
        trusted_proxies: Vec<IpNet>,
        forwarded_header: ForwardedHeader,
    ) -> PageState {
        let mut form_key = [0u8; 32];
        form_key.copy_from_slice(&hmac_sha256(secret, b"duet booking-page form key v1"));
        PageState { config, form_key, trusted_proxies, forwarded_header, buckets: Mutex::new(HashMap::new()) }
    }

    /// A form token for `purpose` about `subject`, valid [`FORM_TOKEN_TTL_S`] from `now`:
    /// `<expiry unix>.<base64url HMAC-SHA256(form key, purpose \n subject \n expiry)>`.
    pub fn form_token(&self, purpose: &str, subject: &str, now: i64) -> String {
        let exp = now + FORM_TOKEN_TTL_S;
        let mac = hmac_sha256(&self.form_key, format!("{purpose}\n{subject}\n{exp}").as_bytes());
        format!("{exp}.{}", URL_SAFE_NO_PAD.encode(mac))
    }

    /// Whether `token` is a form token for `purpose` about `subject` that has not expired at `now` (the MAC is
    /// compared in constant time).
    pub fn check_form_token(&self, token: &str, purpose: &str, subject: &str, now: i64) -> bool {
        let Some((exp, mac)) = token.split_once('.') else { return false };
        let Ok(exp) = exp.parse::<i64>() else { return false };
        let Ok(mac) = URL_SAFE_NO_PAD.decode(mac) else { return false };
        if exp < now || exp > now + FORM_TOKEN_TTL_S {
            return false;
        }
        let Ok(mut m) = Hmac::<Sha256>::new_from_slice(&self.form_key) else { return false };
        m.update(format!("{purpose}\n{subject}\n{exp}").as_bytes());
        m.verify_slice(&mac).is_ok()
    }

    /// Takes one booking from the bucket of client `key` at `now`: `Ok(())`, or `Err(seconds)` until the next one
    /// (a token bucket of `bookings_per_hour`, refilled evenly over an hour).
    pub fn take_booking(&self, key: IpKey, now: Instant) -> Result<(), u64> {
        let size = f64::from(self.config.bookings_per_hour);
        let per_s = size / 3600.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&key) {
            // Full buckets are the same as no entry; if none is full, the least recently used goes.
            buckets.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * per_s < size);
            if buckets.len() >= MAX_BUCKETS
                && let Some(oldest) = buckets.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| *k)
            {
                buckets.remove(&oldest);
            }
        }
        let (tokens, at) = buckets.entry(key).or_insert((size, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_s).min(size);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / per_s).ceil() as u64)
        }
    }

    /// The client key of a request from TCP peer `peer` (behind `trusted_proxies`, see [`crate::client_ip`]).
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> IpKey {
        IpKey::of(client_ip(peer, headers, &self.trusted_proxies, self.forwarded_header))
    }
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length: `new_from_slice` cannot fail for it.
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

// ---------------------------------------------------------------------------------------------------------------
// HTML

/// `v` escaped for HTML text and double- or single-quoted attribute values (`& < > " '`).
pub fn esc(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `v` percent-encoded for a query value (`application/x-www-form-urlencoded`).
pub fn qv(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

/// A page: `title` (text) and `body` (HTML, already escaped) in the common frame (`/pages.css`, `/book.js`, a
/// `main` landmark), answered with `status` and the pages' headers ([`PAGES_CSP`], `no-store`, no referrer, never
/// framed, `nosniff`).
pub fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n<meta name=\"robots\" content=\"noindex\">\n\
         <title>{}</title>\n<link rel=\"stylesheet\" href=\"/pages.css\">\n\
         <script src=\"/book.js\" defer></script>\n</head>\n<body>\n<main id=\"main\">\n{body}\n</main>\n</body>\n</html>\n",
        esc(title)
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CONTENT_SECURITY_POLICY, PAGES_CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        html,
    )
        .into_response()
}

/// An error page: `status`, a heading and a sentence (text), and an optional link back (`href`, label).
pub fn error_page(status: StatusCode, heading: &str, message: &str, back: Option<(&str, &str)>) -> Response {
    let mut body = format!("<h1>{}</h1>\n<p class=\"alert\" role=\"alert\">{}</p>\n", esc(heading), esc(message));
    if let Some((href, label)) = back {
        let _ = writeln!(body, "<p><a href=\"{}\">{}</a></p>", esc(href), esc(label));
    }
    page(status, heading, &body)
}

/// The 404 page: one answer for every unknown or foreign tenant, host, event type, link, secret or booking.
pub fn not_found() -> Response {
    error_page(
        StatusCode::NOT_FOUND,
        "Page not found",
        "This page does not exist or the link is no longer valid.",
        None,
    )
}

/// The 403 page of a refused form post (bad or expired form token, or a post from another site).
pub fn forbidden() -> Response {
    error_page(
        StatusCode::FORBIDDEN,
        "Request refused",
        "This form has expired or did not come from this site. Open the page again and resend it.",
        None,
    )
}

/// A `303 See Other` to `location` (a path on this origin), with the pages' headers.
pub fn see_other(location: &str) -> Response {
    let mut r = page(StatusCode::SEE_OTHER, "Redirecting", "<p>Redirecting…</p>");
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// The page of an API refusal: its status and message (the JSON body of `e`).
pub async fn api_error_page(e: ApiError, heading: &str, back: Option<(&str, &str)>) -> Response {
    let resp = e.into_response();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 64 * 1024).await.unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| "Something went wrong.".into());
    error_page(status, heading, &message, back)
}

/// Whether a form post came from this site (Fetch Metadata and `Origin`, RFC 6454 §7):
/// - a `Sec-Fetch-Site` header, when sent, must be `same-origin` or `none` (a user's own navigation);
/// - an `Origin` header other than `null`, when sent, must be this daemon's public origin or the origin of the
///   request's own `Host`;
/// - `Origin: null` passes only with `Sec-Fetch-Site: same-origin`: browsers send `null` for a form post from a page
///   with `Referrer-Policy: no-referrer` (all of these pages), and also from sandboxed frames and `data:` pages,
///   which Fetch Metadata tells apart.
///
/// A client that sends neither header (not a browser) passes: the form token still binds the post to a page this
/// daemon served.
pub fn same_origin(headers: &HeaderMap, public_base: &str) -> bool {
    let site = headers.get("sec-fetch-site").map(|v| v.to_str().unwrap_or(""));
    if site.is_some_and(|s| !matches!(s, "same-origin" | "none")) {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN) else { return true };
    let Ok(origin) = origin.to_str() else { return false };
    if origin == "null" {
        return site == Some("same-origin");
    }
    if origin.eq_ignore_ascii_case(origin_of(public_base)) {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    !host.is_empty()
        && (origin.eq_ignore_ascii_case(&format!("http://{host}"))
            || origin.eq_ignore_ascii_case(&format!("https://{host}")))
}

/// The origin (`scheme://host[:port]`) of a base URL.
fn origin_of(base: &str) -> &str {
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    match base[after_scheme..].find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    }
}

/// The fields of an `application/x-www-form-urlencoded` body (the last value of a repeated name wins).
pub fn form_fields(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// The fields of a query string.
pub fn query_fields(q: Option<&str>) -> HashMap<String, String> {
    form_fields(q.unwrap_or("").as_bytes())
}

/// A local date and time, e.g. `Tuesday 8 December 2026, 14:30 CET`.
pub fn when(tz: Tz, t: i64) -> String {
    match tz.timestamp_opt(t, 0).single() {
        Some(local) => local.format("%A %-d %B %Y, %H:%M %Z").to_string(),
        None => super::api::rfc3339(t),
    }
}

/// The date heading of local date `d`, e.g. `Tuesday 8 December 2026`.
pub fn day_heading(d: NaiveDate) -> String {
    d.format("%A %-d %B %Y").to_string()
}

/// The zones the zone selector offers: the canonical `Area/Location` names of the tz database and `UTC`.
static ZONES: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    let mut v: Vec<&'static str> = chrono_tz::TZ_VARIANTS
        .iter()
        .map(|z| z.name())
        .filter(|n| {
            n.contains('/')
                && !["Etc/", "SystemV/", "US/", "Canada/", "Brazil/", "Chile/", "Mexico/"]
                    .iter()
                    .any(|p| n.starts_with(p))
        })
        .collect();
    v.push("UTC");
    v.sort_unstable();
    v
});

/// The zone selector: a GET form that shows the page again in another zone, keeping `keep` (name, value) fields.
pub fn zone_form(current: Tz, keep: &[(&str, &str)]) -> String {
    let mut s = String::from(
        "<form method=\"get\" class=\"zone\" aria-label=\"Time zone\">\n<label for=\"tz\">Time zone</label>\n\
         <select id=\"tz\" name=\"tz\">\n",
    );
    let name = current.name();
    if !ZONES.contains(&name) {
        let _ = writeln!(s, "<option selected>{}</option>", esc(name));
    }
    for z in ZONES.iter() {
        let sel = if *z == name { " selected" } else { "" };
        let _ = writeln!(s, "<option{sel}>{}</option>", esc(z));
    }
    s.push_str("</select>\n");
    for (k, v) in keep {
        let _ = writeln!(s, "<input type=\"hidden\" name=\"{}\" value=\"{}\">", esc(k), esc(v));
    }
    s.push_str("<button type=\"submit\">Show times</button>\n</form>\n");
    s
}

/// The zone of query field `tz`: absent → `default`; valid IANA name → it; else `Err` (400 page).
fn zone_param(q: &HashMap<String, String>, default: Tz) -> Result<Tz, Response> {
    match q.get("tz").map(String::as_str) {
        None | Some("") => Ok(default),
        Some(z) if valid_time_zone(z) => Ok(z.parse().unwrap_or(default)),
        Some(_) => Err(error_page(
            StatusCode::BAD_REQUEST,
            "Unknown time zone",
            "The time zone must be an IANA name such as Europe/Berlin.",
            None,
        )),
    }
}

/// The furthest `from` a page accepts, days after today (beyond any booking horizon; keeps date arithmetic far
/// from chrono's limits).
const MAX_FROM_DAYS: u64 = 1000;

/// The first local date of the days shown: query field `from` (`YYYY-MM-DD`, not before `today`, at most
/// [`MAX_FROM_DAYS`] after it) or `today`.
fn from_param(q: &HashMap<String, String>, today: NaiveDate) -> Result<NaiveDate, Response> {
    let latest = today.checked_add_days(chrono::Days::new(MAX_FROM_DAYS)).unwrap_or(today);
    match q.get("from").map(String::as_str) {
        None | Some("") => Ok(today),
        Some(v) => match NaiveDate::parse_from_str(v, "%Y-%m-%d") {
            Ok(d) if d > latest => {
                Err(error_page(StatusCode::BAD_REQUEST, "Date too far ahead", "Pick a date closer to today.", None))
            }
            Ok(d) => Ok(d.max(today)),
            Err(_) => {
                Err(error_page(StatusCode::BAD_REQUEST, "Unknown date", "The date must be written YYYY-MM-DD.", None))
            }
        },
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Booking page

/// The host, event type and zone of a booking page URL, or the 404 page (unknown or implausible tenant, host `ref`
/// or slug; another tenant's objects are unknown).
async fn find_event_type(
    state: &AppState,
    tenant: &str,
    host_ref: &str,
    slug: &str,
) -> Result<(Host, EventType), Response> {
    if !plausible_id(tenant) || !plausible_id(host_ref) || !plausible_id(slug) {
        return Err(not_found());
    }
    let Some(h) = state.store.host(tenant, host_ref).await.map_err(|_| internal())? else { return Err(not_found()) };
    let Some(e) = state.store.event_type_by_slug(tenant, &h.id, slug).await.map_err(|_| internal())? else {
        return Err(not_found());
    };
    Ok((h, e))
}

/// The 500 page.
fn internal() -> Response {
    error_page(StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong", "Please try again in a moment.", None)
}

/// The free slots of event type `e` starting on the `days` local dates of `tz` from `from`, grouped by date
/// (every date listed, empty when it has none). `Err` is the 500 page.
async fn slot_days(
    state: &AppState,
    h: &Host,
    e: &EventType,
    tz: Tz,
    from: NaiveDate,
    days: u32,
) -> Result<Vec<(NaiveDate, Vec<i64>)>, Response> {
    let Some(s) = state.store.schedule(&h.tenant_id, &h.id, &e.schedule_id).await.map_err(|_| internal())? else {
        return Err(internal());
    };
    let end_date = from + chrono::Days::new(u64::from(days));
    let midnight = |d: NaiveDate| d.and_hms_opt(0, 0, 0).and_then(|t| first_instant(tz, t));
    let (Some(start), Some(end)) = (midnight(from), midnight(end_date)) else { return Err(internal()) };
    let found = catalog_api::compute_slots(state, h, e, &s, start, end, unix_now()).await.map_err(|_| internal())?;
    let mut out: Vec<(NaiveDate, Vec<i64>)> = from.iter_days().take(days as usize).map(|d| (d, Vec::new())).collect();
    for slot in found {
        if let Some(d) = local_date(tz, slot.start_at)
            && let Some((_, v)) = out.iter_mut().find(|(day, _)| *day == d)
        {
            v.push(slot.start_at);
        }
    }
    Ok(out)
}

/// The local wall time `HH:MM` of `t` in `tz`.
fn hhmm(tz: Tz, t: i64) -> String {
    tz.timestamp_opt(t, 0).single().map(|l| l.format("%H:%M").to_string()).unwrap_or_default()
}

/// The heading block of an event type's pages.
fn event_header(h: &Host, e: &EventType) -> String {
    format!(
        "<header>\n<p class=\"host\">{}</p>\n<h1>{}</h1>\n<p class=\"meta\">{} minutes · video meeting</p>\n</header>\n",
        esc(&h.display_name),
        esc(&e.title),
        e.duration_minutes
    )
}

/// Day navigation links (earlier when `from` is after `today`, later always), keeping zone `tz`.
fn day_nav(from: NaiveDate, today: NaiveDate, days: u32, tz: Tz, label: &str) -> String {
    let mut s = format!("<nav class=\"days\" aria-label=\"{}\">\n", esc(label));
    if from > today {
        let earlier = (from - chrono::Days::new(u64::from(days))).max(today);
        let _ = writeln!(s, "<a href=\"?tz={}&amp;from={earlier}\" rel=\"prev\">← Earlier days</a>", qv(tz.name()));
    }
    let later = from + chrono::Days::new(u64::from(days));
    let _ = writeln!(s, "<a href=\"?tz={}&amp;from={later}\" rel=\"next\">Later days →</a>", qv(tz.name()));
    s.push_str("</nav>\n");
    s
}

/// `GET /book/{tenant_id}/{host_ref}/{slug}`: the booking page (see the module documentation), or with `start`
/// the booking form of that slot (409 page when it is no longer free). 404 page for an unknown tenant, host or
/// event type; 400 page for a bad `tz`, `from` or `start`.
pub async fn booking_page(
    State(state): State<AppState>,
    Path((tenant, host_ref, slug)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let (h, e) = match find_event_type(&state, &tenant, &host_ref, &slug).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let q = query_fields(query.as_deref());
    let host_tz: Tz = h.time_zone.parse().unwrap_or(chrono_tz::UTC);
    let tz = match zone_param(&q, host_tz) {
        Ok(z) => z,
        Err(r) => return r,
    };
    let now = unix_now();
    if let Some(start) = q.get("start") {
        let Ok(start) = start.parse::<i64>() else {
            return error_page(
                StatusCode::BAD_REQUEST,
                "Unknown time",
                "Pick a time from the list.",
                Some(("?", "Back to the times")),
            );
        };
        if !offered(&state, &h, &e, start).await {
            return taken(tz);
        }
        return booking_form(&state, &tenant, &h, &e, tz, start, &FormValues::default(), None, StatusCode::OK);
    }
    let today = local_date(tz, now).unwrap_or_default();
    let from = match from_param(&q, today) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let days = match slot_days(&state, &h, &e, tz, from, state.pages.config.days).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let mut body = event_header(&h, &e);
    let _ = writeln!(
        body,
        "<p id=\"zone-note\" data-tz=\"{}\" data-default-tz=\"{}\">Times are shown in <strong>{}</strong>.</p>",
        esc(tz.name()),
        esc(host_tz.name()),
        esc(tz.name())
    );
    body += &zone_form(tz, &[("from", &from.to_string())]);
    body += "<section aria-labelledby=\"times\">\n<h2 id=\"times\">Pick a time</h2>\n";
    for (d, starts) in &days {
        let _ = writeln!(body, "<h3>{}</h3>", esc(&day_heading(*d)));
        if starts.is_empty() {
            body += "<p class=\"none\">No free times.</p>\n";
            continue;
        }
        body += "<ul class=\"slots\">\n";
        for t in starts {
            let _ = writeln!(
                body,
                "<li><a class=\"slot\" href=\"?tz={}&amp;start={t}\" data-start=\"{}\">{}</a></li>",
                qv(tz.name()),
                esc(&super::api::rfc3339(*t)),
                esc(&hhmm(tz, *t))
            );
        }
        body += "</ul>\n";
    }
    body += "</section>\n";
    body += &day_nav(from, today, state.pages.config.days, tz, "More days");
    page(StatusCode::OK, &format!("{} with {}", e.title, h.display_name), &body)
}

/// Whether `start` is a free slot of `e` now.
async fn offered(state: &AppState, h: &Host, e: &EventType, start: i64) -> bool {
    let Ok(Some(s)) = state.store.schedule(&h.tenant_id, &h.id, &e.schedule_id).await else { return false };
    catalog_api::compute_slots(state, h, e, &s, start, start.saturating_add(1), unix_now())
        .await
        .is_ok_and(|v| v.iter().any(|x| x.start_at == start))
}

/// The 409 page of a time that is no longer free.
fn taken(tz: Tz) -> Response {
    let back = format!("?tz={}", qv(tz.name()));
    error_page(
        StatusCode::CONFLICT,
        "This time is no longer available",
        "Someone else booked it, or it is too close now. Please pick another time.",
        Some((&back, "Back to the free times")),
    )
}

/// What the visitor typed into the booking form.
#[derive(Debug, Default)]
struct FormValues {
    name: String,
    email: String,
    note: String,
}

/// The booking form of slot `start` (optionally with the visitor's values and an error message).
#[allow(clippy::too_many_arguments)]
fn booking_form(
    state: &AppState,
    tenant: &str,
    h: &Host,
    e: &EventType,
    tz: Tz,
    start: i64,
    v: &FormValues,
    error: Option<(&str, &str)>,
    status: StatusCode,
) -> Response {
    let token = state.pages.form_token("book", &format!("{tenant}\n{}\n{start}", e.id), unix_now());
    let mut body = event_header(h, e);
    let _ = writeln!(
        body,
        "<p class=\"chosen\">{} <span class=\"tzname\">({})</span> · <a href=\"?tz={}\">Change time</a></p>",
        esc(&when(tz, start)),
        esc(tz.name()),
        qv(tz.name())
    );
    if e.requires_confirmation {
        let _ = writeln!(
            body,
            "<p>{} confirms each booking; you will see the status on the next page.</p>",
            esc(&h.display_name)
        );
    }
    if let Some((_, message)) = error {
        let _ = writeln!(body, "<p class=\"alert\" role=\"alert\" id=\"form-error\">{}</p>", esc(message));
    }
    let invalid = |f: &str| {
        if error.is_some_and(|(x, _)| x == f) { " aria-invalid=\"true\" aria-describedby=\"form-error\"" } else { "" }
    };
    let _ = write!(
        body,
        "<form method=\"post\" class=\"book\" aria-labelledby=\"details\">\n<h2 id=\"details\">Your details</h2>\n\
         <input type=\"hidden\" name=\"token\" value=\"{}\">\n<input type=\"hidden\" name=\"start\" value=\"{start}\">\n\
         <input type=\"hidden\" name=\"tz\" value=\"{}\">\n\
         <div class=\"field\"><label for=\"name\">Name</label>\
         <input id=\"name\" name=\"name\" required maxlength=\"128\" autocomplete=\"name\" value=\"{}\"{}></div>\n\
         <div class=\"field\"><label for=\"email\">Email</label>\
         <input id=\"email\" name=\"email\" type=\"email\" required maxlength=\"254\" autocomplete=\"email\" value=\"{}\"{}></div>\n\
         <div class=\"field\"><label for=\"note\">Note for {} <span class=\"opt\">(optional)</span></label>\
         <textarea id=\"note\" name=\"note\" rows=\"4\" maxlength=\"{MAX_NOTE_CHARS}\"{}>{}</textarea></div>\n\
         <button type=\"submit\" class=\"primary\">Book {}</button>\n</form>\n",
        esc(&token),
        esc(tz.name()),
        esc(&v.name),
        invalid("name"),
        esc(&v.email),
        invalid("email"),
        esc(&h.display_name),
        invalid("note"),
        esc(&v.note),
        esc(&hhmm(tz, start)),
    );
    page(status, &format!("Book {} with {}", e.title, h.display_name), &body)
}

/// `POST /book/{tenant_id}/{host_ref}/{slug}` (`application/x-www-form-urlencoded`: `token`, `start`, `tz`,
/// `name`, `email`, `note`): checks the origin and the form token (403 page, nothing booked), checks the fields (422:
/// the form again with the message), takes one booking from the client's hourly allowance (429 page with
/// `Retry-After`), then books through the create path of the API ([`catalog_api::book_offered`]: the slot is checked
/// again, pending when the event type requires confirmation) and answers 303 to the guest's manage page
/// `/manage/{link_token}`; a slot taken meanwhile gets the 409 page.
pub async fn book(
    State(state): State<AppState>,
    Path((tenant, host_ref, slug)): Path<(String, String, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (h, e) = match find_event_type(&state, &tenant, &host_ref, &slug).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Ok(body) = body else {
        return error_page(StatusCode::BAD_REQUEST, "Bad request", "The form could not be read.", None);
    };
    let f = form_fields(&body);
    let field = |k: &str| f.get(k).map(|v| v.trim().to_string()).unwrap_or_default();
    let start = field("start").parse::<i64>().ok();
    let now = unix_now();
    let token_ok = start.is_some_and(|start| {
        state.pages.check_form_token(&field("token"), "book", &format!("{tenant}\n{}\n{start}", e.id), now)
    });
    if !same_origin(&headers, &state.public_base) || !token_ok {
        return forbidden();
    }
    let start = start.unwrap_or_default();
    let host_tz: Tz = h.time_zone.parse().unwrap_or(chrono_tz::UTC);
    let tz: Tz = match field("tz").as_str() {
        z if valid_time_zone(z) => z.parse().unwrap_or(host_tz),
        _ => host_tz,
    };
    let v = FormValues { name: field("name"), email: field("email"), note: f.get("note").cloned().unwrap_or_default() };
    let note = v.note.trim().to_string();
    let error = if v.name.is_empty() || v.name.chars().count() > 128 || v.name.chars().any(char::is_control) {
        Some(("name", "Please enter your name (at most 128 characters)."))
    } else if !plausible_email(&v.email) {
        Some(("email", "Please enter an email address such as name@example.com."))
    } else if note.chars().count() > MAX_NOTE_CHARS
        || note.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        Some(("note", "The note may have at most 2000 characters."))
    } else {
        None
    };
    if error.is_some() {
        return booking_form(&state, &tenant, &h, &e, tz, start, &v, error, StatusCode::UNPROCESSABLE_ENTITY);
    }
    // Counted once the post is well-formed: a typo does not use up the allowance.
    if let Err(wait) = state.pages.take_booking(state.pages.client(peer, &headers), Instant::now()) {
        let mut r = error_page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many bookings",
            "Too many bookings were made from your network in the last hour. Please try again later.",
            None,
        );
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait));
        return r;
    }
    let guest = CreateParticipant {
        reference: None,
        role: "guest".into(),
        display_name: v.name.clone(),
        email: Some(v.email.clone()),
        time_zone: Some(tz.name().to_string()),
        locale: None,
    };
    let slot = OfferedSlot { start, guest, note: (!note.is_empty()).then_some(note), metadata: None };
    let answer = catalog_api::book_offered(&state, tenant.clone(), &h, &e, slot, None, Vec::new()).await;
    let resp = match answer {
        Ok(r) => r,
        Err(err) => {
            let r = err.into_response();
            if r.status() == StatusCode::CONFLICT {
                return taken(tz);
            }
            let back = format!("?tz={}", qv(tz.name()));
            let status = r.status();
            let body = axum::body::to_bytes(r.into_body(), 64 * 1024).await.unwrap_or_default();
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|j| j["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| "The booking could not be made.".into());
            return error_page(
                status,
                "The booking could not be made",
                &message,
                Some((&back, "Back to the free times")),
            );
        }
    };
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 256 * 1024).await.unwrap_or_default();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let link = json["participants"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["role"] == "guest"))
        .and_then(|p| p["link_token"].as_str());
    match (status, link) {
        (StatusCode::CREATED, Some(link)) => see_other(&format!("/manage/{link}")),
        _ => internal(),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Manage page

/// The booking and guest of a manage URL's link token, or the 404 page (unknown or revoked link, or a host's link:
/// hosts use their agenda).
async fn find_guest(state: &AppState, link: &str) -> Result<(Booking, Participant), Response> {
    if link.is_empty() || link.len() > 128 {
        return Err(not_found());
    }
    match state.store.by_link(&tokens::link_token_hash(link)).await {
        Ok(Some((b, p))) if p.role == Role::Guest => Ok((b, p)),
        Ok(_) => Err(not_found()),
        Err(_) => Err(internal()),
    }
}

/// Whether the guest may still cancel or move `b` at `now`: pending or confirmed, and `manage_notice` or more
/// before its start.
fn manageable(state: &AppState, b: &Booking, now: i64) -> bool {
    let notice = i64::try_from(state.pages.config.manage_notice.as_secs()).unwrap_or(i64::MAX);
    matches!(b.status, Status::Pending | Status::Confirmed) && now < b.start_at.saturating_sub(notice)
}

/// The notice as people say it: `24 hours`, `90 minutes`, `2 days`.
fn notice_text(state: &AppState) -> String {
    let s = state.pages.config.manage_notice.as_secs();
    match s {
        0 => "the start".into(),
        s if s % 86_400 == 0 => format!("{} day{} before the start", s / 86_400, if s == 86_400 { "" } else { "s" }),
        s if s % 3600 == 0 => format!("{} hour{} before the start", s / 3600, if s == 3600 { "" } else { "s" }),
        s => format!("{} minutes before the start", s.div_ceil(60)),
    }
}

/// The host's display name of `b`.
fn host_name(b: &Booking) -> &str {
    b.participants.iter().find(|p| p.role == Role::Host).map_or("the host", |p| p.display_name.as_str())
}

/// `GET /manage/{link_token}`: the guest's confirmation and manage page: title, host, date and time in the guest's
/// zone (`tz` query field, else the zone stored with the guest, else the host's), status (pending: waiting for
/// confirmation), the join link `/j/{link_token}`, an "Add to calendar" link to `/v1/join/{link_token}/invite.ics`,
/// and while [`manageable`] a cancel form and a link to pick another time; after that, the reason they are gone.
pub async fn manage_page(
    State(state): State<AppState>,
    Path(link): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let (b, p) = match find_guest(&state, &link).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let q = query_fields(query.as_deref());
    let tz = match zone_param(&q, guest_zone(&b, &p)) {
        Ok(z) => z,
        Err(r) => return r,
    };
    let now = unix_now();
    let host = host_name(&b);
    let (status_class, status_text) = match b.status_at(now) {
        "pending" => ("pending", format!("Waiting for confirmation from {host}.")),
        "confirmed" => ("confirmed", "Confirmed.".to_string()),
        "cancelled" => ("cancelled", "Cancelled.".to_string()),
        "rejected" => ("cancelled", format!("Declined by {host}.")),
        _ => ("ended", "This meeting has ended.".to_string()),
    };
    let mut body = format!(
        "<header>\n<p class=\"host\">{}</p>\n<h1>{}</h1>\n</header>\n\
         <p class=\"status {status_class}\" role=\"status\"><span class=\"label\">Status:</span> {}</p>\n\
         <dl class=\"facts\">\n<dt>When</dt><dd id=\"when\">{}</dd>\n<dt>Time zone</dt><dd>{}</dd>\n\
         <dt>Guest</dt><dd>{}</dd>\n</dl>\n",
        esc(host),
        esc(&b.title),
        esc(&status_text),
        esc(&format!("{} – {}", when(tz, b.start_at), hhmm(tz, b.end_at))),
        esc(tz.name()),
        esc(&p.display_name),
    );
    if matches!(b.status, Status::Pending | Status::Confirmed) && now < b.window.hard_end_at {
        let _ = write!(
            body,
            "<section aria-labelledby=\"join-h\">\n<h2 id=\"join-h\">Your meeting link</h2>\n\
             <p>Open it at the meeting time (it opens a few minutes before the start). Keep it private: it is your \
             personal link.</p>\n<p class=\"actions\"><a class=\"button primary\" id=\"join-link\" href=\"/j/{link}\">Join the meeting</a>\
             <a class=\"button\" id=\"ics-link\" href=\"/v1/join/{link}/invite.ics\">Add to calendar</a></p>\n</section>\n"
        );
        if manageable(&state, &b, now) {
            let token = state.pages.form_token("manage-cancel", &b.id, now);
            let _ = write!(
                body,
                "<section aria-labelledby=\"change-h\">\n<h2 id=\"change-h\">Change this booking</h2>\n\
                 <p>You can cancel or move it until {}.</p>\n<p class=\"actions\">\
                 <a class=\"button\" id=\"reschedule-link\" href=\"/manage/{link}/reschedule?tz={}\">Pick another time</a></p>\n\
                 <form method=\"post\" action=\"/manage/{link}/cancel\" class=\"cancel\">\n\
                 <input type=\"hidden\" name=\"token\" value=\"{}\">\n\
                 <button type=\"submit\" class=\"danger\">Cancel this booking</button>\n</form>\n</section>\n",
                esc(&notice_text(&state)),
                qv(tz.name()),
                esc(&token)
            );
        } else {
            let _ = writeln!(
                body,
                "<p class=\"note\" id=\"too-late\">This booking can no longer be changed here: changes are possible \
                 until {}. Please contact {} directly.</p>",
                esc(&notice_text(&state)),
                esc(host)
            );
        }
    }
    page(StatusCode::OK, &format!("{} – booking", b.title), &body)
}

/// The zone of the guest's pages: the one stored with the guest, else the host's, else UTC.
fn guest_zone(b: &Booking, p: &Participant) -> Tz {
    let host = b.participants.iter().find(|x| x.role == Role::Host).and_then(|x| x.time_zone.as_deref());
    p.time_zone.as_deref().or(host).and_then(|z| z.parse().ok()).unwrap_or(chrono_tz::UTC)
}

/// The 409 page of a manage action refused by the notice rule.
fn too_late(state: &AppState, link: &str) -> Response {
    let back = format!("/manage/{link}");
    error_page(
        StatusCode::CONFLICT,
        "This booking can no longer be changed",
        &format!("Changes are possible until {}. Please contact the host directly.", notice_text(state)),
        Some((&back, "Back to the booking")),
    )
}

/// `POST /manage/{link_token}/cancel` (`token`): 403 page for a foreign origin or a bad token, 409 page when no
/// longer [`manageable`], else the booking is cancelled as by `POST /v1/bookings/{id}/cancel` (room closed, TURN
/// revoked, `booking.cancelled` webhook) and 303 back to the manage page.
pub async fn manage_cancel(
    State(state): State<AppState>,
    Path(link): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (b, _) = match find_guest(&state, &link).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let f = form_fields(&body.unwrap_or_default());
    let now = unix_now();
    let token = f.get("token").map_or("", String::as_str);
    if !same_origin(&headers, &state.public_base) || !state.pages.check_form_token(token, "manage-cancel", &b.id, now) {
        return forbidden();
    }
    if !manageable(&state, &b, now) {
        return too_late(&state, &link);
    }
    match apply_transition(&state, &b.tenant_id, &b.id, Status::Cancelled, &[Status::Pending, Status::Confirmed], now)
        .await
    {
        Ok(Some((_, Transition::Changed | Transition::Unchanged))) => see_other(&format!("/manage/{link}")),
        Ok(Some((_, Transition::Refused))) => too_late(&state, &link),
        Ok(None) => not_found(),
        Err(e) => api_error_page(e, "The booking could not be cancelled", None).await,
    }
}

/// The event type (and its host) a booking was made from, when it still exists.
async fn origin_event_type(state: &AppState, b: &Booking) -> Option<(Host, EventType)> {
    let e = state.store.event_type(&b.tenant_id, b.event_type_id.as_deref()?).await.ok()??;
    let h = state.store.host_by_id(&b.tenant_id, &e.host_id).await.ok()??;
    Some((h, e))
}

/// `GET /manage/{link_token}/reschedule?tz=&from=`: the free times of the booking's event type (the booking page's
/// days and navigation), each a small form that moves the booking there. 409 page when no longer [`manageable`];
/// a booking not made from an event type, or whose event type is gone, gets a page saying it cannot move here.
pub async fn reschedule_page(
    State(state): State<AppState>,
    Path(link): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let (b, p) = match find_guest(&state, &link).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let now = unix_now();
    if !manageable(&state, &b, now) {
        return too_late(&state, &link);
    }
    let back = format!("/manage/{link}");
    let Some((h, e)) = origin_event_type(&state, &b).await else {
        return error_page(
            StatusCode::CONFLICT,
            "This booking cannot be moved here",
            "Please contact the host to change it.",
            Some((&back, "Back to the booking")),
        );
    };
    let q = query_fields(query.as_deref());
    let tz = match zone_param(&q, guest_zone(&b, &p)) {
        Ok(z) => z,
        Err(r) => return r,
    };
    let today = local_date(tz, now).unwrap_or_default();
    let from = match from_param(&q, today) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let days = match slot_days(&state, &h, &e, tz, from, state.pages.config.days).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let mut body = event_header(&h, &e);
    let _ = writeln!(
        body,
        "<p>Now booked: <strong>{}</strong>. <a href=\"{}\">Keep this time</a></p>",
        esc(&when(tz, b.start_at)),
        esc(&back)
    );
    body += &zone_form(tz, &[("from", &from.to_string())]);
    body += "<section aria-labelledby=\"times\">\n<h2 id=\"times\">Pick a new time</h2>\n";
    for (d, starts) in &days {
        let _ = writeln!(body, "<h3>{}</h3>", esc(&day_heading(*d)));
        if starts.is_empty() {
            body += "<p class=\"none\">No free times.</p>\n";
            continue;
        }
        body += "<ul class=\"slots\">\n";
        for t in starts {
            let token = state.pages.form_token("manage-reschedule", &format!("{}\n{t}", b.id), now);
            let _ = writeln!(
                body,
                "<li><form method=\"post\" action=\"/manage/{link}/reschedule\">\
                 <input type=\"hidden\" name=\"token\" value=\"{}\"><input type=\"hidden\" name=\"start\" value=\"{t}\">\
                 <button type=\"submit\" class=\"slot\" aria-label=\"Move to {}\">{}</button></form></li>",
                esc(&token),
                esc(&when(tz, *t)),
                esc(&hhmm(tz, *t))
            );
        }
        body += "</ul>\n";
    }
    body += "</section>\n";
    body += &day_nav(from, today, state.pages.config.days, tz, "More days");
    page(StatusCode::OK, &format!("Move {}", b.title), &body)
}

/// `POST /manage/{link_token}/reschedule` (`token`, `start`): 403 page for a foreign origin or a bad token, 409
/// page when no longer [`manageable`] or when `start` is not a free slot of the booking's event type now, else the
/// booking moves there through the path of `PATCH /v1/bookings/{id}` ([`super::reschedule::reschedule_to`]: the
/// hub, relay and webhooks follow) keeping its duration, and 303 back to the manage page.
pub async fn manage_reschedule(
    State(state): State<AppState>,
    Path(link): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (b, _) = match find_guest(&state, &link).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let f = form_fields(&body.unwrap_or_default());
    let now = unix_now();
    let start = f.get("start").and_then(|s| s.parse::<i64>().ok());
    let token = f.get("token").map_or("", String::as_str);
    let token_ok =
        start.is_some_and(|t| state.pages.check_form_token(token, "manage-reschedule", &format!("{}\n{t}", b.id), now));
    if !same_origin(&headers, &state.public_base) || !token_ok {
        return forbidden();
    }
    let start = start.unwrap_or_default();
    if !manageable(&state, &b, now) {
        return too_late(&state, &link);
    }
    let back = format!("/manage/{link}");
    let Some((h, e)) = origin_event_type(&state, &b).await else { return too_late(&state, &link) };
    if !offered(&state, &h, &e, start).await {
        return error_page(
            StatusCode::CONFLICT,
            "This time is no longer available",
            "Please pick another time.",
            Some((&format!("/manage/{link}/reschedule"), "Back to the free times")),
        );
    }
    match super::reschedule::reschedule_to(&state, &b, start, start + (b.end_at - b.start_at)).await {
        Ok(_) => see_other(&back),
        Err(e) => api_error_page(e, "The booking could not be moved", Some((&back, "Back to the booking"))).await,
    }
}

/// The booking pages' styles.
pub async fn pages_css() -> Response {
    asset("text/css; charset=utf-8", include_str!("../assets/pages.css"))
}

/// The booking pages' script (sets the visitor's zone on a first visit; nothing else).
pub async fn book_js() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("../assets/book.js"))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> PageState {
        let config = BookingPageConfig { bookings_per_hour: 2, ..BookingPageConfig::default() };
        PageState::new(config, &[7u8; 32], Vec::new(), ForwardedHeader::default())
    }

    #[test]
    fn form_tokens_bind_purpose_subject_and_expiry() {
        let s = state();
        let t = s.form_token("book", "evt_1\n100", 1_000);
        assert!(s.check_form_token(&t, "book", "evt_1\n100", 1_000));
        assert!(s.check_form_token(&t, "book", "evt_1\n100", 1_000 + FORM_TOKEN_TTL_S));
        assert!(!s.check_form_token(&t, "book", "evt_1\n100", 1_001 + FORM_TOKEN_TTL_S));
        assert!(!s.check_form_token(&t, "book", "evt_1\n160", 1_000));
        assert!(!s.check_form_token(&t, "manage-cancel", "evt_1\n100", 1_000));
        let (exp, mac) = t.split_once('.').unwrap();
        let later = format!("{}.{mac}", exp.parse::<i64>().unwrap() + 60);
        assert!(!s.check_form_token(&later, "book", "evt_1\n100", 1_000));
        assert!(!s.check_form_token("", "book", "evt_1\n100", 1_000));
        let other = PageState::new(BookingPageConfig::default(), &[8u8; 32], Vec::new(), ForwardedHeader::default());
        assert!(!other.check_form_token(&t, "book", "evt_1\n100", 1_000));
    }

    #[test]
    fn booking_limit_is_a_token_bucket_per_client() {
        let s = state();
        let a = IpKey::of("192.0.2.1".parse().unwrap());
        let b = IpKey::of("192.0.2.2".parse().unwrap());
        let t0 = Instant::now();
        assert!(s.take_booking(a, t0).is_ok());
        assert!(s.take_booking(a, t0).is_ok());
        let wait = s.take_booking(a, t0).unwrap_err();
        assert!((1_700..=1_800).contains(&wait), "{wait}");
        assert!(s.take_booking(b, t0).is_ok());
        assert!(s.take_booking(a, t0 + std::time::Duration::from_secs(1_800)).is_ok());
    }

    #[test]
    fn escaping_and_origins() {
        assert_eq!(esc("<script>\"a\" & 'b'</script>"), "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;");
        assert_eq!(origin_of("https://duet.example/base"), "https://duet.example");
        assert_eq!(origin_of("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
        let mut h = HeaderMap::new();
        assert!(same_origin(&h, "http://127.0.0.1:8080"));
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        h.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(!same_origin(&h, "http://127.0.0.1:8080"));
        h.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:8080"));
        assert!(same_origin(&h, "https://duet.example"));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h, "http://127.0.0.1:8080"));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(same_origin(&h, "http://127.0.0.1:8080"));
        h.remove(header::ORIGIN);
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&h, "http://127.0.0.1:8080"));
    }
}
