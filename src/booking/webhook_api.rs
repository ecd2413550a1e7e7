//! `/v1/webhook-endpoints` and `/v1/webhook-deliveries`: a tenant's webhook endpoints, their delivery log,
//! redeliver and a test ping. Every operation needs the scope `bookings:write` (an endpoint receives every booking of
//! the tenant, and its secret is shown on create and rotation). Another tenant's endpoint or delivery is 404.
//! Errors are the JSON errors of [`super::api`].
//!
//! | route | body | answer |
//! |---|---|---|
//! | `POST /v1/webhook-endpoints` | [`CreateEndpoint`] | 201 [`CreatedEndpoint`] (the secret, shown once) |
//! | `GET /v1/webhook-endpoints` | | 200 [`EndpointList`] |
//! | `GET /v1/webhook-endpoints/{id}` | | 200 [`EndpointView`] |
//! | `PATCH /v1/webhook-endpoints/{id}` | [`UpdateEndpoint`] | 200 [`EndpointView`] |
//! | `DELETE /v1/webhook-endpoints/{id}` | | 204 |
//! | `POST /v1/webhook-endpoints/{id}/rotate-secret` | | 200 [`CreatedEndpoint`] (the new secret, shown once) |
//! | `POST /v1/webhook-endpoints/{id}/test` | | 202 [`DeliveryView`] (a `webhook.test` event) |
//! | `GET /v1/webhook-endpoints/{id}/deliveries` | | 200 [`DeliveryPage`] (newest first, with attempts) |
//! | `POST /v1/webhook-deliveries/{id}/redeliver` | | 202 [`DeliveryView`] |

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::api::{ApiError, authenticate, body_error, parse_json, plausible_id, rfc3339};
use super::tokens;
use super::webhook_delivery::SsrfGuard;
use super::webhooks::{self, Attempt, Delivery, EVENT_TYPES, Endpoint, Redeliver};
use crate::api_key::Scope;
use crate::app::{AppState, unix_now};
use crate::openapi::ErrorBody;

/// Longest endpoint URL.
pub const MAX_URL: usize = 2048;
/// Longest description.
pub const MAX_DESCRIPTION: usize = 256;

/// `POST /v1/webhook-endpoints` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    /// `https://…` (at most 2048 characters) whose host does not resolve to a private, loopback, link-local,
    /// unspecified, multicast, CGNAT or unique-local address; `http://` and such addresses only inside
    /// `[webhooks] allow_private`.
    pub url: String,
    /// A note for people, at most 256 characters.
    #[serde(default)]
    pub description: Option<String>,
    /// The event types to receive (e.g. `["booking.created", "booking.cancelled"]`); absent or null: every event.
    #[serde(default)]
    pub event_types: Option<Vec<String>>,
    /// Default true. A disabled endpoint gets no new events; its pending deliveries wait until it is enabled.
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// Absent member -> `None`; present (null or a value) -> `Some(…)`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

/// `PATCH /v1/webhook-endpoints/{id}` body: the members to change (absent: unchanged).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEndpoint {
    /// As on create; checked again.
    #[serde(default)]
    pub url: Option<String>,
    /// A note, or null to clear it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    /// The event types, or null for every event.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>)]
    pub event_types: Option<Option<Vec<String>>>,
    /// Enable or disable.
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// A webhook endpoint as the API shows it (never its secret, except in [`CreatedEndpoint`]).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = WebhookEndpoint)]
pub struct EndpointView {
    /// `whe_…`.
    pub id: String,
    /// Where events are POSTed.
    pub url: String,
    /// The note, or null.
    pub description: Option<String>,
    /// The event types it receives; null: every event.
    pub event_types: Option<Vec<String>>,
    /// Whether it gets new events.
    pub enabled: bool,
    /// While a rotation's previous secret still signs (a second `v1,` signature): until then, RFC 3339 UTC.
    pub previous_secret_expires_at: Option<String>,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// RFC 3339 UTC.
    pub updated_at: String,
}

impl EndpointView {
    /// The view of `e` at `now` (Unix seconds).
    pub fn of(e: &Endpoint, now: i64) -> EndpointView {
        EndpointView {
            id: e.id.clone(),
            url: e.url.clone(),
            description: e.description.clone(),
            event_types: e.event_types.clone(),
            enabled: e.enabled,
            previous_secret_expires_at: e.previous_secret_expires_at.filter(|t| *t > now).map(rfc3339),
            created_at: rfc3339(e.created_at),
            updated_at: rfc3339(e.updated_at),
        }
    }
}

/// An endpoint with its signing secret: the answer of create and rotate-secret, the only times the secret is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedEndpoint {
    /// The endpoint.
    #[serde(flatten)]
    pub view: EndpointView,
    /// `whsec_<base64 of 32 bytes>`: the Standard Webhooks signing secret (verify `webhook-signature` with it).
    pub secret: String,
}

/// `GET /v1/webhook-endpoints` answer, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointList {
    /// The tenant's endpoints.
    pub webhook_endpoints: Vec<EndpointView>,
}

/// One logged attempt of a delivery.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = WebhookAttempt)]
pub struct AttemptView {
    /// 1, 2, …
    pub attempt: i64,
    /// Start of the attempt, RFC 3339 UTC.
    pub attempted_at: String,
    /// The receiver's HTTP status, or null when no answer came.
    pub status_code: Option<i64>,
    /// Why it failed (`HTTP 503`, `timeout after 10 s`, `connect: …`, an SSRF guard refusal); null for a 2xx.
    pub error: Option<String>,
    /// Milliseconds from the start to the answer's headers or the failure.
    pub duration_ms: i64,
}

/// The status of a delivery.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Waiting for its next attempt (`next_attempt_at`).
    Pending,
    /// An attempt is under way.
    Sending,
    /// A 2xx answer came.
    Delivered,
    /// The retry schedule is used up.
    Failed,
}

/// One event for one endpoint, with its attempts.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = WebhookDelivery)]
pub struct DeliveryView {
    /// `whd_…` (for redeliver).
    pub id: String,
    /// The `webhook-id` header: one per event, the same on every attempt and redelivery.
    pub webhook_id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// E.g. `booking.created`, `webhook.test`.
    pub event_type: String,
    /// `pending`, `sending`, `delivered` or `failed`.
    #[schema(value_type = DeliveryState)]
    pub status: &'static str,
    /// Attempts so far.
    pub attempts: i64,
    /// When the next attempt is due (pending only), RFC 3339 UTC.
    pub next_attempt_at: Option<String>,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// When it was delivered or failed, RFC 3339 UTC.
    pub finished_at: Option<String>,
    /// The attempts, oldest first.
    pub attempt_log: Vec<AttemptView>,
}

impl DeliveryView {
    /// The view of `d` with its attempts.
    pub fn of(d: &Delivery, attempts: &[Attempt]) -> DeliveryView {
        DeliveryView {
            id: d.id.clone(),
            webhook_id: d.message_id.clone(),
            endpoint_id: d.endpoint_id.clone(),
            event_type: d.event_type.clone(),
            status: d.status.as_str(),
            attempts: d.attempts,
            next_attempt_at: (d.status == webhooks::DeliveryStatus::Pending)
                .then(|| rfc3339(d.next_attempt_ms.div_euclid(1000))),
            created_at: rfc3339(d.created_at),
            finished_at: d.finished_at.map(rfc3339),
            attempt_log: attempts
                .iter()
                .map(|a| AttemptView {
                    attempt: a.attempt,
                    attempted_at: rfc3339(a.attempted_at_ms.div_euclid(1000)),
                    status_code: a.status_code,
                    error: a.error.clone(),
                    duration_ms: a.duration_ms,
                })
                .collect(),
        }
    }
}

/// A page of the delivery log.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryPage {
    /// At most `limit` deliveries, newest first.
    pub deliveries: Vec<DeliveryView>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Query of `GET /v1/webhook-endpoints/{id}/deliveries`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeliveryQuery {
    /// 1-100, default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page (opaque).
    pub cursor: Option<String>,
}

fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message).field(field)
}

/// Checks an endpoint URL: length, syntax, scheme and the SSRF guard on what its host resolves to now.
async fn check_url(state: &AppState, url: &str) -> Result<(), ApiError> {
    if url.len() > MAX_URL {
        return Err(invalid_field("url", format!("`url` must be at most {MAX_URL} characters")));
    }
    let parsed = url::Url::parse(url).map_err(|e| invalid_field("url", format!("`url` is not a URL: {e}")))?;
    if parsed.host().is_none() {
        return Err(invalid_field("url", "`url` must name a host"));
    }
    SsrfGuard::new(&state.webhooks.allow_private)
        .check_url(&parsed)
        .await
        .map_err(|r| invalid_field("url", format!("`url`: {r}")))
}

fn check_description(d: &Option<String>) -> Result<(), ApiError> {
    if let Some(d) = d
        && (d.chars().count() > MAX_DESCRIPTION || d.chars().any(char::is_control))
    {
        return Err(invalid_field(
            "description",
            format!("`description` must be at most {MAX_DESCRIPTION} characters without control characters"),
        ));
    }
    Ok(())
}

/// Checks and normalises an event-type filter: at least one known event type, duplicates dropped, in the given order.
fn check_event_types(types: Option<Vec<String>>) -> Result<Option<Vec<String>>, ApiError> {
    let Some(types) = types else { return Ok(None) };
    if types.is_empty() {
        return Err(invalid_field("event_types", "`event_types` needs at least one event type (null: every event)"));
    }
    let mut out: Vec<String> = Vec::new();
    for (i, t) in types.into_iter().enumerate() {
        if !EVENT_TYPES.contains(&t.as_str()) {
            return Err(invalid_field(
                format!("event_types[{i}]"),
                format!("unknown event type; one of {}", EVENT_TYPES.join(", ")),
            ));
        }
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(Some(out))
}

/// The endpoint `id` of `tenant`, or 404.
async fn endpoint_of(state: &AppState, tenant: &str, id: &str) -> Result<Endpoint, ApiError> {
    if !plausible_id(id) {
        return Err(ApiError::not_found());
    }
    state.store.webhook_endpoint(tenant, id).await?.ok_or_else(ApiError::not_found)
}

/// `POST /v1/webhook-endpoints`: creates an endpoint; the answer carries its signing secret, shown this once.
#[utoipa::path(
    post,
    path = "/v1/webhook-endpoints",
    tag = "webhooks",
    operation_id = "create_webhook_endpoint",
    security(("bearerAuth" = ["bookings:write"])),
    request_body(content = CreateEndpoint, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; `secret` is shown this once.", body = CreatedEndpoint),
        (status = 400, description = "Malformed JSON, unknown member, wrong type (`invalid_request`).", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`).", body = ErrorBody),
        (status = 422, description = "`missing_field`; `invalid_field` (`url`: not a URL, not https, or resolves to a refused address; `description`; `event_types[i]`).", body = ErrorBody)
    )
)]
pub async fn create_endpoint(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsWrite).await?;
    let req: CreateEndpoint = parse_json(&body.map_err(body_error)?)?;
    check_description(&req.description)?;
    let event_types = check_event_types(req.event_types)?;
    check_url(&state, &req.url).await?;
    let now = unix_now();
    let e = Endpoint {
        id: tokens::new_id("whe"),
        tenant_id: tenant,
        url: req.url,
        description: req.description,
        event_types,
        enabled: req.enabled.unwrap_or(true),
        secret: webhooks::new_secret(),
        previous_secret: None,
        previous_secret_expires_at: None,
        created_at: now,
        updated_at: now,
    };
    state.store.create_webhook_endpoint(&e).await?;
    tracing::info!(target: "booking", endpoint = %e.id, "webhook endpoint created");
    let created = CreatedEndpoint { view: EndpointView::of(&e, now), secret: e.secret.clone() };
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

/// `GET /v1/webhook-endpoints`: the caller's tenant's endpoints, oldest first.
#[utoipa::path(
    get,
    path = "/v1/webhook-endpoints",
    tag = "webhooks",
    operation_id = "list_webhook_endpoints",
    security(("bearerAuth" = ["bookings:write"])),
    responses((status = 200, description = "The endpoints (without secrets).", body = EndpointList))
)]
pub async fn list_endpoints(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsWrite).await?;
    let now = unix_now();
    let list = state.store.webhook_endpoints(&tenant).await?;
    Ok(axum::Json(EndpointList { webhook_endpoints: list.iter().map(|e| EndpointView::of(e, now)).collect() })
        .into_response())
}

/// `GET /v1/webhook-endpoints/{id}`.
#[utoipa::path(
    get,
    path = "/v1/webhook-endpoints/{id}",
    tag = "webhooks",
    operation_id = "get_webhook_endpoint",
    security(("bearerAuth" = ["bookings:write"])),
    params(("id" = String, Path, description = "Endpoint id, `whe_…`.")),
    responses(
        (status = 200, description = "The endpoint (without its secret).", body = EndpointView),
        (status = 404, description = "No such endpoint in the caller's tenant (`not_found`).", body = ErrorBody)
    )
)]
pub async fn get_endpoint(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsWrite).await?;
    let e = endpoint_of(&state, &tenant, &id).await?;
    Ok(axum::Json(EndpointView::of(&e, unix_now())).into_response())
}

/// `PATCH /v1/webhook-endpoints/{id}`: changes the members sent.
#[utoipa::path(
    patch,
    path = "/v1/webhook-endpoints/{id}",
    tag = "webhooks",
    operation_id = "update_webhook_endpoint",
    security(("bearerAuth" = ["bookings:write"])),
    params(("id" = String, Path, description = "Endpoint id, `whe_…`.")),
    request_body(content = UpdateEndpoint, content_type = "application/json"),
    responses(
        (status = 200, description = "The endpoint after the change.", body = EndpointView),
        (status = 400, description = "Malformed JSON, unknown member, wrong type (`invalid_request`).", body = ErrorBody),
        (status = 404, description = "No such endpoint in the caller's tenant (`not_found`).", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`).", body = ErrorBody),
        (status = 422, description = "`invalid_field` (`url`, `description`, `event_types[i]`).", body = ErrorBody)
    )
)]
pub async fn update_endpoint(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsWrite).await?;
    let mut e = endpoint_of(&state, &tenant, &id).await?;
    let req: UpdateEndpoint = parse_json(&body.map_err(body_error)?)?;
    if let Some(d) = req.description {
        check_description(&d)?;
        e.description = d;
    }
    if let Some(t) = req.event_types {
        e.event_types = check_event_types(t)?;
    }
    if let Some(u) = req.url {
        check_url(&state, &u).await?;
        e.url = u;
    }
    if let Some(enabled) = req.enabled {
        e.enabled = enabled;
    }
    e.updated_at = unix_now();
    if !state.store.update_webhook_endpoint(&e).await? {
        return Err(ApiError::not_found());
    }
    Ok(axum::Json(EndpointView::of(&e, e.updated_at)).into_response())
}

/// `DELETE /v1/webhook-endpoints/{id}`: deletes the endpoint with its deliveries (pending ones are never sent).
#[utoipa::path(
    delete,
    path = "/v1/webhook-endpoints/{id}",
    tag = "webhooks",
    operation_id = "delete_webhook_endpoint",
    security(("bearerAuth" = ["bookings:write"])),
    params(("id" = String, Path, description = "Endpoint id, `whe_…`.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "No such endpoint in the caller's tenant (`not_found`).", body = ErrorBody)
    )
)]
pub async fn delete_endpoint(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsWrite).await?;
    if !plausible_id(&id) || !state.store.delete_webhook_endpoint(&tenant, &id).await? {
        return Err(ApiError::not_found());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/webhook-endpoints/{id}/rotate-secret`: a new secret (shown this once); the previous one keeps signing
/// beside it for `[webhooks] rotation_overlap` (default 24 h), so requests carry two `v1,` signatures meanwhile.
#[utoipa::path(
    post,
    path = "/v1/webhook-endpoints/{id}/rotate-secret",
    tag = "webhooks",
    operation_id = "rotate_webhook_secret",
    security(("bearerAuth" = ["bookings:write"])),
    params(("id" = String, Path, description = "Endpoint id, `whe_…`.")),
    responses(
        (status = 200, description = "The endpoint with its new `secret` (shown this once) and `previous_secret_expires_at`.", body = CreatedEndpoint),
        (status = 404, description = "No such endpoint in the caller's tenant (`not_found`).", body = ErrorBody)
    )
)]
pub async fn rotate_secret(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsWrite).await?;
    if !plausible_id(&id) {
        return Err(ApiError::not_found());
    }
    let now = unix_now();
    let until = now.saturating_add(state.webhooks.rotation_overlap.as_secs() as i64);
    let secret = webhooks::new_secret();
    let e =
        state.store.rotate_webhook_secret(&tenant, &id, &secret, until, now).await?.ok_or_else(ApiError::not_found)?;
    tracing::info!(target: "booking", endpoint = %e.id, "webhook secret rotated");
    Ok(axum::Json(CreatedEndpoint { view: EndpointView::of(&e, now), secret }).into_response())
}

/// `POST /v1/webhook-endpoints/{id}/test`: queues a `webhook.test` event for this endpoint (whatever its filter)
/// through the outbox, as any event.
#[utoipa::path(
    post,
    path = "/v1/webhook-endpoints/{id}/test",
    tag = "webhooks",
    operation_id = "test_webhook_endpoint",
    security(("bearerAuth" = ["bookings:write"])),
    params(("id" = String, Path, description = "Endpoint id, `whe_…`.")),
    responses(
        (status = 202, description = "Queued; follow it in the delivery log.", body = DeliveryView),
        (status = 404, description = "No such endpoint in the caller's tenant (`not_found`).", body = ErrorBody),
        (status = 409, description = "`endpoint_disabled`: enable it first.", body = ErrorBody)
    )
)]
pub async fn test_endpoint(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsWrite).await?;
    let e = endpoint_of(&state, &tenant, &id).await?;
    if !e.enabled {
        return Err(ApiError::new(StatusCode::CONFLICT, "endpoint_disabled", "the endpoint is disabled"));
    }
    let d = state.store.enqueue_test_event(&e, unix_now()).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(DeliveryView::of(&d, &[]))).into_response())
}

/// An opaque cursor: base64url of `<created_at>:<id>`.
fn encode_cursor(created_at: i64, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{created_at}:{id}"))
}

fn decode_cursor(c: &str) -> Result<(i64, String), ApiError> {
    let invalid = || {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_cursor", "`cursor` is not a cursor of this log").field("cursor")
    };
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(c).map_err(|_| invalid())?).map_err(|_| invalid())?;
    let (at, id) = text.split_once(':').ok_or_else(invalid)?;
    if !plausible_id(id) {
        return Err(invalid());
    }
    Ok((at.parse().map_err(|_| invalid())?, id.to_string()))
}

/// `GET /v1/webhook-endpoints/{id}/deliveries`: the delivery log, newest first, each delivery with its attempts.
#[utoipa::path(
    get,
    path = "/v1/webhook-endpoints/{id}/deliveries",
    tag = "webhooks",
    operation_id = "list_webhook_deliveries",
    security(("bearerAuth" = ["bookings:write"])),
    params(("id" = String, Path, description = "Endpoint id, `whe_…`."), DeliveryQuery),
    responses(
        (status = 200, description = "A page of the log.", body = DeliveryPage),
        (status = 400, description = "`invalid_request` (unknown parameter, bad `limit` type), `invalid_cursor`.", body = ErrorBody),
        (status = 404, description = "No such endpoint in the caller's tenant (`not_found`).", body = ErrorBody),
        (status = 422, description = "`invalid_field` (`limit` outside 1-100).", body = ErrorBody)
    )
)]
pub async fn list_deliveries(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<DeliveryQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsWrite).await?;
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e.body_text()))?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(invalid_field("limit", "`limit` must be 1 to 100"));
    }
    let before = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let e = endpoint_of(&state, &tenant, &id).await?;
    let mut rows = state
        .store
        .webhook_deliveries(&tenant, &e.id, before.as_ref().map(|(t, i)| (*t, i.as_str())), limit + 1)
        .await?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|(d, _)| encode_cursor(d.created_at, &d.id))
    } else {
        None
    };
    let page = DeliveryPage { deliveries: rows.iter().map(|(d, a)| DeliveryView::of(d, a)).collect(), next_cursor };
    Ok(axum::Json(page).into_response())
}

/// `POST /v1/webhook-deliveries/{id}/redeliver`: sends the delivery again now (same `webhook-id` and body, signed
/// anew), with its retry schedule restarted; also for a delivered or failed one.
#[utoipa::path(
    post,
    path = "/v1/webhook-deliveries/{id}/redeliver",
    tag = "webhooks",
    operation_id = "redeliver_webhook",
    security(("bearerAuth" = ["bookings:write"])),
    params(("id" = String, Path, description = "Delivery id, `whd_…`.")),
    responses(
        (status = 202, description = "Queued again.", body = DeliveryView),
        (status = 404, description = "No such delivery in the caller's tenant (`not_found`).", body = ErrorBody),
        (status = 409, description = "`delivery_in_flight`: an attempt is under way; retry after it.", body = ErrorBody)
    )
)]
pub async fn redeliver(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsWrite).await?;
    if !plausible_id(&id) {
        return Err(ApiError::not_found());
    }
    let now_ms = unix_now().saturating_mul(1000);
    match state.store.redeliver_webhook(&tenant, &id, now_ms).await? {
        Redeliver::Queued(d) => {
            let attempts = state.store.webhook_attempts(&d.id).await?;
            Ok((StatusCode::ACCEPTED, axum::Json(DeliveryView::of(&d, &attempts))).into_response())
        }
        Redeliver::InFlight => Err(ApiError::new(
            StatusCode::CONFLICT,
            "delivery_in_flight",
            "an attempt of this delivery is under way; retry after it",
        )),
        Redeliver::NotFound => Err(ApiError::not_found()),
    }
}
