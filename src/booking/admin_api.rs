//! `/v1/admin/`: tenants and API keys, for keys with the `admin` scope (operator keys of the default tenant, see
//! [`crate::api_key`]). Errors are the JSON errors of [`super::api`]: 401 `unauthorized`, 403 `insufficient_scope`
//! (scope `admin`), 400 `invalid_request`, 422 `missing_field` / `invalid_field` / `invalid_datetime` /
//! `unknown_tenant`, 404 `not_found`.
//!
//! | route | body | answer |
//! |---|---|---|
//! | `POST /v1/admin/tenants` | [`CreateTenant`] | 201 [`TenantView`] |
//! | `GET /v1/admin/tenants` | | 200 [`TenantList`] |
//! | `POST /v1/admin/api-keys` | [`CreateApiKey`] | 201 [`CreatedApiKey`] (the key, shown once) |
//! | `GET /v1/admin/api-keys?tenant_id=` | | 200 [`ApiKeyList`] |
//! | `POST /v1/admin/api-keys/{id}/revoke` | | 200 [`ApiKeyView`] (idempotent) |

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::api::{ApiError, authenticate_key, body_error, parse_instant, parse_json, plausible_id, rfc3339};
use super::store::{ApiKey, Tenant};
use crate::api_key::{self, KeyRequest, KeyRequestError, Scope};
use crate::app::{AppState, unix_now};
use crate::openapi::ErrorBody;

/// `POST /v1/admin/tenants` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// Display name, 1 to 100 characters without control characters.
    pub name: String,
}

/// A tenant as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Tenant)]
pub struct TenantView {
    /// `ten_…`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Creation, RFC 3339 UTC.
    pub created_at: String,
}

impl From<&Tenant> for TenantView {
    fn from(t: &Tenant) -> Self {
        TenantView { id: t.id.clone(), name: t.name.clone(), created_at: rfc3339(t.created_at) }
    }
}

/// `GET /v1/admin/tenants` answer, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantList {
    /// The tenants.
    pub tenants: Vec<TenantView>,
}

/// `POST /v1/admin/api-keys` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    /// Owning tenant (`ten_…`); 422 `unknown_tenant` when there is none.
    pub tenant_id: String,
    /// At least one of `bookings:read`, `bookings:write`, `admin` (`admin` only for `ten_default`).
    pub scopes: Vec<Scope>,
    /// Expiry, RFC 3339 with an offset, in the future; none: the key never expires.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Label, 1 to 100 characters.
    #[serde(default)]
    pub name: Option<String>,
}

/// An API key as the API and `duet api-key list --json` show it: never the key nor its hash.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ApiKey)]
pub struct ApiKeyView {
    /// `key_…`.
    pub id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Label.
    pub name: Option<String>,
    /// Scopes, sorted.
    pub scopes: Vec<Scope>,
    /// Creation of the current key (last rotation), RFC 3339 UTC.
    pub created_at: String,
    /// Expiry, RFC 3339 UTC.
    pub expires_at: Option<String>,
    /// Revocation, RFC 3339 UTC.
    pub revoked_at: Option<String>,
}

impl From<&ApiKey> for ApiKeyView {
    fn from(k: &ApiKey) -> Self {
        ApiKeyView {
            id: k.id.clone(),
            tenant_id: k.tenant_id.clone(),
            name: k.name.clone(),
            scopes: k.scopes.clone(),
            created_at: rfc3339(k.created_at),
            expires_at: k.expires_at.map(rfc3339),
            revoked_at: k.revoked_at.map(rfc3339),
        }
    }
}

/// `POST /v1/admin/api-keys` answer: the key row and the key itself, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApiKey {
    /// The row.
    #[serde(flatten)]
    pub view: ApiKeyView,
    /// The key, for `Authorization: Bearer <key>`; not retrievable later.
    pub key: String,
}

/// `GET /v1/admin/api-keys` answer, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyList {
    /// The keys.
    pub api_keys: Vec<ApiKeyView>,
}

/// `GET /v1/admin/api-keys` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ApiKeyQuery {
    /// Only the keys of this tenant.
    #[serde(default)]
    pub tenant_id: Option<String>,
}

impl From<KeyRequestError> for ApiError {
    fn from(e: KeyRequestError) -> Self {
        match e {
            KeyRequestError::UnknownTenant => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_tenant", "no tenant has this id")
                    .field("tenant_id")
            }
            KeyRequestError::Invalid { field, message } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message).field(field)
            }
            KeyRequestError::Store(e) => e.into(),
        }
    }
}

/// `POST /v1/admin/tenants`.
#[utoipa::path(
    post,
    path = "/v1/admin/tenants",
    tag = "admin",
    operation_id = "create_tenant",
    security(("bearerAuth" = ["admin"])),
    request_body(content = CreateTenant, content_type = "application/json"),
    responses(
        (status = 201, description = "The tenant.", body = TenantView),
        (status = 400, description = "Malformed JSON, unknown member, wrong type (`invalid_request`).", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`).", body = ErrorBody),
        (status = 422, description = "`missing_field`, `invalid_field` (`name`).", body = ErrorBody)
    )
)]
pub async fn create_tenant(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    authenticate_key(&state, &headers, Scope::Admin).await?;
    let req: CreateTenant = parse_json(&body.map_err(body_error)?)?;
    let t = api_key::create_tenant(&state.store, &req.name, unix_now()).await?;
    tracing::info!(target: "booking", tenant = %t.id, "tenant created");
    Ok((StatusCode::CREATED, axum::Json(TenantView::from(&t))).into_response())
}

/// `GET /v1/admin/tenants`.
#[utoipa::path(
    get,
    path = "/v1/admin/tenants",
    tag = "admin",
    operation_id = "list_tenants",
    security(("bearerAuth" = ["admin"])),
    responses(
        (status = 200, description = "Every tenant, oldest first.", body = TenantList),
    )
)]
pub async fn list_tenants(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authenticate_key(&state, &headers, Scope::Admin).await?;
    let tenants = state.store.tenants().await?.iter().map(TenantView::from).collect();
    Ok(axum::Json(TenantList { tenants }).into_response())
}

/// `POST /v1/admin/api-keys`.
#[utoipa::path(
    post,
    path = "/v1/admin/api-keys",
    tag = "admin",
    operation_id = "create_api_key",
    security(("bearerAuth" = ["admin"])),
    request_body(content = CreateApiKey, content_type = "application/json"),
    responses(
        (status = 201, description = "The key row and the key, shown once.", body = CreatedApiKey),
        (status = 400, description = "Malformed JSON, unknown member, wrong type (`invalid_request`).", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`).", body = ErrorBody),
        (status = 422, description = "`missing_field`, `invalid_field` (scopes, name, `admin` outside `ten_default`), `invalid_datetime` (`expires_at`), `unknown_tenant`.", body = ErrorBody)
    )
)]
pub async fn create_api_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    authenticate_key(&state, &headers, Scope::Admin).await?;
    let req: CreateApiKey = parse_json(&body.map_err(body_error)?)?;
    if !plausible_id(&req.tenant_id) {
        return Err(KeyRequestError::UnknownTenant.into());
    }
    let expires_at = req.expires_at.as_deref().map(|e| parse_instant("expires_at", e)).transpose()?;
    let request = KeyRequest { tenant_id: req.tenant_id, scopes: req.scopes, expires_at, name: req.name };
    let (row, key) = api_key::create_key(&state.store, request, unix_now()).await?;
    tracing::info!(target: "booking", key = %row.id, tenant = %row.tenant_id, "API key created");
    Ok((StatusCode::CREATED, axum::Json(CreatedApiKey { view: ApiKeyView::from(&row), key })).into_response())
}

/// `GET /v1/admin/api-keys?tenant_id=`.
#[utoipa::path(
    get,
    path = "/v1/admin/api-keys",
    tag = "admin",
    operation_id = "list_api_keys",
    security(("bearerAuth" = ["admin"])),
    params(ApiKeyQuery),
    responses(
        (status = 200, description = "The keys (never the keys themselves), oldest first.", body = ApiKeyList),
        (status = 400, description = "`invalid_request` (unknown parameter).", body = ErrorBody),
    )
)]
pub async fn list_api_keys(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ApiKeyQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    authenticate_key(&state, &headers, Scope::Admin).await?;
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e.body_text()))?;
    if q.tenant_id.as_deref().is_some_and(|t| !plausible_id(t)) {
        // No tenant has such an id (and PostgreSQL refuses NUL in text): an empty list without asking the store.
        return Ok(axum::Json(ApiKeyList { api_keys: Vec::new() }).into_response());
    }
    let api_keys = state.store.api_keys(q.tenant_id.as_deref()).await?.iter().map(ApiKeyView::from).collect();
    Ok(axum::Json(ApiKeyList { api_keys }).into_response())
}

/// `POST /v1/admin/api-keys/{id}/revoke`: 401 from the next request on; idempotent (a revoked key answers its row
/// unchanged); 404 for an unknown id.
#[utoipa::path(
    post,
    path = "/v1/admin/api-keys/{id}/revoke",
    tag = "admin",
    operation_id = "revoke_api_key",
    security(("bearerAuth" = ["admin"])),
    params(("id" = String, Path, description = "Key id, `key_…`.")),
    responses(
        (status = 200, description = "The key row, revoked.", body = ApiKeyView),
        (status = 404, description = "No such key (`not_found`).", body = ErrorBody)
    )
)]
pub async fn revoke_api_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authenticate_key(&state, &headers, Scope::Admin).await?;
    if !plausible_id(&id) {
        return Err(ApiError::not_found());
    }
    if state.store.revoke_api_key(&id, unix_now()).await? {
        tracing::info!(target: "booking", key = %id, "API key revoked");
    }
    let row = state.store.api_key(&id).await?.ok_or_else(ApiError::not_found)?;
    Ok(axum::Json(ApiKeyView::from(&row)).into_response())
}
