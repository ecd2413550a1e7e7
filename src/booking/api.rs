//! The REST API (`/v1/`, JSON). Every error is an HTTP status with a JSON body `{"error": <code>, "message": …,
//! "field"?: <name>}` (research/booking.md §7.7 is the contract for bad input).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::store::{Booking, NewParticipant, Status, StoreError};
use super::tokens::{self, SessionClaims};
use super::window::{JoinRefusal, JoinWindow, Role};
use crate::api_key::Scope;
use crate::app::{AppState, unix_now};

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
            StoreError::Db(e) => ApiError::internal(e),
        }
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

/// `window` JSON object of a booking.
pub fn window_json(w: &JoinWindow) -> Value {
    json!({
        "host_opens_at": rfc3339(w.host_opens_at),
        "opens_at": rfc3339(w.opens_at),
        "join_cutoff_at": rfc3339(w.join_cutoff_at),
        "hard_end_at": rfc3339(w.hard_end_at),
    })
}

fn booking_json(b: &Booking, links: Option<(&AppState, &[String])>) -> Value {
    let participants: Vec<Value> = b
        .participants
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut v = json!({
                "id": p.id, "ref": p.reference, "role": p.role, "display_name": p.display_name,
                "joined": p.first_joined_at.is_some(),
            });
            if let Some((state, tokens)) = links
                && let Some(t) = tokens.get(i)
            {
                v["link_token"] = json!(t);
                v["join_url"] = json!(format!("{}/j/{t}", state.public_base));
            }
            v
        })
        .collect();
    json!({
        "id": b.id,
        "status": b.status.as_str(),
        "sequence": b.sequence,
        "title": b.title,
        "external_id": b.external_id,
        "start_at": rfc3339(b.start_at),
        "end_at": rfc3339(b.end_at),
        "window": window_json(&b.window),
        "participants": participants,
        "created_at": rfc3339(b.created_at),
        "updated_at": rfc3339(b.updated_at),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBooking {
    title: String,
    start_at: String,
    end_at: String,
    #[serde(default)]
    external_id: Option<String>,
    participants: Vec<CreateParticipant>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateParticipant {
    #[serde(default, rename = "ref")]
    reference: Option<String>,
    role: String,
    display_name: String,
}

/// Text a person typed: 1..=max characters, no control characters.
fn check_text(field: &str, v: &str, max: usize) -> Result<(), ApiError> {
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

/// `POST /v1/bookings`.
pub async fn create_booking(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsWrite).await?;
    let body = body.map_err(body_error)?;
    let req: CreateBooking = parse_json(&body)?;
    check_text("title", &req.title, 200)?;
    if let Some(x) = &req.external_id {
        check_text("external_id", x, 128)?;
    }
    let start = parse_instant("start_at", &req.start_at)?;
    let end = parse_instant("end_at", &req.end_at)?;
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
    let now = unix_now();
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
    }
    let window = JoinWindow::compute(start, end, &state.policy);
    let mut booking = Booking {
        id: tokens::new_id("bkg"),
        tenant_id: tenant,
        title: req.title,
        external_id: req.external_id,
        start_at: start,
        end_at: end,
        window,
        status: Status::Confirmed,
        sequence: 0,
        created_at: now,
        updated_at: now,
        participants: Vec::new(),
    };
    let mut link_tokens = Vec::new();
    let mut rows = Vec::new();
    for p in req.participants {
        let token = tokens::new_link_token();
        let role = if p.role == "host" { Role::Host } else { Role::Guest };
        let row = NewParticipant {
            id: tokens::new_id("par"),
            role,
            reference: p.reference,
            display_name: p.display_name,
            link_token_hash: tokens::link_token_hash(&token),
        };
        booking.participants.push(super::store::Participant {
            id: row.id.clone(),
            role,
            reference: row.reference.clone(),
            display_name: row.display_name.clone(),
            first_joined_at: None,
        });
        link_tokens.push(token);
        rows.push(row);
    }
    state.store.create_booking(&booking, &rows).await?;
    state.metrics.bookings.with_label_values(&["created"]).inc();
    tracing::info!(target: "booking", booking = %booking.id, start, end, "booking created");
    let body = booking_json(&booking, Some((&state, &link_tokens)));
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

/// `GET /v1/bookings/{id}`.
pub async fn get_booking(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsRead).await?;
    let b = state.store.booking(Some(&tenant), &id).await?.ok_or_else(ApiError::not_found)?;
    Ok(axum::Json(booking_json(&b, None)).into_response())
}

/// `POST /v1/bookings/{id}/cancel`: idempotent; closes the room (4004) and revokes the booking's TURN credentials,
/// tearing down its allocations.
pub async fn cancel_booking(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsWrite).await?;
    let (b, changed) = state.store.cancel(&tenant, &id, unix_now()).await?.ok_or_else(ApiError::not_found)?;
    if changed {
        state.metrics.bookings.with_label_values(&["cancelled"]).inc();
        state.hub.cancel_booking(&b.id);
        state.relay.revoke_booking(&b.id, b.window.hard_end_at);
        tracing::info!(target: "booking", booking = %b.id, "booking cancelled");
    }
    Ok(axum::Json(booking_json(&b, None)).into_response())
}

/// `POST /v1/join/{link_token}`: the link is the capability (no API key). Inside the window: a session token,
/// the signal URL and per-booking ICE servers. Outside: 403 `join_too_early` (+ `Retry-After`), 410
/// `join_window_closed` / `booking_cancelled`; unknown link: 404 `link_invalid_or_revoked`.
pub async fn join(State(state): State<AppState>, Path(link_token): Path<String>) -> Result<Response, ApiError> {
    let result = join_inner(&state, &link_token).await;
    let label = match &result {
        Ok(_) => "ok",
        Err(e) => match e.code {
            "join_too_early" => "too_early",
            "join_window_closed" => "closed",
            "booking_cancelled" => "cancelled",
            "link_invalid_or_revoked" => "invalid",
            "draining" => "draining",
            _ => "error",
        },
    };
    state.metrics.join_attempts.with_label_values(&[label]).inc();
    result
}

async fn join_inner(state: &AppState, link_token: &str) -> Result<Response, ApiError> {
    if state.draining.is_cancelled() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "draining", "this server is shutting down; retry")
            .header(header::RETRY_AFTER, HeaderValue::from_static("30")));
    }
    let invalid = || ApiError::new(StatusCode::NOT_FOUND, "link_invalid_or_revoked", "this join link is not valid");
    if link_token.is_empty() || link_token.len() > 128 {
        return Err(invalid());
    }
    let (b, p) = state.store.by_link(&tokens::link_token_hash(link_token)).await?.ok_or_else(invalid)?;
    if b.status == Status::Cancelled {
        return Err(ApiError::new(StatusCode::GONE, "booking_cancelled", "this meeting was cancelled"));
    }
    let now = unix_now();
    match b.window.admit(p.role, now, p.first_joined_at.is_some()) {
        Ok(()) => {}
        Err(JoinRefusal::TooEarly { opens_at }) => {
            let wait = (opens_at - now).max(1);
            return Err(ApiError::new(StatusCode::FORBIDDEN, "join_too_early", "the meeting is not open yet")
                .with("opens_at", json!(rfc3339(opens_at)))
                .with("retry_after", json!(wait))
                .header(header::RETRY_AFTER, HeaderValue::from(wait)));
        }
        Err(JoinRefusal::Closed) => {
            return Err(ApiError::new(StatusCode::GONE, "join_window_closed", "the meeting's join window has closed")
                .with("closed_at", json!(rfc3339(b.window.join_cutoff_at.min(b.window.hard_end_at)))));
        }
    }
    state.store.mark_joined(&p.id, now).await?;
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
    };
    let session_token = state.session_keys().sign(&claims);
    tracing::info!(target: "booking", booking = %b.id, role = p.role.as_str(), "join admitted");
    let body = json!({
        "session_token": session_token,
        "expires_at": rfc3339(exp),
        "signal_url": state.signal_url(),
        "ice_servers": ice_servers(state, &b, &p.id),
        "role": p.role,
        "participant": {"id": p.id, "role": p.role, "display_name": p.display_name},
        "booking": {"id": b.id, "title": b.title, "start_at": rfc3339(b.start_at), "end_at": rfc3339(b.end_at)},
        "window": window_json(&b.window),
    });
    Ok(axum::Json(body).into_response())
}

/// The `ice_servers` array (WebRTC `RTCIceServer` shape) with per-participant TURN REST credentials that expire at
/// the booking's `hard_end_at`.
pub fn ice_servers(state: &AppState, b: &Booking, participant: &str) -> Value {
    let secret = state.turn_secret.read().unwrap_or_else(|p| p.into_inner()).clone();
    let (username, credential) = tokens::turn_credentials(&secret, b.window.hard_end_at, &b.id, participant);
    let (stun, turn) = &*state.ice_urls;
    json!([
        {"urls": stun},
        {"urls": turn, "username": username, "credential": credential},
    ])
}

/// Fallback: 404 JSON.
pub async fn fallback() -> ApiError {
    ApiError::not_found()
}
