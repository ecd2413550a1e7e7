//! The OpenAPI 3.1 document of the HTTP API, generated from the handlers' `#[utoipa::path]` annotations and the
//! request and response types (`GET /v1/openapi.json`, no auth). [`api_router`] builds the `/v1/` routes and the
//! document from one list, so every route the router serves is in the document.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::booking::{admin_api, api, calls_api, catalog_api, invite_api, personal_data, reschedule, webhook_api};
use crate::signal_io;

/// The body of every API error (README, "API (v1)"): a machine-readable code, a message for people, the
/// request member at fault when there is one, and members of some codes (`scope`, `opens_at`, `retry_after`,
/// `closed_at`, `status`, `latest_start_at`, `conflicting_booking_id`).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// Machine-readable code, e.g. `invalid_field`, `not_found`, `join_too_early`.
    pub error: String,
    /// For people; may change.
    pub message: String,
    /// The request member (or header) at fault, e.g. `start_at`, `participants[0].display_name`, `Idempotency-Key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// `insufficient_scope`: the scope the key lacks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// `join_too_early`: when the caller's window opens, RFC 3339 UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opens_at: Option<String>,
    /// `join_too_early`: seconds until then (as `Retry-After`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<i64>,
    /// `join_window_closed`: when it closed, RFC 3339 UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<String>,
    /// `invalid_transition`: the booking's current status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// `outside_booking_horizon`: the latest `start_at` accepted now, RFC 3339 UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_start_at: Option<String>,
    /// `precondition_failed`: the booking's current sequence (its ETag without quotes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence: Option<i64>,
    /// `extension_limit`: seconds the host may still add.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining_s: Option<i64>,
    /// `slot_unavailable`: the caller's booking in the way, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conflicting_booking_id: Option<String>,
}

/// Adds the `bearerAuth` scheme: `Authorization: Bearer <API key>`; each operation names the scopes it needs
/// (`bookings:read`, `bookings:write`, `admin`).
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.description = Some(
            "An API key (`duet-data/api-key`, `duet api-key create`, `POST /v1/admin/api-keys`). Each operation \
             lists the scopes it needs: `bookings:read`, `bookings:write`, `admin`."
                .into(),
        );
        components.add_security_scheme("bearerAuth", SecurityScheme::Http(http));
    }
}

/// The document's fixed part: info, tags, the security scheme, the error schema.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Duet",
        description = "Self-hosted call infrastructure for scheduled 1-on-1 video meetings: booking API, join, \
                       signaling. Every error is a JSON `ErrorBody` with the status and code of its row.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    components(schemas(ErrorBody)),
    tags(
        (name = "bookings", description = "Bookings of the caller's tenant (API key)."),
        (name = "scheduling", description = "Hosts, availability schedules, event types, free slots and bookings made from a slot (caller's tenant, API key)."),
        (name = "join", description = "Join links (the link token is the capability)."),
        (name = "signaling", description = "The native signaling WebSocket."),
        (name = "admin", description = "Tenants and API keys (scope `admin`)."),
        (name = "webhooks", description = "Webhook endpoints of the caller's tenant, their delivery log, redeliver and \
                                           a test ping (scope `bookings:write`)."),
        (name = "personal data", description = "Erasure and export of one person's data in the caller's tenant \
                                                (scope `bookings:write` or `admin`)."),
        (name = "meta", description = "This document.")
    )
)]
struct ApiDoc;

/// `GET /v1/openapi.json`: this OpenAPI 3.1 document (JSON, no auth).
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "meta",
    operation_id = "openapi",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.", content_type = "application/json", body = Object))
)]
pub async fn serve() -> impl IntoResponse {
    static JSON: LazyLock<String> =
        LazyLock::new(|| serde_json::to_string(&document()).unwrap_or_else(|_| "{}".to_string()));
    ([(header::CONTENT_TYPE, "application/json")], JSON.as_str())
}

/// The `/v1/` routes with their document (the router serves exactly the documented operations).
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(api::create_booking, api::list_bookings))
        .routes(routes!(api::get_booking, reschedule::patch_booking))
        .routes(routes!(api::cancel_booking))
        .routes(routes!(api::confirm_booking))
        .routes(routes!(api::reject_booking))
        .routes(routes!(api::rotate_link))
        .routes(routes!(api::revoke_link))
        .routes(routes!(api::join))
        .routes(routes!(calls_api::send_browser_summary))
        .routes(routes!(calls_api::get_call_report))
        .routes(routes!(invite_api::participant_invite))
        .routes(routes!(invite_api::link_invite))
        .routes(routes!(reschedule::extend_from_call))
        .routes(routes!(catalog_api::create_host, catalog_api::list_hosts))
        .routes(routes!(catalog_api::get_host, catalog_api::update_host, catalog_api::delete_host))
        .routes(routes!(catalog_api::rotate_host_secret))
        .routes(routes!(catalog_api::create_schedule, catalog_api::list_schedules))
        .routes(routes!(catalog_api::get_schedule, catalog_api::update_schedule, catalog_api::delete_schedule))
        .routes(routes!(catalog_api::create_event_type, catalog_api::list_event_types))
        .routes(routes!(catalog_api::get_event_type, catalog_api::update_event_type, catalog_api::delete_event_type))
        .routes(routes!(catalog_api::book_slot))
        .routes(routes!(catalog_api::list_slots))
        .routes(routes!(admin_api::create_tenant, admin_api::list_tenants))
        .routes(routes!(admin_api::create_api_key, admin_api::list_api_keys))
        .routes(routes!(admin_api::revoke_api_key))
        .routes(routes!(personal_data::get_tenant_retention, personal_data::set_tenant_retention))
        .routes(routes!(personal_data::erase_data_subject))
        .routes(routes!(personal_data::export_data_subject))
        .routes(routes!(webhook_api::create_endpoint, webhook_api::list_endpoints))
        .routes(routes!(webhook_api::get_endpoint, webhook_api::update_endpoint, webhook_api::delete_endpoint))
        .routes(routes!(webhook_api::rotate_secret))
        .routes(routes!(webhook_api::test_endpoint))
        .routes(routes!(webhook_api::list_deliveries))
        .routes(routes!(webhook_api::redeliver))
        .routes(routes!(signal_io::native::upgrade))
        .routes(routes!(serve))
}

/// The OpenAPI 3.1 document of the whole API, as served (with [`add_links`]).
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(api_router().into_openapi()).unwrap_or_default();
    add_common_responses(&mut doc);
    add_links(&mut doc);
    doc
}

/// The error responses every operation shares, added here once instead of on each `#[utoipa::path]`: 408
/// `request_timeout` on every operation (`[http] request_timeout`), and on operations with a `bearerAuth` scope 401
/// `unauthorized` and 403 `insufficient_scope` naming that scope, both with `WWW-Authenticate`. An operation that
/// documents one of these statuses itself keeps its own.
fn add_common_responses(doc: &mut serde_json::Value) {
    let error = || serde_json::json!({"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}});
    let challenge =
        |value: String| serde_json::json!({"WWW-Authenticate": {"schema": {"type": "string"}, "description": value}});
    let Some(paths) = doc.get_mut("paths").and_then(serde_json::Value::as_object_mut) else { return };
    for op in paths.values_mut().filter_map(serde_json::Value::as_object_mut).flat_map(|p| p.values_mut()) {
        let scopes: Vec<String> = op["security"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|req| req["bearerAuth"].as_array())
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect();
        let Some(responses) = op.get_mut("responses").and_then(serde_json::Value::as_object_mut) else { continue };
        let mut add = |status: &str, value: serde_json::Value| {
            responses.entry(status).or_insert(value);
        };
        add(
            "408",
            serde_json::json!({"description": "The request was not complete within `request_timeout` \
                (`request_timeout`).", "content": error()}),
        );
        if let Some(scope) = scopes.first() {
            add(
                "401",
                serde_json::json!({"description": "Missing, unknown, revoked or expired API key (`unauthorized`).",
                    "content": error(), "headers": challenge("`Bearer`".into())}),
            );
            add(
                "403",
                serde_json::json!({"description": format!("The key lacks the scope `{scope}` \
                    (`insufficient_scope`, member `scope`)."), "content": error(),
                    "headers": challenge(format!("`Bearer error=\"insufficient_scope\", scope=\"{scope}\"`"))}),
            );
        }
    }
}

/// One OpenAPI link (written as JSON: utoipa 5 serialises its `Link` with snake_case member names).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Link {
    operation_id: &'static str,
    parameters: std::collections::BTreeMap<&'static str, &'static str>,
}

/// A link: its name, the target operation id, the target's parameter and the runtime expression of its value.
type LinkSpec = (&'static str, &'static str, &'static str, &'static str);

/// OpenAPI links from the 201 of a create to the operations on what it created (a client, or schemathesis's
/// stateful run, follows them): booking id -> get, confirm, reject, cancel; the host's link token -> join; key id
/// -> revoke.
fn add_links(doc: &mut serde_json::Value) {
    let targets: [(&str, &[LinkSpec]); 2] = [
        (
            "/v1/bookings",
            &[
                ("GetBooking", "get_booking", "id", "$response.body#/id"),
                ("ConfirmBooking", "confirm_booking", "id", "$response.body#/id"),
                ("RejectBooking", "reject_booking", "id", "$response.body#/id"),
                ("CancelBooking", "cancel_booking", "id", "$response.body#/id"),
                ("Join", "join", "link_token", "$response.body#/participants/0/link_token"),
            ],
        ),
        ("/v1/admin/api-keys", &[("RevokeApiKey", "revoke_api_key", "id", "$response.body#/id")]),
    ];
    for (path, links) in targets {
        let Some(created) = doc.pointer_mut(&format!("/paths/{}/post/responses/201", path.replace('/', "~1"))) else {
            continue;
        };
        let links: serde_json::Map<String, serde_json::Value> = links
            .iter()
            .map(|(name, op, param, value)| {
                let link = Link { operation_id: op, parameters: [(*param, *value)].into() };
                ((*name).to_string(), serde_json::to_value(link).unwrap_or_default())
            })
            .collect();
        created["links"] = serde_json::Value::Object(links);
    }
}
