//! The REST API (`/v1/`, JSON). Every error is an HTTP status with a JSON body `{"error": <code>, "message": …,
//! "field"?: <name>}` (research/booking.md §7.7 is the contract for bad input).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};

use super::store::{
    Booking, IdempotencyRecord, IdempotentCreate, Kind, LinkChange, ListFilter, NewParticipant, Participant, Status,
    StatusFilter, StoreError, Transition,
};
use super::tokens::{self, SessionClaims};
use super::window::{JoinPolicy, JoinRefusal, JoinWindow, Role};
use crate::api_key::Scope;
use crate::app::{AppState, unix_now};
use crate::openapi::ErrorBody;
use serde_json::value::RawValue;

/// An API error: status, machine-readable code, message, optional field and extra members.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    extra: Vec<(&'static str, Value)>,
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), field: None, extra: Vec::new(), headers: Vec::new() }
    }
    pub(crate) fn field(mut self, f: impl Into<String>) -> ApiError {
        self.field = Some(f.into());
        self
    }
    pub(crate) fn with(mut self, k: &'static str, v: Value) -> ApiError {
        self.extra.push((k, v));
        self
    }
    fn header(mut self, name: header::HeaderName, v: HeaderValue) -> ApiError {
        self.headers.push((name, v));
        self
    }
    /// 401 with `WWW-Authenticate: Bearer`; one body for missing, unknown, revoked and expired keys.
    pub fn unauthorized() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing or invalid API key")
            .header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    }
    /// 403 `insufficient_scope`: the key is valid but lacks `scope` (named in the message, in the member `scope` and
    /// in `WWW-Authenticate`, RFC 6750 §3.1).
    pub fn insufficient_scope(scope: Scope) -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            format!("this API key lacks the scope `{scope}` this request needs"),
        )
        .with("scope", json!(scope.as_str()))
        .header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_str(&format!("Bearer error=\"insufficient_scope\", scope=\"{scope}\""))
                .unwrap_or_else(|_| HeaderValue::from_static("Bearer")),
        )
    }
    /// 404 `not_found`.
    pub fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
    }
    pub(crate) fn internal(e: impl std::fmt::Display) -> ApiError {
        tracing::error!(target: "booking", error = %e, "internal error");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::Map::new();
        body.insert("error".into(), json!(self.code));
        body.insert("message".into(), json!(self.message));
        if let Some(f) = self.field {
            body.insert("field".into(), json!(f));
        }
        for (k, v) in self.extra {
            body.insert(k.into(), v);
        }
        let mut resp = (self.status, axum::Json(Value::Object(body))).into_response();
        for (k, v) in self.headers {
            resp.headers_mut().insert(k, v);
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::DuplicateExternalId => ApiError::new(
                StatusCode::CONFLICT,
                "external_id_taken",
                "another booking already uses this external_id",
            )
            .field("external_id"),
            StoreError::UnknownTenant => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_tenant", "no such tenant").field("tenant_id")
            }
            StoreError::IdempotencyKeyInUse => ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_in_use",
                "another request with this Idempotency-Key is in progress; retry",
            )
            .field("Idempotency-Key"),
            StoreError::SlotUnavailable => slot_unavailable(None),
            StoreError::HostRefTaken => {
                ApiError::new(StatusCode::CONFLICT, "host_ref_taken", "the tenant already has a host with this ref")
                    .field("ref")
            }
            StoreError::SlugTaken => {
                ApiError::new(StatusCode::CONFLICT, "slug_taken", "the host already has an event type with this slug")
                    .field("slug")
            }
            StoreError::ScheduleInUse => ApiError::new(
                StatusCode::CONFLICT,
                "schedule_in_use",
                "an event type uses this schedule; delete it or move it to another schedule first",
            ),
            StoreError::Db(e) => ApiError::internal(e),
        }
    }
}

/// 409 `slot_unavailable` (`field: "start_at"`): the host's blocked interval (buffers included) intersects another
/// `pending` or `confirmed` booking of the same host `ref` in the caller's tenant, named in `conflicting_booking_id`
/// when known (the rule is per tenant, so it is always one of the caller's own bookings).
pub(crate) fn slot_unavailable(conflicting: Option<String>) -> ApiError {
    let e = ApiError::new(
        StatusCode::CONFLICT,
        "slot_unavailable",
        "the host already has a pending or confirmed booking at this time (buffers included)",
    )
    .field("start_at");
    match conflicting {
        Some(id) => e.with("conflicting_booking_id", json!(id)),
        None => e,
    }
}

/// Maps a body-read failure (too large, broken stream) to a JSON error.
pub(crate) fn body_error(e: BytesRejection) -> ApiError {
    let status = e.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(status, "payload_too_large", "request body too large")
    } else {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e.body_text())
    }
}

/// Parses a JSON body into `T`, mapping serde's errors: syntax, unknown field or wrong type -> 400 `invalid_request`
/// (with `field` when known); missing field -> 422 `missing_field` naming it.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let e = match serde_json::from_slice::<T>(body) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let msg = e.to_string();
    let ticked = msg.split('`').nth(1).map(str::to_string);
    use serde_json::error::Category;
    match e.classify() {
        Category::Data if msg.starts_with("missing field") => {
            let mut err = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "missing_field", msg);
            err.field = ticked;
            Err(err)
        }
        Category::Data => {
            let mut err = ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", msg.clone());
            if msg.starts_with("unknown field") {
                err.field = ticked;
            }
            Err(err)
        }
        _ => Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", format!("malformed JSON: {msg}"))),
    }
}

/// Authenticates `Authorization: Bearer <key>` and checks that the key has `scope`. Returns the key's row (its
/// tenant, scopes, id). Errors: 401 `unauthorized` (with `WWW-Authenticate: Bearer`) for a missing, unknown, revoked
/// or expired key, one body for all; 403 `insufficient_scope` naming the missing scope (member `scope`).
pub async fn authenticate_key(
    state: &AppState,
    headers: &HeaderMap,
    scope: Scope,
) -> Result<super::store::ApiKey, ApiError> {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 256)
        .ok_or_else(ApiError::unauthorized)?;
    let hash = Sha256::digest(key.as_bytes());
    let row = state
        .store
        .api_key_by_hash(&hash)
        .await?
        .filter(|k| k.is_live(unix_now()))
        .ok_or_else(ApiError::unauthorized)?;
    if !row.scopes.contains(&scope) {
        return Err(ApiError::insufficient_scope(scope));
    }
    Ok(row)
}

/// [`authenticate_key`] for the booking endpoints: the tenant of a live key that has `scope`.
pub async fn authenticate(state: &AppState, headers: &HeaderMap, scope: Scope) -> Result<String, ApiError> {
    Ok(authenticate_key(state, headers, scope).await?.tenant_id)
}

/// RFC 3339 (UTC, `Z`) of Unix seconds.
pub(crate) fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix).ok().and_then(|t| t.format(&Rfc3339).ok()).unwrap_or_default()
}

/// The `window` object of a booking: RFC 3339 UTC instants.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Window)]
pub struct WindowView {
    /// The host may join from then.
    pub host_opens_at: String,
    /// The guest may join from then.
    pub opens_at: String,
    /// No first-time join after it.
    pub join_cutoff_at: String,
    /// The room closes and TURN allocations are torn down then.
    pub hard_end_at: String,
}

impl WindowView {
    /// The view of `w`.
    pub fn of(w: &JoinWindow) -> WindowView {
        WindowView {
            host_opens_at: rfc3339(w.host_opens_at),
            opens_at: rfc3339(w.opens_at),
            join_cutoff_at: rfc3339(w.join_cutoff_at),
            hard_end_at: rfc3339(w.hard_end_at),
        }
    }
}

/// `window` JSON object of a booking.
pub fn window_json(w: &JoinWindow) -> Value {
    serde_json::to_value(WindowView::of(w)).unwrap_or(Value::Null)
}

/// A participant in a booking response.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Participant)]
pub struct ParticipantView {
    /// `par_…`.
    pub id: String,
    /// The app's own id for the person, or null.
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    /// `host` or `guest`.
    pub role: Role,
    /// Shown to the other participant.
    pub display_name: String,
    /// Whether the participant has been admitted at least once.
    pub joined: bool,
    /// Derived: the booking is confirmed, `join_cutoff_at` has passed and the participant never joined.
    pub no_show: bool,
    /// Contact email, or null.
    pub email: Option<String>,
    /// IANA time zone name (e.g. `Europe/Berlin`), or null.
    pub time_zone: Option<String>,
    /// BCP 47 language tag (e.g. `en-GB`), or null.
    pub locale: Option<String>,
    /// Whether the participant's link was revoked (`POST …/link/revoke`; a rotation gives a working link again).
    pub link_revoked: bool,
    /// The link token: only in the 201 answer of a create (shown once; only its hash is stored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_token: Option<String>,
    /// `<public_url>/j/<link_token>`: only with `link_token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_url: Option<String>,
}

/// Status of a booking as the API shows it: the stored status, or the derived `ended` (a confirmed booking after
/// `hard_end_at`).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BookingStatus {
    /// Created with `"status": "pending"`: links exist, joins answer 409 until confirmed.
    Pending,
    /// Joinable inside its window.
    Confirmed,
    /// Rejected while pending.
    Rejected,
    /// Cancelled.
    Cancelled,
    /// Confirmed and past `hard_end_at`.
    Ended,
}

/// A booking response (`GET /v1/bookings/{id}`, create, transitions, list items).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Booking)]
pub struct BookingView {
    /// `bkg_…`.
    pub id: String,
    /// `pending`, `confirmed`, `rejected`, `cancelled`, or the derived `ended` (a confirmed booking after
    /// `hard_end_at`).
    #[schema(value_type = BookingStatus)]
    pub status: &'static str,
    /// The booking's version: goes up with every status change and every `PATCH` (session tokens of an older
    /// sequence stop working). Also the `ETag` of booking responses, `"<sequence>"`, for `If-Match`.
    pub sequence: i64,
    /// Title.
    pub title: String,
    /// The app's id, unique per tenant, or null.
    pub external_id: Option<String>,
    /// RFC 3339 UTC.
    pub start_at: String,
    /// RFC 3339 UTC.
    pub end_at: String,
    /// Seconds before `start_at` the host is kept free (0-86400).
    pub buffer_before_s: i64,
    /// Seconds after `end_at` the host is kept free (0-86400).
    pub buffer_after_s: i64,
    /// The join window.
    pub window: WindowView,
    /// Host then guest.
    pub participants: Vec<ParticipantView>,
    /// `hosted` (a Duet room) or `external_link` (a remote meeting URL).
    pub kind: BookingKind,
    /// The https URL an `external_link` booking's join answers; null for `hosted`.
    pub external_url: Option<String>,
    /// The app's JSON object as it was sent on create (at most 4 KiB), byte for byte; null when none was sent.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Box<RawValue>>,
    /// The booking's own join policy as set on create or `PATCH` (members null: the daemon's defaults, which
    /// `window` shows applied).
    pub join_policy: JoinPolicy,
    /// RFC 3339 UTC of the last change of the times or the join policy; null when never rescheduled.
    pub rescheduled_at: Option<String>,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// RFC 3339 UTC.
    pub updated_at: String,
    /// `true` in an `Idempotent-Replayed` answer: the original body without `link_token` / `join_url`, which are
    /// shown once and never stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub links_shown_once: Option<bool>,
}

impl BookingView {
    /// The view of `b` at `now` (Unix seconds); `links` are the link tokens in participant order (create only).
    pub fn of(b: &Booking, now: i64, links: Option<(&AppState, &[String])>) -> BookingView {
        let participants = b
            .participants
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let token = links.and_then(|(_, t)| t.get(i).cloned());
                ParticipantView {
                    id: p.id.clone(),
                    reference: p.reference.clone(),
                    role: p.role,
                    display_name: p.display_name.clone(),
                    joined: p.first_joined_at.is_some(),
                    no_show: b.no_show(p, now),
                    email: p.email.clone(),
                    time_zone: p.time_zone.clone(),
                    locale: p.locale.clone(),
                    link_revoked: p.link_revoked_at.is_some(),
                    join_url: match (&token, links) {
                        (Some(t), Some((state, _))) => Some(format!("{}/j/{t}", state.public_base)),
                        _ => None,
                    },
                    link_token: token,
                }
            })
            .collect();
        BookingView {
            id: b.id.clone(),
            status: b.status_at(now),
            sequence: b.sequence,
            title: b.title.clone(),
            external_id: b.external_id.clone(),
            start_at: rfc3339(b.start_at),
            end_at: rfc3339(b.end_at),
            buffer_before_s: b.buffer_before_s,
            buffer_after_s: b.buffer_after_s,
            window: WindowView::of(&b.window),
            participants,
            kind: match b.kind {
                Kind::Hosted => BookingKind::Hosted,
                Kind::ExternalLink => BookingKind::ExternalLink,
            },
            external_url: b.external_url.clone(),
            metadata: b.metadata.clone().and_then(|m| RawValue::from_string(m).ok()),
            join_policy: b.join_policy,
            rescheduled_at: b.rescheduled_at.map(rfc3339),
            created_at: rfc3339(b.created_at),
            updated_at: rfc3339(b.updated_at),
            links_shown_once: None,
        }
    }
}

/// The JSON view of `b` with `ETag: "<sequence>"` (the `If-Match` of `PATCH /v1/bookings/{id}`).
pub(crate) fn booking_response(status: StatusCode, b: &Booking) -> Response {
    let mut r = (status, axum::Json(BookingView::of(b, unix_now(), None))).into_response();
    if let Ok(v) = HeaderValue::from_str(&etag(b.sequence)) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

/// The strong entity tag of a booking at `sequence`: `"<sequence>"` (RFC 9110 §8.8.3).
pub(crate) fn etag(sequence: i64) -> String {
    format!("\"{sequence}\"")
}

/// The kind of a booking (`kind` on create and in responses).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BookingKind {
    /// A Duet room (the default): join answers a session token and TURN credentials.
    #[default]
    Hosted,
    /// A remote meeting URL (`external_url`, https): no room, no TURN; join answers the URL inside the window.
    ExternalLink,
}

/// `status` on create.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CreateStatus {
    /// Links exist, joins answer 409 until `POST …/confirm`.
    Pending,
    /// The default.
    #[default]
    Confirmed,
}

/// `POST /v1/bookings` body (unknown members are refused with 400 `invalid_request`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBooking {
    /// 1 to 200 characters without control characters.
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub title: String,
    /// RFC 3339 with an offset; not in the past (beyond `start_leeway`), at most `horizon` ahead.
    #[schema(format = DateTime)]
    pub start_at: String,
    /// RFC 3339 with an offset; after `start_at`, at most `max_duration` later.
    #[schema(format = DateTime)]
    pub end_at: String,
    /// The app's own id, 1 to 128 characters without control characters, unique per tenant (409
    /// `external_id_taken`).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub external_id: Option<String>,
    /// Exactly one `host` and one `guest` (else 422 `invalid_participants`).
    #[schema(min_items = 2, max_items = 2)]
    pub participants: Vec<CreateParticipant>,
    /// `confirmed` (the default) or `pending`.
    #[serde(default)]
    pub status: CreateStatus,
    /// Seconds before `start_at` the host is kept free, 0-86400 (default 0).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 86400)]
    pub buffer_before_s: i64,
    /// Seconds after `end_at` the host is kept free, 0-86400 (default 0).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 86400)]
    pub buffer_after_s: i64,
    /// `hosted` (the default) or `external_link`.
    #[serde(default)]
    pub kind: BookingKind,
    /// Required for `kind: "external_link"` (else 422 `missing_field`), refused for `hosted` (422 `invalid_field`):
    /// an `https://` URL of at most 2048 characters (else 422 `invalid_field`).
    #[serde(default)]
    #[schema(max_length = 2048, pattern = r"^https://[^\u0000-\u0020\u007F-\u009F]+$")]
    pub external_url: Option<String>,
    /// Any JSON object of at most 4096 bytes as sent and at most 4 levels deep (else 422 `invalid_field`), stored
    /// and echoed back verbatim in every booking response.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Box<RawValue>>,
    /// This booking's own join policy; members left out follow the daemon's `[booking]` defaults (422
    /// `invalid_field` out of range).
    #[serde(default)]
    pub join_policy: Option<JoinPolicy>,
}

/// Checks a booking's times (Unix seconds) at `now`: 422 `invalid_duration` when `end` is not after `start` or the
/// booking is longer than `[booking] max_duration`; with `check_start`, 422 `start_in_past` before `now -
/// start_leeway` and 422 `outside_booking_horizon` after `now + horizon` (member `latest_start_at`). A reschedule
/// that keeps the start (an extension during the call) passes `check_start = false`.
pub(crate) fn check_times(state: &AppState, start: i64, end: i64, now: i64, check_start: bool) -> Result<(), ApiError> {
    if end <= start {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_duration",
            "`end_at` must be after `start_at`",
        )
        .field("end_at"));
    }
    if (end - start) as u64 > state.policy.max_duration.as_secs() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_duration",
            format!("a booking may last at most {} minutes", state.policy.max_duration.as_secs() / 60),
        )
        .field("end_at"));
    }
    if !check_start {
        return Ok(());
    }
    if start < now - state.policy.start_leeway.as_secs() as i64 {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "start_in_past", "`start_at` is in the past")
            .field("start_at"));
    }
    let horizon = i64::try_from(state.policy.horizon.as_secs()).unwrap_or(i64::MAX);
    if start > now.saturating_add(horizon) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "outside_booking_horizon",
            match horizon % 86_400 {
                0 => format!("`start_at` may be at most {} days in the future", horizon / 86_400),
                _ => format!("`start_at` may be at most {horizon} s in the future"),
            },
        )
        .field("start_at")
        .with("latest_start_at", json!(rfc3339(now.saturating_add(horizon)))));
    }
    Ok(())
}

/// 422 `invalid_field` naming the first member of `p` out of its range.
pub(crate) fn check_join_policy(p: &JoinPolicy) -> Result<(), ApiError> {
    match p.out_of_range() {
        Some((name, max)) => {
            Err(invalid_field(&format!("join_policy.{name}"), format!("`{name}` must be 0 to {max} seconds")))
        }
        None => Ok(()),
    }
}

/// The largest `metadata`, bytes of JSON as sent.
pub const MAX_METADATA_BYTES: usize = 4096;
/// The deepest `metadata`: `{"a": {"b": {"c": {"d": 1}}}}` is 4 levels.
pub const MAX_METADATA_DEPTH: usize = 4;
/// The longest `external_url`, characters.
pub const MAX_EXTERNAL_URL: usize = 2048;

/// The largest buffer, seconds (one day).
const MAX_BUFFER_S: i64 = 86_400;

/// A participant of a `POST /v1/bookings` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateParticipant {
    /// The app's own id for the person, 1 to 128 characters without control characters.
    #[serde(default, rename = "ref")]
    #[schema(min_length = 1, max_length = 128, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub reference: Option<String>,
    /// `host` or `guest`.
    #[schema(value_type = Role)]
    pub role: String,
    /// Shown to the other participant, 1 to 128 characters without control characters.
    #[schema(min_length = 1, max_length = 128, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub display_name: String,
    /// Contact email, checked loosely (`local@domain.tld`, at most 254 characters, no spaces; else 422
    /// `invalid_field`).
    #[serde(default)]
    #[schema(max_length = 254, format = Email)]
    pub email: Option<String>,
    /// An IANA time zone name such as `Europe/Berlin` or `UTC` (else 422 `invalid_time_zone`).
    #[serde(default)]
    #[schema(max_length = 64, example = "Europe/Berlin")]
    pub time_zone: Option<String>,
    /// A BCP 47 language tag such as `es` or `en-GB`, checked by shape (else 422 `invalid_field`).
    #[serde(default)]
    #[schema(max_length = 64, pattern = r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$", example = "en-GB")]
    pub locale: Option<String>,
}

pub(crate) fn invalid_field(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message).field(field)
}

/// A loose email check: at most 254 characters, no whitespace or control characters, one `@` with a non-empty local
/// part (at most 64 characters) and a domain of dot-separated non-empty labels, at least two.
pub fn plausible_email(v: &str) -> bool {
    let Some((local, domain)) = v.rsplit_once('@') else { return false };
    v.chars().count() <= 254
        && !v.chars().any(|c| c.is_whitespace() || c.is_control())
        && !local.is_empty()
        && local.len() <= 64
        && !domain.contains('@')
        && domain.split('.').count() >= 2
        && domain.split('.').all(|l| !l.is_empty() && !l.starts_with('-') && !l.ends_with('-'))
}

/// Whether `v` is an IANA time zone name of the bundled tz database (`chrono-tz`), e.g. `Europe/Berlin`, `UTC`.
pub fn valid_time_zone(v: &str) -> bool {
    v.len() <= 64 && v.parse::<chrono_tz::Tz>().is_ok()
}

/// Whether `v` has the shape of a BCP 47 language tag (RFC 5646): a 2-8 letter language subtag, then subtags of 1-8
/// letters or digits separated by `-`, at most 64 characters (`es`, `en-GB`, `zh-Hant-TW`, `sr-Latn-RS`).
pub fn plausible_locale(v: &str) -> bool {
    let mut parts = v.split('-');
    let lang_ok =
        parts.next().is_some_and(|l| (2..=8).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_alphabetic()));
    v.len() <= 64
        && lang_ok
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Whether `v` is an acceptable `external_url`: `https://` then a host, at most [`MAX_EXTERNAL_URL`] characters, no
/// whitespace or control characters, and parseable as a URL with a host.
pub fn valid_external_url(v: &str) -> bool {
    v.chars().count() <= MAX_EXTERNAL_URL
        && !v.chars().any(|c| c.is_whitespace() || c.is_control())
        && v.get(..8).is_some_and(|p| p.eq_ignore_ascii_case("https://"))
        && url::Url::parse(v).is_ok_and(|u| u.scheme() == "https" && u.host_str().is_some_and(|h| !h.is_empty()))
}

/// Nesting depth of a JSON value: scalars 0, an object or array 1 + the deepest member.
fn json_depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(json_depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Checks `metadata`: a JSON object of at most [`MAX_METADATA_BYTES`] as sent and [`MAX_METADATA_DEPTH`] levels;
/// else 422 `invalid_field` naming `metadata`.
pub(crate) fn check_metadata(raw: &RawValue) -> Result<(), ApiError> {
    let text = raw.get();
    if text.len() > MAX_METADATA_BYTES {
        return Err(invalid_field(
            "metadata",
            format!("`metadata` must be at most {MAX_METADATA_BYTES} bytes of JSON"),
        ));
    }
    let v: Value = serde_json::from_str(text).map_err(|_| invalid_field("metadata", "`metadata` is not JSON"))?;
    if !v.is_object() {
        return Err(invalid_field("metadata", "`metadata` must be a JSON object"));
    }
    if json_depth(&v) > MAX_METADATA_DEPTH {
        return Err(invalid_field("metadata", format!("`metadata` may nest at most {MAX_METADATA_DEPTH} levels")));
    }
    Ok(())
}

/// Text a person typed: 1..=max characters, no control characters.
pub(crate) fn check_text(field: &str, v: &str, max: usize) -> Result<(), ApiError> {
    let n = v.chars().count();
    if n == 0 || n > max || v.chars().any(char::is_control) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            format!("`{field}` must be 1 to {max} characters without control characters"),
        )
        .field(field));
    }
    Ok(())
}

/// Whether `id` may name a stored object: 1 to 128 characters, none of them a control character (an id that is not
/// is answered 404 without asking the store; PostgreSQL refuses NUL in text).
pub(crate) fn plausible_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && !id.chars().any(char::is_control)
}

/// RFC 3339 with an explicit offset (`Z` or `±hh:mm`); a local time without offset is refused.
pub(crate) fn parse_instant(field: &'static str, v: &str) -> Result<i64, ApiError> {
    OffsetDateTime::parse(v, &Rfc3339).map(|t| t.unix_timestamp()).map_err(|_| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_datetime",
            format!("`{field}` must be RFC 3339 with an offset, e.g. 2026-09-01T14:00:00+02:00"),
        )
        .field(field)
    })
}

/// The `Idempotency-Key` header: absent, or 1-255 printable ASCII characters (else 400 `invalid_idempotency_key`).
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else { return Ok(None) };
    let bytes = v.as_bytes();
    if bytes.is_empty() || bytes.len() > 255 || !bytes.iter().all(|b| (b' '..=b'~').contains(b)) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            "`Idempotency-Key` must be 1 to 255 printable ASCII characters",
        )
        .field("Idempotency-Key"));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// `v` with every object's members sorted by name, recursively (the canonical form that is hashed).
fn canonical(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut members: Vec<(String, Value)> = m.into_iter().collect();
            members.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(members.into_iter().map(|(k, v)| (k, canonical(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(canonical).collect()),
        other => other,
    }
}

/// SHA-256 of the canonical request body: JSON re-serialised with sorted members and no insignificant whitespace
/// (so key order and spacing do not matter); a body that is not JSON is hashed as is.
pub(crate) fn request_hash(body: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => Sha256::digest(canonical(v).to_string().as_bytes()).to_vec(),
        Err(_) => Sha256::digest(body).to_vec(),
    }
}

/// The answer to a request whose `Idempotency-Key` is recorded: the original status and body with
/// `Idempotent-Replayed: true` when the body hashes the same, else 422 `idempotency_key_reuse`.
pub(crate) fn replay(rec: &IdempotencyRecord, hash: &[u8]) -> Result<Response, ApiError> {
    if rec.request_hash != hash {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reuse",
            "this Idempotency-Key was used with another request body",
        )
        .field("Idempotency-Key"));
    }
    let status = u16::try_from(rec.status_code).ok().and_then(|s| StatusCode::from_u16(s).ok());
    let mut resp = (status.unwrap_or(StatusCode::CREATED), rec.response.clone()).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert("idempotent-replayed", HeaderValue::from_static("true"));
    Ok(resp)
}

/// `POST /v1/bookings`, with an optional `Idempotency-Key` (see [`replay`]; kept 24 h per tenant; only a 201 is
/// recorded, so a request refused for bad input may be retried with the same key and a fixed body). Optional
/// `buffer_before_s` / `buffer_after_s` (0-86400, else 422 `invalid_field`) widen the host's blocked interval; a
/// `pending` or `confirmed` booking of the same host `ref` in the tenant whose blocked interval intersects it gets 409
/// `slot_unavailable` (see [`slot_unavailable`]). A host without `ref` is not checked.
#[utoipa::path(
    post,
    path = "/v1/bookings",
    tag = "bookings",
    operation_id = "create_booking",
    security(("bearerAuth" = ["bookings:write"])),
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 255 printable ASCII characters; kept 24 h per tenant. Recommended, not required.", min_length = 1, max_length = 255, pattern = r"^[\x20-\x7E]+$")),
    request_body(content = CreateBooking, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; each participant carries its `link_token` and `join_url` (shown once). A replay with the same `Idempotency-Key` and body answers the original status and body (without the link tokens, `links_shown_once: true`) with `Idempotent-Replayed: true`.", body = BookingView, headers(("Idempotent-Replayed" = String, description = "`true` on a replay of a recorded `Idempotency-Key`."))),
        (status = 400, description = "Malformed JSON, unknown member, wrong type (`invalid_request`, `field` when known); bad `Idempotency-Key` (`invalid_idempotency_key`).", body = ErrorBody),
        (status = 409, description = "`external_id_taken`; `slot_unavailable` (the host `ref` has a pending or confirmed booking whose blocked interval, buffers included, intersects this one; member `conflicting_booking_id` when known); `idempotency_key_in_use` (a request with this key is in progress: retry).", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`).", body = ErrorBody),
        (status = 422, description = "`missing_field`, `invalid_field`, `invalid_datetime`, `invalid_duration`, `start_in_past`, `outside_booking_horizon` (member `latest_start_at`), `invalid_participants`, `idempotency_key_reuse`; `field` names the member.", body = ErrorBody)
    )
)]
pub async fn create_booking(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsWrite).await?;
    let body = body.map_err(body_error)?;
    let idem = idempotency_key(&headers)?;
    let hash = request_hash(&body);
    if let Some(key) = &idem
        && let Some(rec) = state.store.idempotency_record(&tenant, key, unix_now()).await?
    {
        return replay(&rec, &hash);
    }
    let req: CreateBooking = parse_json(&body)?;
    create_checked(&state, tenant, req, idem, hash, BookingOrigin::default()).await
}

/// What a booking made from an event type adds to [`create_checked`]: the event type's id and the guest's note.
#[derive(Debug, Default)]
pub(crate) struct BookingOrigin {
    /// `evt_…`.
    pub event_type_id: Option<String>,
    /// The guest's note.
    pub note: Option<String>,
}

/// The create path of every booking (`POST /v1/bookings` and `POST /v1/event-types/{id}/bookings`): checks `req`
/// (see [`create_booking`] for the errors), inserts the booking with its participants (and the `Idempotency-Key`
/// record of `idem` for the request hashed `hash`) and answers 201 with the link tokens, or replays a concurrent
/// request's answer. The database refuses a double booking (409 `slot_unavailable`).
pub(crate) async fn create_checked(
    state: &AppState,
    tenant: String,
    req: CreateBooking,
    idem: Option<String>,
    hash: Vec<u8>,
    origin: BookingOrigin,
) -> Result<Response, ApiError> {
    check_text("title", &req.title, 200)?;
    if let Some(x) = &req.external_id {
        check_text("external_id", x, 128)?;
    }
    let start = parse_instant("start_at", &req.start_at)?;
    let end = parse_instant("end_at", &req.end_at)?;
    let now = unix_now();
    check_times(state, start, end, now, true)?;
    for (field, v) in [("buffer_before_s", req.buffer_before_s), ("buffer_after_s", req.buffer_after_s)] {
        if !(0..=MAX_BUFFER_S).contains(&v) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                format!("`{field}` must be 0 to {MAX_BUFFER_S} seconds"),
            )
            .field(field));
        }
    }
    let hosts = req.participants.iter().filter(|p| p.role == "host").count();
    let guests = req.participants.iter().filter(|p| p.role == "guest").count();
    if req.participants.len() != 2 || hosts != 1 || guests != 1 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_participants",
            "a booking has exactly one participant with role \"host\" and one with role \"guest\"",
        )
        .field("participants"));
    }
    for (i, p) in req.participants.iter().enumerate() {
        check_text(&format!("participants[{i}].display_name"), &p.display_name, 128)?;
        if let Some(r) = &p.reference {
            check_text(&format!("participants[{i}].ref"), r, 128)?;
        }
        if let Some(e) = &p.email
            && !plausible_email(e)
        {
            return Err(invalid_field(
                &format!("participants[{i}].email"),
                "`email` must look like local@domain.tld, at most 254 characters",
            ));
        }
        if let Some(tz) = &p.time_zone
            && !valid_time_zone(tz)
        {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_time_zone",
                "`time_zone` must be an IANA time zone name, e.g. Europe/Berlin",
            )
            .field(format!("participants[{i}].time_zone")));
        }
        if let Some(l) = &p.locale
            && !plausible_locale(l)
        {
            return Err(invalid_field(
                &format!("participants[{i}].locale"),
                "`locale` must be a BCP 47 language tag, e.g. es or en-GB",
            ));
        }
    }
    match (req.kind, &req.external_url) {
        (BookingKind::Hosted, Some(_)) => {
            return Err(invalid_field("external_url", "`external_url` is only for `kind: \"external_link\"`"));
        }
        (BookingKind::ExternalLink, None) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "missing_field",
                "`external_url` is required for `kind: \"external_link\"`",
            )
            .field("external_url"));
        }
        (BookingKind::ExternalLink, Some(u)) if !valid_external_url(u) => {
            return Err(invalid_field(
                "external_url",
                format!("`external_url` must be an https:// URL of at most {MAX_EXTERNAL_URL} characters"),
            ));
        }
        _ => {}
    }
    if let Some(m) = &req.metadata {
        check_metadata(m)?;
    }
    let join_policy = req.join_policy.unwrap_or_default();
    check_join_policy(&join_policy)?;
    let window = JoinWindow::compute(start, end, &join_policy.apply(&state.policy));
    let mut booking = Booking {
        id: tokens::new_id("bkg"),
        tenant_id: tenant,
        title: req.title,
        external_id: req.external_id,
        start_at: start,
        end_at: end,
        window,
        status: match req.status {
            CreateStatus::Pending => Status::Pending,
            CreateStatus::Confirmed => Status::Confirmed,
        },
        sequence: 0,
        created_at: now,
        updated_at: now,
        buffer_before_s: req.buffer_before_s,
        buffer_after_s: req.buffer_after_s,
        participants: Vec::new(),
        kind: match req.kind {
            BookingKind::Hosted => Kind::Hosted,
            BookingKind::ExternalLink => Kind::ExternalLink,
        },
        external_url: req.external_url,
        metadata: req.metadata.map(|m| m.get().to_string()),
        join_policy,
        max_hard_end_at: window.hard_end_at,
        rescheduled_at: None,
        extended_s: 0,
        event_type_id: origin.event_type_id,
        note: origin.note,
    };
    let mut link_tokens = Vec::new();
    let mut rows = Vec::new();
    let sealer = state.link_sealer();
    for p in req.participants {
        let token = tokens::new_link_token();
        let role = if p.role == "host" { Role::Host } else { Role::Guest };
        let id = tokens::new_id("par");
        let row = NewParticipant {
            link_token_enc: sealer.seal(&id, &token),
            id,
            role,
            reference: p.reference,
            display_name: p.display_name,
            link_token_hash: tokens::link_token_hash(&token),
            email: p.email,
            time_zone: p.time_zone,
            locale: p.locale,
        };
        booking.participants.push(super::store::Participant {
            id: row.id.clone(),
            role,
            reference: row.reference.clone(),
            display_name: row.display_name.clone(),
            first_joined_at: None,
            email: row.email.clone(),
            time_zone: row.time_zone.clone(),
            locale: row.locale.clone(),
            link_epoch: 0,
            link_revoked_at: None,
            link_token_enc: row.link_token_enc.clone(),
        });
        link_tokens.push(token);
        rows.push(row);
    }
    let stored = match &idem {
        None => state.store.create_booking(&booking, &rows).await,
        Some(key) => {
            let mut stored = BookingView::of(&booking, now, None);
            stored.links_shown_once = Some(true);
            let rec = IdempotencyRecord {
                key: key.clone(),
                request_hash: hash.clone(),
                booking_id: booking.id.clone(),
                status_code: i64::from(StatusCode::CREATED.as_u16()),
                response: serde_json::to_string(&stored).map_err(ApiError::internal)?,
                created_at: now,
            };
            match state.store.create_booking_idempotent(&booking, &rows, &rec).await {
                Ok(IdempotentCreate::Existing(rec)) => return replay(&rec, &hash),
                Ok(IdempotentCreate::Created) => {
                    if let Err(e) = state.store.purge_idempotency_keys(now).await {
                        tracing::warn!(target: "booking", error = %e, "purging expired idempotency keys");
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
    };
    match stored {
        Ok(()) => {}
        Err(StoreError::SlotUnavailable) => {
            // Name the booking in the way (the rule is per tenant: it is the caller's own). Best effort: it may
            // have been cancelled since.
            let host = booking.participants.iter().find(|p| p.role == Role::Host).and_then(|p| p.reference.clone());
            let (from, to) = booking.blocked();
            let conflicting = match host {
                Some(h) => {
                    state.store.host_conflict(&booking.tenant_id, &h, from, to, &booking.id).await.ok().flatten()
                }
                None => None,
            };
            return Err(slot_unavailable(conflicting));
        }
        Err(e) => return Err(e.into()),
    }
    state.metrics.bookings.with_label_values(&["created"]).inc();
    tracing::info!(target: "booking", booking = %booking.id, tenant = %booking.tenant_id, start, end,
        status = booking.status.as_str(), node = crate::cluster::node_name(), "booking created");
    let view = BookingView::of(&booking, now, Some((state, &link_tokens)));
    Ok((StatusCode::CREATED, axum::Json(view)).into_response())
}

/// `GET /v1/bookings/{id}`.
#[utoipa::path(
    get,
    path = "/v1/bookings/{id}",
    tag = "bookings",
    operation_id = "get_booking",
    security(("bearerAuth" = ["bookings:read"])),
    params(("id" = String, Path, description = "Booking id, `bkg_…`.")),
    responses(
        (status = 200, description = "The booking.", body = BookingView, headers(("ETag" = String, description = "`\"<sequence>\"`: the `If-Match` of `PATCH`."))),
        (status = 404, description = "No such booking in the caller's tenant (`not_found`).", body = ErrorBody)
    )
)]
pub async fn get_booking(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsRead).await?;
    if !plausible_id(&id) {
        return Err(ApiError::not_found());
    }
    let b = state.store.booking(Some(&tenant), &id).await?.ok_or_else(ApiError::not_found)?;
    Ok(booking_response(StatusCode::OK, &b))
}

/// Runs a status transition for the API: 404 for an unknown booking (or another tenant's), 409 `invalid_transition`
/// (with the current `status`) when `from` does not contain the booking's status, 200 with the booking otherwise
/// (unchanged when it already had status `to`). A change to a revoked status closes the room (4004) and revokes
/// the booking's TURN credentials, tearing down its allocations.
async fn transition(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
    to: Status,
    from: &[Status],
) -> Result<Response, ApiError> {
    let tenant = authenticate(state, headers, Scope::BookingsWrite).await?;
    if !plausible_id(id) {
        return Err(ApiError::not_found());
    }
    let now = unix_now();
    let (b, t) = apply_transition(state, &tenant, id, to, from, now).await?.ok_or_else(ApiError::not_found)?;
    if t == Transition::Refused {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "invalid_transition",
            format!("a {} booking cannot become {}", b.status.as_str(), to.as_str()),
        )
        .with("status", json!(b.status_at(now))));
    }
    Ok(booking_response(StatusCode::OK, &b))
}

/// The status transition of booking `id` of `tenant` (see [`Store::transition`](super::store::Store::transition))
/// with its effects when it happened: the metric, and for a revoked status the room closed (4004) and the booking's
/// TURN credentials revoked. `None` when the tenant has no such booking. Used by the API and by the pages.
pub(crate) async fn apply_transition(
    state: &AppState,
    tenant: &str,
    id: &str,
    to: Status,
    from: &[Status],
    now: i64,
) -> Result<Option<(Booking, Transition)>, ApiError> {
    let Some((b, t)) = state.store.transition(tenant, id, to, from, now).await? else { return Ok(None) };
    if t == Transition::Changed {
        state.metrics.bookings.with_label_values(&[to.as_str()]).inc();
        if to.is_revoked() {
            let until = b.max_hard_end_at.max(b.window.hard_end_at);
            crate::cluster::feed::announce(
                state,
                crate::cluster::feed::FeedEvent::Revoked { booking: b.id.clone(), until },
            )
            .await;
        }
        tracing::info!(target: "booking", booking = %b.id, tenant = %b.tenant_id, status = to.as_str(),
            node = crate::cluster::node_name(), "booking status changed");
    }
    Ok(Some((b, t)))
}

/// `POST /v1/bookings/{id}/confirm`: pending -> confirmed; confirmed -> 200 unchanged; rejected or cancelled -> 409
/// `invalid_transition`.
#[utoipa::path(
    post,
    path = "/v1/bookings/{id}/confirm",
    tag = "bookings",
    operation_id = "confirm_booking",
    security(("bearerAuth" = ["bookings:write"])),
    params(("id" = String, Path, description = "Booking id, `bkg_…`.")),
    responses(
        (status = 200, description = "The booking.", body = BookingView),
        (status = 404, description = "No such booking in the caller's tenant (`not_found`).", body = ErrorBody),
        (status = 409, description = "`invalid_transition` (member `status`: the current one).", body = ErrorBody)
    )
)]
pub async fn confirm_booking(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    transition(&state, &headers, &id, Status::Confirmed, &[Status::Pending]).await
}

/// `POST /v1/bookings/{id}/reject`: pending -> rejected (links answer 410 `booking_rejected`, the room and TURN
/// credentials are revoked as on cancel); rejected -> 200 unchanged; confirmed or cancelled -> 409
/// `invalid_transition`.
#[utoipa::path(
    post,
    path = "/v1/bookings/{id}/reject",
    tag = "bookings",
    operation_id = "reject_booking",
    security(("bearerAuth" = ["bookings:write"])),
    params(("id" = String, Path, description = "Booking id, `bkg_…`.")),
    responses(
        (status = 200, description = "The booking.", body = BookingView),
        (status = 404, description = "No such booking in the caller's tenant (`not_found`).", body = ErrorBody),
        (status = 409, description = "`invalid_transition` (member `status`: the current one).", body = ErrorBody)
    )
)]
pub async fn reject_booking(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    transition(&state, &headers, &id, Status::Rejected, &[Status::Pending]).await
}

/// `POST /v1/bookings/{id}/cancel`: pending or confirmed -> cancelled (idempotent: cancelled -> 200 unchanged;
/// rejected -> 409 `invalid_transition`); closes the room (4004) and revokes the booking's TURN credentials, tearing
/// down its allocations.
#[utoipa::path(
    post,
    path = "/v1/bookings/{id}/cancel",
    tag = "bookings",
    operation_id = "cancel_booking",
    security(("bearerAuth" = ["bookings:write"])),
    params(("id" = String, Path, description = "Booking id, `bkg_…`.")),
    responses(
        (status = 200, description = "The booking.", body = BookingView),
        (status = 404, description = "No such booking in the caller's tenant (`not_found`).", body = ErrorBody),
        (status = 409, description = "`invalid_transition` (member `status`: the current one).", body = ErrorBody)
    )
)]
pub async fn cancel_booking(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    transition(&state, &headers, &id, Status::Cancelled, &[Status::Pending, Status::Confirmed]).await
}

/// Rotates or revokes a participant's link for the API (scope `bookings:write`): 404 `not_found` for an unknown
/// booking (or another tenant's) or participant, else 200 with the participant (and, for a rotation, its new
/// `link_token` and `join_url`, shown once). The participant's live native socket is closed (4001 after a rotation:
/// join again with the new link; 4004 after a revocation) and its session tokens stop verifying (link epoch).
async fn change_link(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
    pid: &str,
    change: LinkChange,
) -> Result<Response, ApiError> {
    let tenant = authenticate(state, headers, Scope::BookingsWrite).await?;
    if !plausible_id(id) || !plausible_id(pid) {
        return Err(ApiError::not_found());
    }
    let token = tokens::new_link_token();
    let now = unix_now();
    let (b, p) = state
        .store
        .set_link(
            &tenant,
            id,
            pid,
            (&tokens::link_token_hash(&token), state.link_sealer().seal(pid, &token).as_deref()),
            change,
            now,
        )
        .await?
        .ok_or_else(ApiError::not_found)?;
    let event = match change {
        LinkChange::Rotate => "link rotated",
        LinkChange::Revoke => "link revoked",
    };
    // The socket closes (4001: join again; 4004), and TURN credentials of the old link stop now, with any media
    // relayed for it, on every node.
    crate::cluster::feed::announce(
        state,
        crate::cluster::feed::FeedEvent::Participant {
            booking: b.id.clone(),
            participant: p.id.clone(),
            epoch: p.link_epoch,
            keep_until: b.max_hard_end_at,
            rotated: change == LinkChange::Rotate,
        },
    )
    .await;
    tracing::info!(target: "booking", booking = %b.id, participant = %p.id, "{event}");
    let index = b.participants.iter().position(|x| x.id == p.id).unwrap_or(0);
    let mut view = BookingView::of(&b, now, None).participants.swap_remove(index);
    if change == LinkChange::Rotate {
        view.join_url = Some(format!("{}/j/{token}", state.public_base));
        view.link_token = Some(token);
    }
    Ok(axum::Json(view).into_response())
}

/// `POST /v1/bookings/{id}/participants/{pid}/link/rotate`: a new link for the participant, shown once in the answer
/// (`link_token`, `join_url`); the old link answers 404 at once, the participant's session tokens stop working and
/// its live socket is closed with 4001. A revoked link is live again after a rotation.
#[utoipa::path(
    post,
    path = "/v1/bookings/{id}/participants/{pid}/link/rotate",
    tag = "bookings",
    operation_id = "rotate_link",
    security(("bearerAuth" = ["bookings:write"])),
    params(
        ("id" = String, Path, description = "Booking id, `bkg_…`."),
        ("pid" = String, Path, description = "Participant id, `par_…`.")
    ),
    responses(
        (status = 200, description = "The participant with its new `link_token` and `join_url` (shown once).", body = ParticipantView),
        (status = 404, description = "No such booking in the caller's tenant, or no such participant in it (`not_found`).", body = ErrorBody),
    )
)]
pub async fn rotate_link(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, pid)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    change_link(&state, &headers, &id, &pid, LinkChange::Rotate).await
}

/// `POST /v1/bookings/{id}/participants/{pid}/link/revoke`: the participant's link answers 404 at once, its session
/// tokens stop working and its live socket is closed with 4004 (idempotent). TURN credentials already handed out are
/// revoked per booking only (cancel): they stay valid until the booking's `hard_end_at`.
#[utoipa::path(
    post,
    path = "/v1/bookings/{id}/participants/{pid}/link/revoke",
    tag = "bookings",
    operation_id = "revoke_link",
    security(("bearerAuth" = ["bookings:write"])),
    params(
        ("id" = String, Path, description = "Booking id, `bkg_…`."),
        ("pid" = String, Path, description = "Participant id, `par_…`.")
    ),
    responses(
        (status = 200, description = "The participant, `link_revoked: true`.", body = ParticipantView),
        (status = 404, description = "No such booking in the caller's tenant, or no such participant in it (`not_found`).", body = ErrorBody),
    )
)]
pub async fn revoke_link(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, pid)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    change_link(&state, &headers, &id, &pid, LinkChange::Revoke).await
}

/// `POST /v1/join/{link_token}`: the link is the capability (no API key). Inside the window: a session token,
/// the signal URL and per-booking ICE servers. Outside: 403 `join_too_early` (+ `Retry-After`), 410
/// `join_window_closed` / `booking_cancelled` / `booking_rejected`; pending booking: 409
/// `booking_pending_confirmation`; unknown link: 404 `link_invalid_or_revoked`.
#[utoipa::path(
    post,
    path = "/v1/join/{link_token}",
    tag = "join",
    operation_id = "join",
    security(()),
    params(("link_token" = String, Path, description = "The link token of a participant's join URL (the capability; no API key).")),
    responses(
        (status = 200, description = "Admitted. A hosted booking: session token, signal URL, ICE servers with TURN credentials (`JoinAnswer`); an external-link booking: `kind: \"external_link\"` and the `external_url` to open, no token, no ICE servers (`ExternalJoinAnswer`).", body = JoinResult),
        (status = 403, description = "`join_too_early` (members `opens_at`, `retry_after`).", body = ErrorBody, headers(("Retry-After" = i64, description = "Seconds until the window opens."))),
        (status = 404, description = "`link_invalid_or_revoked`.", body = ErrorBody),
        (status = 409, description = "`booking_pending_confirmation`.", body = ErrorBody),
        (status = 410, description = "`join_window_closed` (member `closed_at`), `booking_cancelled`, `booking_rejected`.", body = ErrorBody),
        (status = 503, description = "`draining`: the server is shutting down.", body = ErrorBody, headers(("Retry-After" = i64, description = "Seconds.")))
    )
)]
pub async fn join(State(state): State<AppState>, Path(link_token): Path<String>) -> Result<Response, ApiError> {
    let result = join_inner(&state, &link_token).await;
    let outcome = match &result {
        Ok(_) => JoinOutcome::Admitted,
        Err(JoinRefused(outcome, _)) => *outcome,
    };
    state.metrics.join_attempts.with_label_values(&[outcome.label()]).inc();
    result.map_err(|JoinRefused(_, e)| e)
}

/// The outcome of one `POST /v1/join/{link_token}`: the `result` label of `duet_join_attempts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinOutcome {
    /// 200: a session token (or the external URL).
    Admitted,
    /// 403 `join_too_early`.
    TooEarly,
    /// 410 `join_window_closed`.
    Closed,
    /// 410 `booking_cancelled`.
    Cancelled,
    /// 410 `booking_rejected`.
    Rejected,
    /// 409 `booking_pending_confirmation`.
    Pending,
    /// 404 `link_invalid_or_revoked`.
    Invalid,
    /// 503 `draining`.
    Draining,
    /// 500: the store failed.
    Error,
}

impl JoinOutcome {
    /// The metric label: `ok`, `too_early`, `closed`, `cancelled`, `rejected`, `pending`, `invalid`, `draining`,
    /// `error`.
    pub fn label(self) -> &'static str {
        match self {
            JoinOutcome::Admitted => "ok",
            JoinOutcome::TooEarly => "too_early",
            JoinOutcome::Closed => "closed",
            JoinOutcome::Cancelled => "cancelled",
            JoinOutcome::Rejected => "rejected",
            JoinOutcome::Pending => "pending",
            JoinOutcome::Invalid => "invalid",
            JoinOutcome::Draining => "draining",
            JoinOutcome::Error => "error",
        }
    }
}

/// A refused join: its outcome (for the metric) and the answer.
struct JoinRefused(JoinOutcome, ApiError);

impl From<StoreError> for JoinRefused {
    fn from(e: StoreError) -> Self {
        JoinRefused(JoinOutcome::Error, e.into())
    }
}

/// 503 `draining` while the server shuts down.
fn draining(state: &AppState) -> Option<JoinRefused> {
    state.draining.is_cancelled().then(|| {
        let e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "draining", "this server is shutting down; retry")
            .header(header::RETRY_AFTER, HeaderValue::from_static("30"));
        JoinRefused(JoinOutcome::Draining, e)
    })
}

async fn join_inner(state: &AppState, link_token: &str) -> Result<Response, JoinRefused> {
    if let Some(refused) = draining(state) {
        return Err(refused);
    }
    let (b, p) = match by_link_token(state, link_token).await {
        Ok(found) => found,
        Err(e) if e.code == "link_invalid_or_revoked" => return Err(JoinRefused(JoinOutcome::Invalid, e)),
        Err(e) => return Err(JoinRefused(JoinOutcome::Error, e)),
    };
    admit(state, b, p).await
}

/// 404 `link_invalid_or_revoked`: the answer to any unknown, malformed, rotated or revoked link.
pub(crate) fn link_invalid() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "link_invalid_or_revoked", "this join link is not valid")
}

/// The booking and participant a link token belongs to (the capability of every `/v1/join/{link_token}…` route):
/// looked up by its SHA-256; an empty or over-long token, or one nobody holds, is [`link_invalid`].
pub(crate) async fn by_link_token(state: &AppState, link_token: &str) -> Result<(Booking, Participant), ApiError> {
    if link_token.is_empty() || link_token.len() > 128 {
        return Err(link_invalid());
    }
    state.store.by_link(&tokens::link_token_hash(link_token)).await?.ok_or_else(link_invalid)
}

/// The join of participant `p` of booking `b` found by another capability than its link (the host agenda's host
/// secret, `POST /agenda/{secret}/join/{booking_id}`): the same rules, answers and metric as
/// `POST /v1/join/{link_token}`.
pub(crate) async fn join_participant(
    state: &AppState,
    b: Booking,
    p: super::store::Participant,
) -> Result<Response, ApiError> {
    let result = match draining(state) {
        None => admit(state, b, p).await,
        Some(refused) => Err(refused),
    };
    let outcome = match &result {
        Ok(_) => JoinOutcome::Admitted,
        Err(JoinRefused(outcome, _)) => *outcome,
    };
    state.metrics.join_attempts.with_label_values(&[outcome.label()]).inc();
    result.map_err(|JoinRefused(_, e)| e)
}

/// Admits participant `p` of booking `b` (status, then join window): the body of a join answer.
async fn admit(state: &AppState, b: Booking, p: super::store::Participant) -> Result<Response, JoinRefused> {
    let refused = match b.status {
        Status::Cancelled => Some((
            JoinOutcome::Cancelled,
            ApiError::new(StatusCode::GONE, "booking_cancelled", "this meeting was cancelled"),
        )),
        Status::Rejected => Some((
            JoinOutcome::Rejected,
            ApiError::new(StatusCode::GONE, "booking_rejected", "this meeting was rejected"),
        )),
        Status::Pending => Some((
            JoinOutcome::Pending,
            ApiError::new(StatusCode::CONFLICT, "booking_pending_confirmation", "this meeting is not confirmed yet"),
        )),
        Status::Confirmed => None,
    };
    if let Some((outcome, e)) = refused {
        return Err(JoinRefused(outcome, e));
    }
    let now = unix_now();
    match b.window.admit(p.role, now, p.first_joined_at.is_some()) {
        Ok(()) => {}
        Err(JoinRefusal::TooEarly { opens_at }) => {
            let wait = (opens_at - now).max(1);
            let e = ApiError::new(StatusCode::FORBIDDEN, "join_too_early", "the meeting is not open yet")
                .with("opens_at", json!(rfc3339(opens_at)))
                .with("retry_after", json!(wait))
                .header(header::RETRY_AFTER, HeaderValue::from(wait));
            return Err(JoinRefused(JoinOutcome::TooEarly, e));
        }
        Err(JoinRefusal::Closed) => {
            let e = ApiError::new(StatusCode::GONE, "join_window_closed", "the meeting's join window has closed")
                .with("closed_at", json!(rfc3339(b.window.join_cutoff_at.min(b.window.hard_end_at))));
            return Err(JoinRefused(JoinOutcome::Closed, e));
        }
    }
    state.store.mark_joined(&p.id, now).await?;
    if b.kind == Kind::ExternalLink {
        tracing::info!(target: "booking", booking = %b.id, role = p.role.as_str(), "external-link join answered");
        let body = JoinResult::External(ExternalJoinAnswer {
            kind: BookingKind::ExternalLink,
            external_url: b.external_url.clone().unwrap_or_default(),
            role: p.role,
            participant: JoinParticipant { id: p.id.clone(), role: p.role, display_name: p.display_name.clone() },
            booking: JoinBooking {
                id: b.id.clone(),
                title: b.title.clone(),
                start_at: rfc3339(b.start_at),
                end_at: rfc3339(b.end_at),
            },
            window: WindowView::of(&b.window),
        });
        return Ok(axum::Json(body).into_response());
    }
    let exp = (now + state.session_ttl.as_secs() as i64).min(b.window.hard_end_at);
    let claims = SessionClaims {
        iss: tokens::ISSUER.into(),
        aud: tokens::AUDIENCE.into(),
        sub: p.id.clone(),
        jti: uuid::Uuid::new_v4().simple().to_string(),
        iat: now,
        nbf: b.window.opens_for(p.role),
        exp,
        bkg: b.id.clone(),
        role: p.role,
        seq: b.sequence,
        pep: p.link_epoch,
    };
    let session_token = state.session_keys().sign(&claims);
    tracing::info!(target: "booking", booking = %b.id, role = p.role.as_str(), "join admitted");
    let body = JoinAnswer {
        kind: BookingKind::Hosted,
        session_token,
        expires_at: rfc3339(exp),
        signal_url: state.signal_url(),
        ice_servers: ice_server_list(state, &b, &p),
        role: p.role,
        participant: JoinParticipant { id: p.id.clone(), role: p.role, display_name: p.display_name.clone() },
        booking: JoinBooking {
            id: b.id.clone(),
            title: b.title.clone(),
            start_at: rfc3339(b.start_at),
            end_at: rfc3339(b.end_at),
        },
        window: WindowView::of(&b.window),
    };
    Ok(axum::Json(JoinResult::Hosted(body)).into_response())
}

/// The 200 answer of `POST /v1/join/{link_token}`: [`JoinAnswer`] for a hosted booking, [`ExternalJoinAnswer`] for
/// an external-link one.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum JoinResult {
    /// A hosted booking: session token, signal URL, ICE servers.
    Hosted(JoinAnswer),
    /// An external-link booking: the URL to open.
    External(ExternalJoinAnswer),
}

/// The 200 answer of `POST /v1/join/{link_token}` for an `external_link` booking inside its window: the URL to
/// open; no session token, no ICE servers (the booking has no room).
#[derive(Debug, Serialize, ToSchema)]
pub struct ExternalJoinAnswer {
    /// Always `external_link`.
    pub kind: BookingKind,
    /// The booking's https URL (Zoom, Meet, Teams…).
    pub external_url: String,
    /// The caller's role.
    pub role: Role,
    /// The caller.
    pub participant: JoinParticipant,
    /// The booking.
    pub booking: JoinBooking,
    /// The join window.
    pub window: WindowView,
}

/// The 200 answer of `POST /v1/join/{link_token}` for a hosted booking.
#[derive(Debug, Serialize, ToSchema)]
pub struct JoinAnswer {
    /// Always `hosted`.
    pub kind: BookingKind,
    /// Session token (JWT) for `GET /v1/signal?token=`; valid until `expires_at`.
    pub session_token: String,
    /// Expiry of the session token, RFC 3339 UTC (at most the booking's `hard_end_at`).
    pub expires_at: String,
    /// The WebSocket URL of the native signaling endpoint (`ws://…/v1/signal` or `wss://…`).
    pub signal_url: String,
    /// For `RTCPeerConnection`: the STUN entry, then the TURN entry with credentials that expire at `hard_end_at`.
    pub ice_servers: Vec<IceServer>,
    /// The caller's role.
    pub role: Role,
    /// The caller.
    pub participant: JoinParticipant,
    /// The booking.
    pub booking: JoinBooking,
    /// The join window.
    pub window: WindowView,
}

/// The caller in a [`JoinAnswer`].
#[derive(Debug, Serialize, ToSchema)]
pub struct JoinParticipant {
    /// `par_…`.
    pub id: String,
    /// `host` or `guest`.
    pub role: Role,
    /// Display name.
    pub display_name: String,
}

/// The booking in a [`JoinAnswer`].
#[derive(Debug, Serialize, ToSchema)]
pub struct JoinBooking {
    /// `bkg_…`.
    pub id: String,
    /// Title.
    pub title: String,
    /// RFC 3339 UTC.
    pub start_at: String,
    /// RFC 3339 UTC.
    pub end_at: String,
}

/// One entry of `ice_servers` (the WebRTC `RTCIceServer` shape).
#[derive(Debug, Serialize, ToSchema)]
pub struct IceServer {
    /// `stun:` URLs, or `turn:` / `turns:` URLs.
    pub urls: Vec<String>,
    /// TURN REST username `<expiry>:<booking>:<participant>` (TURN entry only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN REST credential, base64 HMAC-SHA1 (TURN entry only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The `ice_servers` array (WebRTC `RTCIceServer` shape) with per-participant TURN REST credentials that expire at
/// the booking's `hard_end_at`.
pub fn ice_servers(state: &AppState, b: &Booking, participant: &Participant) -> Value {
    serde_json::to_value(ice_server_list(state, b, participant)).unwrap_or(Value::Null)
}

/// [`ice_servers`] as typed entries.
pub fn ice_server_list(state: &AppState, b: &Booking, participant: &Participant) -> Vec<IceServer> {
    let secret = state.turn_secret.read().unwrap_or_else(|p| p.into_inner()).clone();
    let (username, credential) =
        tokens::turn_credentials(&secret, b.window.hard_end_at, &b.id, &participant.id, participant.link_epoch);
    let (stun, turn) = &*state.ice_urls;
    vec![
        IceServer { urls: stun.clone(), username: None, credential: None },
        IceServer { urls: turn.clone(), username: Some(username), credential: Some(credential) },
    ]
}

/// Query of `GET /v1/bookings` (unknown parameters are refused with 400 `invalid_request`).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `start_at >= from`, RFC 3339 with an offset.
    pub from: Option<String>,
    /// `start_at < to`, RFC 3339 with an offset.
    pub to: Option<String>,
    /// `pending`, `confirmed` (not ended), `rejected`, `cancelled` or `ended`.
    #[param(inline)]
    pub status: Option<ListStatus>,
    /// A participant has this `ref`.
    pub participant_ref: Option<String>,
    /// The booking's `external_id`.
    pub external_id: Option<String>,
    /// 1-100, default 50.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page (opaque; only valid with the same filters).
    pub cursor: Option<String>,
}

/// The `status` filter of [`ListQuery`].
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ListStatus {
    /// Stored `pending`.
    Pending,
    /// Stored `confirmed`, not ended.
    Confirmed,
    /// Stored `rejected`.
    Rejected,
    /// Stored `cancelled`.
    Cancelled,
    /// Confirmed and past `hard_end_at`.
    Ended,
}

/// A page of `GET /v1/bookings`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BookingPage {
    /// At most `limit` bookings, ordered by `start_at` then `id`.
    pub bookings: Vec<BookingView>,
    /// Pass as `cursor` (with the same filters) for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Default and maximum `limit` of `GET /v1/bookings`.
const LIST_LIMIT: (u32, u32) = (50, 100);

/// What a cursor is bound to: the filters (not `limit`), so a cursor used with other filters is refused.
fn filter_digest(q: &ListQuery) -> String {
    let status = q.status.map(|s| format!("{s:?}"));
    let parts = [
        q.from.as_deref().unwrap_or(""),
        q.to.as_deref().unwrap_or(""),
        status.as_deref().unwrap_or(""),
        q.participant_ref.as_deref().unwrap_or(""),
        q.external_id.as_deref().unwrap_or(""),
    ];
    let d = Sha256::digest(serde_json::to_string(&parts).unwrap_or_default().as_bytes());
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

const CURSOR_TAG: &[u8] = b"duet-cursor-v1";

/// An opaque cursor: base64url of `<start_at>:<filters>:<id>` and 8 bytes of SHA-256 over it (any change is caught;
/// it only holds a position in the caller's own tenant, so there is nothing to forge).
fn encode_cursor(start: i64, id: &str, filters: &str) -> String {
    let payload = format!("{start}:{filters}:{id}");
    let mut bytes = payload.clone().into_bytes();
    bytes.extend_from_slice(&Sha256::new().chain_update(CURSOR_TAG).chain_update(payload.as_bytes()).finalize()[..8]);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The `(start_at, id)` of a cursor made by [`encode_cursor`] for the same filters; else 400 `invalid_cursor`.
fn decode_cursor(cursor: &str, filters: &str) -> Result<(i64, String), ApiError> {
    let invalid = || {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_cursor", "`cursor` is not a cursor of this query")
            .field("cursor")
    };
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    if bytes.len() <= 8 {
        return Err(invalid());
    }
    let (payload, sum) = bytes.split_at(bytes.len() - 8);
    if Sha256::new().chain_update(CURSOR_TAG).chain_update(payload).finalize()[..8] != *sum {
        return Err(invalid());
    }
    let text = std::str::from_utf8(payload).map_err(|_| invalid())?;
    let mut it = text.splitn(3, ':');
    let (Some(start), Some(f), Some(id)) = (it.next(), it.next(), it.next()) else { return Err(invalid()) };
    if f != filters {
        return Err(invalid());
    }
    Ok((start.parse().map_err(|_| invalid())?, id.to_string()))
}

/// `GET /v1/bookings`: the caller's tenant's bookings, filtered, ordered by `start_at` then `id`, paged by an opaque
/// cursor. Errors: 400 `invalid_request` (unknown parameter, bad `status` or `limit` type), 422 `invalid_field`
/// (`limit` outside 1-100), 422 `invalid_datetime` (`from`, `to`), 400 `invalid_cursor`.
#[utoipa::path(
    get,
    path = "/v1/bookings",
    tag = "bookings",
    operation_id = "list_bookings",
    security(("bearerAuth" = ["bookings:read"])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page of bookings.", body = BookingPage),
        (status = 400, description = "`invalid_request` (unknown parameter, bad `status` or `limit` type), `invalid_cursor`.", body = ErrorBody),
        (status = 422, description = "`invalid_field` (`limit` outside 1-100, a filter with control characters), `invalid_datetime` (`from`, `to`).", body = ErrorBody)
    )
)]
pub async fn list_bookings(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsRead).await?;
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e.body_text()))?;
    let limit = q.limit.unwrap_or(LIST_LIMIT.0);
    if !(1..=LIST_LIMIT.1).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            format!("`limit` must be 1 to {}", LIST_LIMIT.1),
        )
        .field("limit"));
    }
    for (field, v) in [("participant_ref", &q.participant_ref), ("external_id", &q.external_id)] {
        if let Some(v) = v
            && (v.chars().count() > 128 || v.chars().any(char::is_control))
        {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                format!("`{field}` must be at most 128 characters without control characters"),
            )
            .field(field));
        }
    }
    let filters = filter_digest(&q);
    let now = unix_now();
    let f = ListFilter {
        from: q.from.as_deref().map(|v| parse_instant("from", v)).transpose()?,
        to: q.to.as_deref().map(|v| parse_instant("to", v)).transpose()?,
        status: q.status.map(|s| match s {
            ListStatus::Pending => StatusFilter::Pending,
            ListStatus::Confirmed => StatusFilter::Confirmed,
            ListStatus::Rejected => StatusFilter::Rejected,
            ListStatus::Cancelled => StatusFilter::Cancelled,
            ListStatus::Ended => StatusFilter::Ended,
        }),
        participant_ref: q.participant_ref.clone(),
        external_id: q.external_id.clone(),
        after: q.cursor.as_deref().map(|c| decode_cursor(c, &filters)).transpose()?,
        limit: limit + 1,
        now,
    };
    let mut rows = state.store.list(&tenant, &f).await?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|b| encode_cursor(b.start_at, &b.id, &filters))
    } else {
        None
    };
    let page = BookingPage { bookings: rows.iter().map(|b| BookingView::of(b, now, None)).collect(), next_cursor };
    Ok(axum::Json(page).into_response())
}

/// Fallback: 404 JSON.
pub async fn fallback() -> ApiError {
    ApiError::not_found()
}
