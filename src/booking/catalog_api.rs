//! Hosts, availability schedules, event types, free slots and bookings made from a slot (`/v1/hosts`,
//! `/v1/hosts/{ref}/schedules`, `/v1/event-types`, `/v1/slots`, `POST /v1/event-types/{id}/bookings`; README,
//! "Hosts, schedules, event types and slots"). Scopes: `bookings:read` for `GET`, `bookings:write` for the rest.
//! Errors are [`ApiError`] JSON bodies; another tenant's objects answer 404.
//!
//! `PATCH` bodies are partial: the members sent replace the current ones (`null` clears an optional member), and the
//! result is checked like a create.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{NaiveDate, SecondsFormat, TimeZone};
use chrono_tz::Tz;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::api::{
    self, ApiError, BookingKind, BookingOrigin, BookingView, CreateBooking, CreateParticipant, CreateStatus,
    authenticate, check_text, invalid_field, parse_instant, parse_json, plausible_email, plausible_id,
    plausible_locale, rfc3339, valid_external_url, valid_time_zone,
};
use super::catalog::{EventType, Host, Schedule};
use super::store::Kind;
use super::tokens;
use crate::api_key::Scope;
use crate::app::{AppState, unix_now};
use crate::openapi::ErrorBody;
use crate::scheduling::slots::{self, Availability, LocalInterval, SlotQuery, SlotRules};

fn bad_request(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e.to_string())
}

fn time_zone_error(field: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_time_zone",
        format!("`{field}` must be an IANA time zone name, e.g. Europe/Berlin"),
    )
    .field(field)
}

/// Applies a partial `PATCH` body (a JSON object) over `current` and parses the result as `T` (unknown members 400
/// `invalid_request`, a required member set to `null` 400 as well).
fn merge_patch<T: Serialize + DeserializeOwned>(current: &T, body: &[u8]) -> Result<T, ApiError> {
    let patch: Value = serde_json::from_slice(body).map_err(|e| bad_request(format_args!("malformed JSON: {e}")))?;
    let Value::Object(patch) = patch else { return Err(bad_request("the body must be a JSON object")) };
    let mut merged = serde_json::to_value(current).map_err(ApiError::internal)?;
    for (k, v) in patch {
        merged[k] = v;
    }
    parse_json(&serde_json::to_vec(&merged).map_err(ApiError::internal)?)
}

/// The host of `tenant` with `ref` `reference`, or 404.
async fn find_host(state: &AppState, tenant: &str, reference: &str) -> Result<Host, ApiError> {
    if !plausible_id(reference) {
        return Err(ApiError::not_found());
    }
    state.store.host(tenant, reference).await?.ok_or_else(ApiError::not_found)
}

// ---------------------------------------------------------------------------------------------------------------
// Hosts

/// `POST /v1/hosts` body, and the shape `PATCH /v1/hosts/{ref}` merges into.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostInput {
    /// The app's id of the host, 1-128 characters without control characters, unique per tenant (409
    /// `host_ref_taken`): the `ref` of the host participant of its bookings. Cannot change.
    #[serde(rename = "ref")]
    #[schema(min_length = 1, max_length = 128, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub reference: String,
    /// Shown to guests, 1-128 characters without control characters.
    #[schema(min_length = 1, max_length = 128, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub display_name: String,
    /// Contact email (`local@domain.tld`, at most 254 characters).
    #[serde(default)]
    #[schema(max_length = 254, format = Email)]
    pub email: Option<String>,
    /// IANA time zone name, e.g. `Europe/Berlin` (else 422 `invalid_time_zone`): the default of its schedules.
    #[schema(max_length = 64, example = "Europe/Berlin")]
    pub time_zone: String,
}

/// A host in responses.
#[derive(Debug, Serialize, ToSchema)]
pub struct HostView {
    /// `hst_…`.
    pub id: String,
    /// The app's id of the host.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Shown to guests.
    pub display_name: String,
    /// Contact email, or null.
    pub email: Option<String>,
    /// IANA time zone name.
    pub time_zone: String,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// RFC 3339 UTC.
    pub updated_at: String,
    /// The host secret (`hs_` + 43 base64url characters): only in the answers of create and rotate (shown once; only
    /// its SHA-256 is stored). It reaches the host's agenda page and calendar feed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl HostView {
    fn of(h: &Host, secret: Option<String>) -> HostView {
        HostView {
            id: h.id.clone(),
            reference: h.reference.clone(),
            display_name: h.display_name.clone(),
            email: h.email.clone(),
            time_zone: h.time_zone.clone(),
            created_at: rfc3339(h.created_at),
            updated_at: rfc3339(h.updated_at),
            secret,
        }
    }
}

/// `GET /v1/hosts`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HostList {
    /// Every host of the tenant, ordered by `ref`.
    pub hosts: Vec<HostView>,
}

fn check_host(h: &HostInput) -> Result<(), ApiError> {
    check_text("ref", &h.reference, 128)?;
    check_text("display_name", &h.display_name, 128)?;
    if let Some(e) = &h.email
        && !plausible_email(e)
    {
        return Err(invalid_field("email", "`email` must look like local@domain.tld, at most 254 characters"));
    }
    if !valid_time_zone(&h.time_zone) {
        return Err(time_zone_error("time_zone"));
    }
    Ok(())
}

/// A new host secret and its SHA-256.
fn new_secret() -> (String, Vec<u8>) {
    let s = format!("hs_{}", tokens::new_link_token());
    let h = tokens::link_token_hash(&s);
    (s, h)
}

/// `POST /v1/hosts`: creates a host with a new secret (shown once).
#[utoipa::path(
    post,
    path = "/v1/hosts",
    tag = "scheduling",
    operation_id = "create_host",
    security(("bearerAuth" = ["bookings:write"])),
    request_body(content = HostInput, content_type = "application/json"),
    responses(
        (status = 201, description = "Created, with its `secret` (shown once).", body = HostView),
        (status = 400, description = "Malformed JSON, unknown member, wrong type (`invalid_request`).", body = ErrorBody),
        (status = 409, description = "`host_ref_taken`.", body = ErrorBody),
        (status = 413, description = "Body too large (`payload_too_large`).", body = ErrorBody),
        (status = 422, description = "`missing_field`, `invalid_field`, `invalid_time_zone`; `field` names the member.", body = ErrorBody)
    )
)]
pub async fn create_host(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsWrite).await?;
    let req: HostInput = parse_json(&body.map_err(api::body_error)?)?;
    check_host(&req)?;
    let now = unix_now();
    let h = Host {
        id: tokens::new_id("hst"),
        tenant_id: tenant,
        reference: req.reference,
        display_name: req.display_name,
        email: req.email,
        time_zone: req.time_zone,
        created_at: now,
        updated_at: now,
    };
    let (secret, hash) = new_secret();
    state.store.create_host(&h, &hash).await?;
    tracing::info!(target: "booking", host = %h.id, "host created");
    Ok((StatusCode::CREATED, axum::Json(HostView::of(&h, Some(secret)))).into_response())
}

/// `GET /v1/hosts`: every host of the tenant, ordered by `ref`.
#[utoipa::path(
    get,
    path = "/v1/hosts",
    tag = "scheduling",
    operation_id = "list_hosts",
    security(("bearerAuth" = ["bookings:read"])),
    responses((status = 200, description = "The hosts.", body = HostList))
)]
pub async fn list_hosts(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsRead).await?;
    let hosts = state.store.hosts(&tenant).await?.iter().map(|h| HostView::of(h, None)).collect();
    Ok(axum::Json(HostList { hosts }).into_response())
}

/// `GET /v1/hosts/{ref}`.
#[utoipa::path(
    get,
    path = "/v1/hosts/{ref}",
    tag = "scheduling",
    operation_id = "get_host",
    security(("bearerAuth" = ["bookings:read"])),
    params(("ref" = String, Path, description = "The host's `ref` (percent-encoded).")),
    responses(
        (status = 200, description = "The host (without its secret).", body = HostView),
        (status = 404, description = "No such host in the caller's tenant (`not_found`).", body = ErrorBody)
    )
)]
pub async fn get_host(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(reference): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsRead).await?;
    let h = find_host(&state, &tenant, &reference).await?;
    Ok(axum::Json(HostView::of(&h, None)).into_response())
}

/// `PATCH /v1/hosts/{ref}`: changes `display_name`, `email`, `time_zone` (`ref` cannot change: 422
/// `invalid_field`).
#[utoipa::path(
    patch,
    path = "/v1/hosts/{ref}",
    tag = "scheduling",
    operation_id = "update_host",
    security(("bearerAuth" = ["bookings:write"])),
    params(("ref" = String, Path, description = "The host's `ref` (percent-encoded).")),
    request_body(content = Object, description = "Members of `HostInput` to change.", content_type = "application/json"),
    responses(
        (status = 200, description = "The host.", body = HostView),
        (status = 400, description = "Malformed JSON, not an object, unknown member, wrong type (`invalid_request`).", body = ErrorBody),
        (status = 404, description = "No such host in the caller's tenant (`not_found`).", body = ErrorBody),
        (status = 413, description = "Body too large (`payload_too_large`).", body = ErrorBody),
        (status = 422, description = "`invalid_field`, `invalid_time_zone`.", body = ErrorBody)
    )
)]
pub async fn update_host(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(reference): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsWrite).await?;
    let body = body.map_err(api::body_error)?;
    let mut h = find_host(&state, &tenant, &reference).await?;
    let current = HostInput {
        reference: h.reference.clone(),
        display_name: h.display_name.clone(),
        email: h.email.clone(),
        time_zone: h.time_zone.clone(),
    };
    let req: HostInput = merge_patch(&current, &body)?;
    if req.reference != h.reference {
        return Err(invalid_field("ref", "`ref` cannot change (bookings carry it)"));
    }
    check_host(&req)?;
    (h.display_name, h.email, h.time_zone, h.updated_at) = (req.display_name, req.email, req.time_zone, unix_now());
    if !state.store.update_host(&h).await? {
        return Err(ApiError::not_found());
    }
    Ok(axum::Json(HostView::of(&h, None)).into_response())
}

/// `DELETE /v1/hosts/{ref}`: deletes the host with its schedules and event types; its bookings are kept.
#[utoipa::path(
    delete,
    path = "/v1/hosts/{ref}",
    tag = "scheduling",
    operation_id = "delete_host",
    security(("bearerAuth" = ["bookings:write"])),
    params(("ref" = String, Path, description = "The host's `ref` (percent-encoded).")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "No such host in the caller's tenant (`not_found`).", body = ErrorBody)
    )
)]
pub async fn delete_host(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(reference): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsWrite).await?;
    let h = find_host(&state, &tenant, &reference).await?;
    if !state.store.delete_host(&tenant, &h.id).await? {
        return Err(ApiError::not_found());
    }
    tracing::info!(target: "booking", host = %h.id, "host deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/hosts/{ref}/secret/rotate`: a new host secret (shown once); the old one stops working at once.
#[utoipa::path(
    post,
    path = "/v1/hosts/{ref}/secret/rotate",
    tag = "scheduling",
    operation_id = "rotate_host_secret",
    security(("bearerAuth" = ["bookings:write"])),
    params(("ref" = String, Path, description = "The host's `ref` (percent-encoded).")),
    responses(
        (status = 200, description = "The host with its new `secret` (shown once).", body = HostView),
        (status = 404, description = "No such host in the caller's tenant (`not_found`).", body = ErrorBody)
    )
)]
pub async fn rotate_host_secret(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(reference): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsWrite).await?;
    let mut h = find_host(&state, &tenant, &reference).await?;
    let (secret, hash) = new_secret();
    h.updated_at = unix_now();
    if !state.store.set_host_secret(&tenant, &h.id, &hash, h.updated_at).await? {
        return Err(ApiError::not_found());
    }
    tracing::info!(target: "booking", host = %h.id, "host secret rotated");
    Ok(axum::Json(HostView::of(&h, Some(secret))).into_response())
}

// ---------------------------------------------------------------------------------------------------------------
// Schedules

/// A day of the week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DayOfWeek {
    /// Monday.
    Monday,
    /// Tuesday.
    Tuesday,
    /// Wednesday.
    Wednesday,
    /// Thursday.
    Thursday,
    /// Friday.
    Friday,
    /// Saturday.
    Saturday,
    /// Sunday.
    Sunday,
}

/// An interval of local wall time, `[start, end)`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IntervalInput {
    /// `HH:MM`, `00:00` to `23:59`.
    #[schema(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$", example = "09:00")]
    pub start: String,
    /// `HH:MM` after `start`, up to `24:00` (midnight at the end of the day).
    #[schema(pattern = r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$", example = "17:00")]
    pub end: String,
}

/// The intervals of one day of every week.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WeeklyRule {
    /// The day (each day at most once per schedule).
    pub day: DayOfWeek,
    /// Non-overlapping intervals, at most 24.
    #[schema(max_items = 24)]
    pub intervals: Vec<IntervalInput>,
}

/// One local date with intervals of its own, replacing its weekly rule.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DateOverride {
    /// Local date `YYYY-MM-DD` (each date at most once per schedule).
    #[schema(format = Date, example = "2027-12-24")]
    pub date: String,
    /// Non-overlapping intervals, at most 24; empty: unavailable all day.
    #[schema(max_items = 24)]
    pub intervals: Vec<IntervalInput>,
}

/// `POST /v1/hosts/{ref}/schedules` body, and the shape `PATCH` merges into.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleInput {
    /// 1-128 characters without control characters, e.g. "Working hours".
    #[schema(min_length = 1, max_length = 128, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub name: String,
    /// IANA time zone of the local times and dates (default: the host's).
    #[serde(default)]
    #[schema(max_length = 64, example = "Europe/Berlin")]
    pub time_zone: Option<String>,
    /// Weekly rules, at most one per day (a day without a rule is unavailable).
    #[serde(default)]
    #[schema(max_items = 7)]
    pub weekly: Vec<WeeklyRule>,
    /// Date overrides, at most 500.
    #[serde(default)]
    #[schema(max_items = 500)]
    pub overrides: Vec<DateOverride>,
}

/// A schedule in responses.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleView {
    /// `sch_…`.
    pub id: String,
    /// The host's `ref`.
    pub host_ref: String,
    /// Name.
    pub name: String,
    /// IANA time zone of the local times and dates.
    pub time_zone: String,
    /// Weekly rules.
    pub weekly: Vec<WeeklyRule>,
    /// Date overrides, by date.
    pub overrides: Vec<DateOverride>,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// RFC 3339 UTC.
    pub updated_at: String,
}

/// `GET /v1/hosts/{ref}/schedules`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleList {
    /// The host's schedules, oldest first.
    pub schedules: Vec<ScheduleView>,
}

const DAYS: [DayOfWeek; 7] = [
    DayOfWeek::Monday,
    DayOfWeek::Tuesday,
    DayOfWeek::Wednesday,
    DayOfWeek::Thursday,
    DayOfWeek::Friday,
    DayOfWeek::Saturday,
    DayOfWeek::Sunday,
];

/// Checks a day's intervals (at most 24, each `HH:MM`-`HH:MM` with end after start, none overlapping) and returns
/// them sorted. Errors: 422 `invalid_field` naming the member (`weekly[0].intervals[1].end`).
fn check_intervals(field: &str, v: &[IntervalInput]) -> Result<Vec<LocalInterval>, ApiError> {
    if v.len() > 24 {
        return Err(invalid_field(field, "at most 24 intervals per day"));
    }
    let mut out: Vec<LocalInterval> = Vec::with_capacity(v.len());
    for (i, x) in v.iter().enumerate() {
        let iv = LocalInterval::parse(&x.start, &x.end).map_err(|e| {
            let member = if e == slots::IntervalError::BadStart { "start" } else { "end" };
            invalid_field(&format!("{field}[{i}].{member}"), e.to_string())
        })?;
        if out.iter().any(|o| o.overlaps(&iv)) {
            return Err(invalid_field(&format!("{field}[{i}]"), "intervals of one day must not overlap"));
        }
        out.push(iv);
    }
    out.sort();
    Ok(out)
}

/// Checks a schedule and builds its [`Availability`] in `tz`. Errors: 422 `invalid_field` / `invalid_time_zone`.
fn availability_of(input: &ScheduleInput, tz: &str) -> Result<Availability, ApiError> {
    let time_zone: Tz = tz.parse().map_err(|_| time_zone_error("time_zone"))?;
    let mut weekly: [Vec<LocalInterval>; 7] = Default::default();
    let mut seen = [false; 7];
    for (i, r) in input.weekly.iter().enumerate() {
        let d = DAYS.iter().position(|x| *x == r.day).unwrap_or(0);
        if std::mem::replace(&mut seen[d], true) {
            return Err(invalid_field(&format!("weekly[{i}].day"), "each day may have one rule"));
        }
        weekly[d] = check_intervals(&format!("weekly[{i}].intervals"), &r.intervals)?;
    }
    if input.overrides.len() > 500 {
        return Err(invalid_field("overrides", "at most 500 date overrides"));
    }
    let mut overrides = BTreeMap::new();
    for (i, o) in input.overrides.iter().enumerate() {
        let date = NaiveDate::parse_from_str(&o.date, "%Y-%m-%d")
            .ok()
            .filter(|_| o.date.len() == 10)
            .ok_or_else(|| invalid_field(&format!("overrides[{i}].date"), "`date` must be YYYY-MM-DD"))?;
        let ivs = check_intervals(&format!("overrides[{i}].intervals"), &o.intervals)?;
        if overrides.insert(date, ivs).is_some() {
            return Err(invalid_field(&format!("overrides[{i}].date"), "each date may have one override"));
        }
    }
    Ok(Availability { time_zone, weekly, overrides })
}

/// The stored form of a checked schedule: rules sorted by day, intervals by start, overrides by date.
fn normalized(input: &ScheduleInput, a: &Availability) -> (String, String) {
    let ivs = |v: &[LocalInterval]| -> Vec<IntervalInput> {
        v.iter().map(|x| IntervalInput { start: slots::format_hhmm(x.start), end: slots::format_hhmm(x.end) }).collect()
    };
    let weekly: Vec<WeeklyRule> = DAYS
        .iter()
        .enumerate()
        .filter(|(_, d)| input.weekly.iter().any(|r| r.day == **d))
        .map(|(i, d)| WeeklyRule { day: *d, intervals: ivs(&a.weekly[i]) })
        .collect();
    let overrides: Vec<DateOverride> =
        a.overrides.iter().map(|(d, v)| DateOverride { date: d.to_string(), intervals: ivs(v) }).collect();
    (serde_json::to_string(&weekly).unwrap_or_default(), serde_json::to_string(&overrides).unwrap_or_default())
}

fn schedule_input_of(s: &Schedule) -> ScheduleInput {
    ScheduleInput {
        name: s.name.clone(),
        time_zone: Some(s.time_zone.clone()),
        weekly: serde_json::from_str(&s.weekly).unwrap_or_default(),
        overrides: serde_json::from_str(&s.overrides).unwrap_or_default(),
    }
}

fn schedule_view(s: &Schedule, host_ref: &str) -> ScheduleView {
    let input = schedule_input_of(s);
    ScheduleView {
        id: s.id.clone(),
        host_ref: host_ref.to_string(),
        name: s.name.clone(),
        time_zone: s.time_zone.clone(),
        weekly: input.weekly,
        overrides: input.overrides,
        created_at: rfc3339(s.created_at),
        updated_at: rfc3339(s.updated_at),
    }
}

/// The stored schedule `s` as an [`Availability`] (stored schedules were checked on write).
fn stored_availability(s: &Schedule) -> Result<Availability, ApiError> {
    availability_of(&schedule_input_of(s), &s.time_zone).map_err(|e| ApiError::internal(format_args!("{e:?}")))
}

/// `POST /v1/hosts/{ref}/schedules`: creates an availability schedule of the host.
#[utoipa::path(
    post,
    path = "/v1/hosts/{ref}/schedules",
    tag = "scheduling",
    operation_id = "create_schedule",
    security(("bearerAuth" = ["bookings:write"])),
    params(("ref" = String, Path, description = "The host's `ref` (percent-encoded).")),
    request_body(content = ScheduleInput, content_type = "application/json"),
    responses(
        (status = 201, description = "Created (rules sorted by day, intervals by start, overrides by date).", body = ScheduleView),
        (status = 400, description = "Malformed JSON, unknown member, wrong type (`invalid_request`).", body = ErrorBody),
        (status = 404, description = "No such host in the caller's tenant (`not_found`).", body = ErrorBody),
        (status = 413, description = "Body too large (`payload_too_large`).", body = ErrorBody),
        (status = 422, description = "`missing_field`, `invalid_field` (bad or overlapping interval, repeated day or date), `invalid_time_zone`.", body = ErrorBody)
    )
)]
pub async fn create_schedule(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(reference): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsWrite).await?;
    let body = body.map_err(api::body_error)?;
    let h = find_host(&state, &tenant, &reference).await?;
    let req: ScheduleInput = parse_json(&body)?;
    check_text("name", &req.name, 128)?;
    let tz = req.time_zone.clone().unwrap_or_else(|| h.time_zone.clone());
    let a = availability_of(&req, &tz)?;
    let (weekly, overrides) = normalized(&req, &a);
    let now = unix_now();
    let s = Schedule {
        id: tokens::new_id("sch"),
        tenant_id: tenant,
        host_id: h.id.clone(),
        name: req.name,
        time_zone: tz,
        weekly,
        overrides,
        created_at: now,
        updated_at: now,
    };
    state.store.create_schedule(&s).await?;
    Ok((StatusCode::CREATED, axum::Json(schedule_view(&s, &h.reference))).into_response())
}

/// `GET /v1/hosts/{ref}/schedules`.
#[utoipa::path(
    get,
    path = "/v1/hosts/{ref}/schedules",
    tag = "scheduling",
    operation_id = "list_schedules",
    security(("bearerAuth" = ["bookings:read"])),
    params(("ref" = String, Path, description = "The host's `ref` (percent-encoded).")),
    responses(
        (status = 200, description = "The host's schedules, oldest first.", body = ScheduleList),
        (status = 404, description = "No such host in the caller's tenant (`not_found`).", body = ErrorBody)
    )
)]
pub async fn list_schedules(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(reference): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsRead).await?;
    let h = find_host(&state, &tenant, &reference).await?;
    let schedules =
        state.store.schedules(&tenant, &h.id).await?.iter().map(|s| schedule_view(s, &h.reference)).collect();
    Ok(axum::Json(ScheduleList { schedules }).into_response())
}

async fn find_schedule(
    state: &AppState,
    tenant: &str,
    reference: &str,
    id: &str,
) -> Result<(Host, Schedule), ApiError> {
    let h = find_host(state, tenant, reference).await?;
    if !plausible_id(id) {
        return Err(ApiError::not_found());
    }
    let s = state.store.schedule(tenant, &h.id, id).await?.ok_or_else(ApiError::not_found)?;
    Ok((h, s))
}

/// `GET /v1/hosts/{ref}/schedules/{id}`.
#[utoipa::path(
    get,
    path = "/v1/hosts/{ref}/schedules/{id}",
    tag = "scheduling",
    operation_id = "get_schedule",
    security(("bearerAuth" = ["bookings:read"])),
    params(("ref" = String, Path, description = "The host's `ref` (percent-encoded)."), ("id" = String, Path, description = "Schedule id, `sch_…`.")),
    responses(
        (status = 200, description = "The schedule.", body = ScheduleView),
        (status = 404, description = "No such host or schedule in the caller's tenant (`not_found`).", body = ErrorBody)
    )
)]
pub async fn get_schedule(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((reference, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsRead).await?;
    let (h, s) = find_schedule(&state, &tenant, &reference, &id).await?;
    Ok(axum::Json(schedule_view(&s, &h.reference)).into_response())
}

/// `PATCH /v1/hosts/{ref}/schedules/{id}`: members of `ScheduleInput` to replace (e.g. all `weekly` rules at once).
#[utoipa::path(
    patch,
    path = "/v1/hosts/{ref}/schedules/{id}",
    tag = "scheduling",
    operation_id = "update_schedule",
    security(("bearerAuth" = ["bookings:write"])),
    params(("ref" = String, Path, description = "The host's `ref` (percent-encoded)."), ("id" = String, Path, description = "Schedule id, `sch_…`.")),
    request_body(content = Object, description = "Members of `ScheduleInput` to replace.", content_type = "application/json"),
    responses(
        (status = 200, description = "The schedule.", body = ScheduleView),
        (status = 400, description = "Malformed JSON, not an object, unknown member, wrong type (`invalid_request`).", body = ErrorBody),
        (status = 404, description = "No such host or schedule in the caller's tenant (`not_found`).", body = ErrorBody),
        (status = 413, description = "Body too large (`payload_too_large`).", body = ErrorBody),
        (status = 422, description = "`invalid_field`, `invalid_time_zone`.", body = ErrorBody)
    )
)]
pub async fn update_schedule(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((reference, id)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsWrite).await?;
    let body = body.map_err(api::body_error)?;
    let (h, mut s) = find_schedule(&state, &tenant, &reference, &id).await?;
    let req: ScheduleInput = merge_patch(&schedule_input_of(&s), &body)?;
    check_text("name", &req.name, 128)?;
    let tz = req.time_zone.clone().unwrap_or_else(|| h.time_zone.clone());
    let a = availability_of(&req, &tz)?;
    (s.weekly, s.overrides) = normalized(&req, &a);
    (s.name, s.time_zone, s.updated_at) = (req.name, tz, unix_now());
    if !state.store.update_schedule(&s).await? {
        return Err(ApiError::not_found());
    }
    Ok(axum::Json(schedule_view(&s, &h.reference)).into_response())
}

/// `DELETE /v1/hosts/{ref}/schedules/{id}`: 409 `schedule_in_use` while an event type uses it.
#[utoipa::path(
    delete,
    path = "/v1/hosts/{ref}/schedules/{id}",
    tag = "scheduling",
    operation_id = "delete_schedule",
    security(("bearerAuth" = ["bookings:write"])),
    params(("ref" = String, Path, description = "The host's `ref` (percent-encoded)."), ("id" = String, Path, description = "Schedule id, `sch_…`.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "No such host or schedule in the caller's tenant (`not_found`).", body = ErrorBody),
        (status = 409, description = "`schedule_in_use`.", body = ErrorBody)
    )
)]
pub async fn delete_schedule(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((reference, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsWrite).await?;
    let (h, s) = find_schedule(&state, &tenant, &reference, &id).await?;
    if !state.store.delete_schedule(&tenant, &h.id, &s.id).await? {
        return Err(ApiError::not_found());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------------------------------------------------------
// Event types

fn default_notice() -> i64 {
    120
}
fn default_horizon() -> i64 {
    60
}

/// `POST /v1/event-types` body, and the shape `PATCH /v1/event-types/{id}` merges into. Durations in minutes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventTypeInput {
    /// The host's `ref` (a host of the caller's tenant, else 422 `unknown_host`).
    #[schema(min_length = 1, max_length = 128)]
    pub host_ref: String,
    /// A schedule of that host (`sch_…`, else 422 `unknown_schedule`): where the slots come from.
    #[schema(min_length = 1, max_length = 128)]
    pub schedule_id: String,
    /// Unique per host (409 `slug_taken`): 1-64 of `a-z`, `0-9` and single inner `-`.
    #[schema(min_length = 1, max_length = 64, pattern = r"^[a-z0-9]+(-[a-z0-9]+)*$", example = "intro-30")]
    pub slug: String,
    /// Title of its bookings, 1-200 characters without control characters.
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub title: String,
    /// Length of a booking, 5 minutes to `[booking] max_duration`.
    #[schema(minimum = 5, maximum = 1440)]
    pub duration_minutes: i64,
    /// The host is kept free this long before a booking, 0-1440 (default 0).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1440)]
    pub buffer_before_minutes: i64,
    /// The host is kept free this long after a booking, 0-1440 (default 0).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1440)]
    pub buffer_after_minutes: i64,
    /// Earliest start counted from now, 0-525600 (default 120, as cal.com's `minimumBookingNotice`).
    #[serde(default = "default_notice")]
    #[schema(minimum = 0, maximum = 525600)]
    pub minimum_notice_minutes: i64,
    /// Latest start counted from now, 1-730 days (default 60); `[booking] horizon` still applies.
    #[serde(default = "default_horizon")]
    #[schema(minimum = 1, maximum = 730)]
    pub horizon_days: i64,
    /// At most this many pending or confirmed bookings of this event type start on one local date of the schedule,
    /// 1-1000; null: no limit.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000)]
    pub max_per_day: Option<i64>,
    /// Step between offered starts, 5-1440 minutes; null: the duration.
    #[serde(default)]
    #[schema(minimum = 5, maximum = 1440)]
    pub slot_interval_minutes: Option<i64>,
    /// `hosted` (default) or `external_link`.
    #[serde(default)]
    pub kind: BookingKind,
    /// Exactly for `external_link`: an `https://` URL of at most 2048 characters.
    #[serde(default)]
    #[schema(max_length = 2048, pattern = r"^https://[^\u0000-\u0020\u007F-\u009F]+$")]
    pub external_url: Option<String>,
    /// Bookings start `pending` and wait for `POST /v1/bookings/{id}/confirm` (default false).
    #[serde(default)]
    pub requires_confirmation: bool,
}

/// An event type in responses (the members of `EventTypeInput`, and these).
#[derive(Debug, Serialize, ToSchema)]
pub struct EventTypeView {
    /// `evt_…`.
    pub id: String,
    /// The host's `ref`.
    pub host_ref: String,
    /// The schedule.
    pub schedule_id: String,
    /// Slug, unique per host.
    pub slug: String,
    /// Title.
    pub title: String,
    /// Minutes.
    pub duration_minutes: i64,
    /// Minutes.
    pub buffer_before_minutes: i64,
    /// Minutes.
    pub buffer_after_minutes: i64,
    /// Minutes.
    pub minimum_notice_minutes: i64,
    /// Days.
    pub horizon_days: i64,
    /// Per local date of the schedule, or null.
    pub max_per_day: Option<i64>,
    /// Minutes between offered starts (the duration unless set).
    pub slot_interval_minutes: i64,
    /// `hosted` or `external_link`.
    pub kind: BookingKind,
    /// The https URL of an `external_link` event type, else null.
    pub external_url: Option<String>,
    /// Bookings start `pending`.
    pub requires_confirmation: bool,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// RFC 3339 UTC.
    pub updated_at: String,
}

fn event_type_view(e: &EventType, host_ref: &str) -> EventTypeView {
    EventTypeView {
        id: e.id.clone(),
        host_ref: host_ref.to_string(),
        schedule_id: e.schedule_id.clone(),
        slug: e.slug.clone(),
        title: e.title.clone(),
        duration_minutes: e.duration_minutes,
        buffer_before_minutes: e.buffer_before_minutes,
        buffer_after_minutes: e.buffer_after_minutes,
        minimum_notice_minutes: e.minimum_notice_minutes,
        horizon_days: e.horizon_days,
        max_per_day: e.max_per_day,
        slot_interval_minutes: e.slot_interval_minutes.unwrap_or(e.duration_minutes),
        kind: booking_kind(e.kind),
        external_url: e.external_url.clone(),
        requires_confirmation: e.requires_confirmation,
        created_at: rfc3339(e.created_at),
        updated_at: rfc3339(e.updated_at),
    }
}

fn booking_kind(k: Kind) -> BookingKind {
    match k {
        Kind::Hosted => BookingKind::Hosted,
        Kind::ExternalLink => BookingKind::ExternalLink,
    }
}

/// `GET /v1/event-types`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventTypeList {
    /// The event types, oldest first.
    pub event_types: Vec<EventTypeView>,
}

fn valid_slug(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.split('-').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
}

/// Checks an event type and resolves its host and schedule. Errors: 422 `invalid_field`, `unknown_host`,
/// `unknown_schedule`, `missing_field` (`external_url` of `external_link`).
async fn check_event_type(state: &AppState, tenant: &str, e: &EventTypeInput) -> Result<(Host, Schedule), ApiError> {
    if !valid_slug(&e.slug) {
        return Err(invalid_field("slug", "`slug` must be 1-64 of a-z, 0-9 and single inner hyphens"));
    }
    check_text("title", &e.title, 200)?;
    let max_minutes = i64::try_from(state.policy.max_duration.as_secs() / 60).unwrap_or(i64::MAX).min(1440);
    let ranges: [(&str, i64, i64, i64); 5] = [
        ("duration_minutes", e.duration_minutes, 5, max_minutes),
        ("buffer_before_minutes", e.buffer_before_minutes, 0, 1440),
        ("buffer_after_minutes", e.buffer_after_minutes, 0, 1440),
        ("minimum_notice_minutes", e.minimum_notice_minutes, 0, 525_600),
        ("horizon_days", e.horizon_days, 1, 730),
    ];
    for (field, v, lo, hi) in ranges {
        if !(lo..=hi).contains(&v) {
            return Err(invalid_field(field, format!("`{field}` must be {lo} to {hi}")));
        }
    }
    if e.max_per_day.is_some_and(|v| !(1..=1000).contains(&v)) {
        return Err(invalid_field("max_per_day", "`max_per_day` must be 1 to 1000, or null"));
    }
    if e.slot_interval_minutes.is_some_and(|v| !(5..=1440).contains(&v)) {
        return Err(invalid_field("slot_interval_minutes", "`slot_interval_minutes` must be 5 to 1440, or null"));
    }
    match (e.kind, &e.external_url) {
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
                "`external_url` must be an https:// URL of at most 2048 characters",
            ));
        }
        _ => {}
    }
    let unknown_host = || {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_host", "the tenant has no host with this ref")
            .field("host_ref")
    };
    if !plausible_id(&e.host_ref) {
        return Err(unknown_host());
    }
    let h = state.store.host(tenant, &e.host_ref).await?.ok_or_else(unknown_host)?;
    let unknown_schedule = || {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_schedule", "the host has no schedule with this id")
            .field("schedule_id")
    };
    if !plausible_id(&e.schedule_id) {
        return Err(unknown_schedule());
    }
    let s = state.store.schedule(tenant, &h.id, &e.schedule_id).await?.ok_or_else(unknown_schedule)?;
    Ok((h, s))
}

fn event_type_row(id: String, tenant: String, h: &Host, e: EventTypeInput, created_at: i64, now: i64) -> EventType {
    EventType {
        id,
        tenant_id: tenant,
        host_id: h.id.clone(),
        schedule_id: e.schedule_id,
        slug: e.slug,
        title: e.title,
        duration_minutes: e.duration_minutes,
        buffer_before_minutes: e.buffer_before_minutes,
        buffer_after_minutes: e.buffer_after_minutes,
        minimum_notice_minutes: e.minimum_notice_minutes,
        horizon_days: e.horizon_days,
        max_per_day: e.max_per_day,
        slot_interval_minutes: e.slot_interval_minutes,
        kind: match e.kind {
            BookingKind::Hosted => Kind::Hosted,
            BookingKind::ExternalLink => Kind::ExternalLink,
        },
        external_url: e.external_url,
        requires_confirmation: e.requires_confirmation,
        created_at,
        updated_at: now,
    }
}

/// `POST /v1/event-types`: creates an event type of a host.
#[utoipa::path(
    post,
    path = "/v1/event-types",
    tag = "scheduling",
    operation_id = "create_event_type",
    security(("bearerAuth" = ["bookings:write"])),
    request_body(content = EventTypeInput, content_type = "application/json"),
    responses(
        (status = 201, description = "Created.", body = EventTypeView),
        (status = 400, description = "Malformed JSON, unknown member, wrong type (`invalid_request`).", body = ErrorBody),
        (status = 409, description = "`slug_taken`.", body = ErrorBody),
        (status = 413, description = "Body too large (`payload_too_large`).", body = ErrorBody),
        (status = 422, description = "`missing_field`, `invalid_field`, `unknown_host`, `unknown_schedule`; `field` names the member.", body = ErrorBody)
    )
)]
pub async fn create_event_type(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsWrite).await?;
    let req: EventTypeInput = parse_json(&body.map_err(api::body_error)?)?;
    let (h, _) = check_event_type(&state, &tenant, &req).await?;
    let now = unix_now();
    let e = event_type_row(tokens::new_id("evt"), tenant, &h, req, now, now);
    state.store.create_event_type(&e).await?;
    tracing::info!(target: "booking", event_type = %e.id, "event type created");
    Ok((StatusCode::CREATED, axum::Json(event_type_view(&e, &h.reference))).into_response())
}

/// Query of `GET /v1/event-types`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventTypeQuery {
    /// Only the event types of the host with this `ref`.
    pub host_ref: Option<String>,
}

/// `GET /v1/event-types?host_ref=`: the tenant's event types (of one host), oldest first; an unknown `host_ref` gives
/// an empty list.
#[utoipa::path(
    get,
    path = "/v1/event-types",
    tag = "scheduling",
    operation_id = "list_event_types",
    security(("bearerAuth" = ["bookings:read"])),
    params(EventTypeQuery),
    responses(
        (status = 200, description = "The event types.", body = EventTypeList),
        (status = 400, description = "Unknown parameter (`invalid_request`).", body = ErrorBody)
    )
)]
pub async fn list_event_types(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<EventTypeQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsRead).await?;
    let Query(q) = query.map_err(|e| bad_request(e.body_text()))?;
    let hosts = state.store.hosts(&tenant).await?;
    let refs: BTreeMap<&str, &str> = hosts.iter().map(|h| (h.id.as_str(), h.reference.as_str())).collect();
    let host_id = match &q.host_ref {
        Some(r) => match hosts.iter().find(|h| &h.reference == r) {
            Some(h) => Some(h.id.as_str()),
            None => return Ok(axum::Json(EventTypeList { event_types: Vec::new() }).into_response()),
        },
        None => None,
    };
    let event_types = state
        .store
        .event_types(&tenant, host_id)
        .await?
        .iter()
        .map(|e| event_type_view(e, refs.get(e.host_id.as_str()).copied().unwrap_or_default()))
        .collect();
    Ok(axum::Json(EventTypeList { event_types }).into_response())
}

async fn find_event_type(state: &AppState, tenant: &str, id: &str) -> Result<(EventType, Host), ApiError> {
    if !plausible_id(id) {
        return Err(ApiError::not_found());
    }
    let e = state.store.event_type(tenant, id).await?.ok_or_else(ApiError::not_found)?;
    let h = state.store.host_by_id(tenant, &e.host_id).await?.ok_or_else(ApiError::not_found)?;
    Ok((e, h))
}

/// `GET /v1/event-types/{id}`.
#[utoipa::path(
    get,
    path = "/v1/event-types/{id}",
    tag = "scheduling",
    operation_id = "get_event_type",
    security(("bearerAuth" = ["bookings:read"])),
    params(("id" = String, Path, description = "Event type id, `evt_…`.")),
    responses(
        (status = 200, description = "The event type.", body = EventTypeView),
        (status = 404, description = "No such event type in the caller's tenant (`not_found`).", body = ErrorBody)
    )
)]
pub async fn get_event_type(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsRead).await?;
    let (e, h) = find_event_type(&state, &tenant, &id).await?;
    Ok(axum::Json(event_type_view(&e, &h.reference)).into_response())
}

/// `PATCH /v1/event-types/{id}`: members of `EventTypeInput` to change (null clears `max_per_day`,
/// `slot_interval_minutes`, `external_url`). Existing bookings are not changed.
#[utoipa::path(
    patch,
    path = "/v1/event-types/{id}",
    tag = "scheduling",
    operation_id = "update_event_type",
    security(("bearerAuth" = ["bookings:write"])),
    params(("id" = String, Path, description = "Event type id, `evt_…`.")),
    request_body(content = Object, description = "Members of `EventTypeInput` to change.", content_type = "application/json"),
    responses(
        (status = 200, description = "The event type.", body = EventTypeView),
        (status = 400, description = "Malformed JSON, not an object, unknown member, wrong type (`invalid_request`).", body = ErrorBody),
        (status = 404, description = "No such event type in the caller's tenant (`not_found`).", body = ErrorBody),
        (status = 409, description = "`slug_taken`.", body = ErrorBody),
        (status = 413, description = "Body too large (`payload_too_large`).", body = ErrorBody),
        (status = 422, description = "`invalid_field`, `missing_field`, `unknown_host`, `unknown_schedule`.", body = ErrorBody)
    )
)]
pub async fn update_event_type(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsWrite).await?;
    let body = body.map_err(api::body_error)?;
    let (e, h) = find_event_type(&state, &tenant, &id).await?;
    let current = EventTypeInput {
        host_ref: h.reference.clone(),
        schedule_id: e.schedule_id.clone(),
        slug: e.slug.clone(),
        title: e.title.clone(),
        duration_minutes: e.duration_minutes,
        buffer_before_minutes: e.buffer_before_minutes,
        buffer_after_minutes: e.buffer_after_minutes,
        minimum_notice_minutes: e.minimum_notice_minutes,
        horizon_days: e.horizon_days,
        max_per_day: e.max_per_day,
        slot_interval_minutes: e.slot_interval_minutes,
        kind: booking_kind(e.kind),
        external_url: e.external_url.clone(),
        requires_confirmation: e.requires_confirmation,
    };
    let req: EventTypeInput = merge_patch(&current, &body)?;
    let (h, _) = check_event_type(&state, &tenant, &req).await?;
    let updated = event_type_row(e.id.clone(), tenant, &h, req, e.created_at, unix_now());
    if !state.store.update_event_type(&updated).await? {
        return Err(ApiError::not_found());
    }
    Ok(axum::Json(event_type_view(&updated, &h.reference)).into_response())
}

/// `DELETE /v1/event-types/{id}`: its bookings are kept.
#[utoipa::path(
    delete,
    path = "/v1/event-types/{id}",
    tag = "scheduling",
    operation_id = "delete_event_type",
    security(("bearerAuth" = ["bookings:write"])),
    params(("id" = String, Path, description = "Event type id, `evt_…`.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "No such event type in the caller's tenant (`not_found`).", body = ErrorBody)
    )
)]
pub async fn delete_event_type(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsWrite).await?;
    if !plausible_id(&id) || !state.store.delete_event_type(&tenant, &id).await? {
        return Err(ApiError::not_found());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------------------------------------------------------
// Slots

/// The longest range of `GET /v1/slots`, days (`to - from`; longer answers 400 `range_too_long`).
pub const MAX_SLOT_RANGE_DAYS: i64 = 62;
/// The range of `GET /v1/slots` without `to`, days.
pub const DEFAULT_SLOT_RANGE_DAYS: i64 = 7;

/// The free slots of event type `e` (schedule `s`) in `[from, to)` at `now`, from the host's pending and confirmed
/// bookings.
pub(crate) async fn compute_slots(
    state: &AppState,
    h: &Host,
    e: &EventType,
    s: &Schedule,
    from: i64,
    to: i64,
    now: i64,
) -> Result<Vec<slots::Slot>, ApiError> {
    let availability = stored_availability(s)?;
    let duration_s = e.duration_minutes * 60;
    let horizon = i64::try_from(state.policy.horizon.as_secs()).unwrap_or(i64::MAX);
    let rules = SlotRules {
        duration_s,
        interval_s: e.slot_interval_minutes.unwrap_or(e.duration_minutes) * 60,
        buffer_before_s: e.buffer_before_minutes * 60,
        buffer_after_s: e.buffer_after_minutes * 60,
        minimum_notice_s: e.minimum_notice_minutes * 60,
        horizon_s: (e.horizon_days * 86_400).min(horizon),
        max_per_day: e.max_per_day.and_then(|m| u32::try_from(m).ok()),
    };
    // Busy intervals that can touch a slot (buffers up to a day each side), and the bookings of the local dates the
    // range touches (two days each side covers any zone offset).
    const MARGIN: i64 = 3 * 86_400;
    let busy = state.store.host_busy(&h.tenant_id, &h.reference, from - MARGIN, to + duration_s + MARGIN).await?;
    let blocked: Vec<(i64, i64)> = busy.iter().map(|b| b.blocked).collect();
    let counted: Vec<i64> =
        busy.iter().filter(|b| b.event_type_id.as_deref() == Some(e.id.as_str())).map(|b| b.start_at).collect();
    Ok(slots::free_slots(&availability, &rules, &blocked, &counted, SlotQuery { from, to, now }))
}

/// Query of `GET /v1/slots`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SlotsQuery {
    /// The host's `ref`.
    pub host_ref: String,
    /// The event type: its slug (among the host's) or its id `evt_…`.
    pub event_type: String,
    /// First start, RFC 3339 with an offset (default now).
    pub from: Option<String>,
    /// End of the range (exclusive), RFC 3339 with an offset, after `from` and at most 62 days later (default `from`
    /// + 7 days).
    pub to: Option<String>,
    /// IANA zone the days and local times are shown in (default the schedule's).
    pub time_zone: Option<String>,
}

/// One free start.
#[derive(Debug, Serialize, ToSchema)]
pub struct SlotView {
    /// RFC 3339 UTC.
    pub start_at: String,
    /// `start_at` + the duration, RFC 3339 UTC.
    pub end_at: String,
    /// `start_at` in the asked zone, RFC 3339 with that zone's offset then.
    pub local_start_at: String,
    /// The local wall time in the asked zone, `HH:MM`.
    pub local_time: String,
}

/// The slots of one local date of the asked zone.
#[derive(Debug, Serialize, ToSchema)]
pub struct SlotDay {
    /// `YYYY-MM-DD` in the asked zone.
    pub date: String,
    /// Free starts, ascending.
    pub slots: Vec<SlotView>,
}

/// `GET /v1/slots` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct SlotsAnswer {
    /// The host's `ref`.
    pub host_ref: String,
    /// The event type's id.
    pub event_type_id: String,
    /// The event type's slug.
    pub slug: String,
    /// Minutes.
    pub duration_minutes: i64,
    /// The zone of `days` and the local times.
    pub time_zone: String,
    /// The schedule's zone.
    pub schedule_time_zone: String,
    /// The range, RFC 3339 UTC.
    pub from: String,
    /// The range end (exclusive), RFC 3339 UTC.
    pub to: String,
    /// Dates with at least one free start, ascending.
    pub days: Vec<SlotDay>,
}

/// `GET /v1/slots?host_ref&event_type&from&to&time_zone`: the free starts of an event type, grouped by local date
/// in the asked zone (rules: availability in the schedule's zone, minus busy time with both sides' buffers, minimum
/// notice, horizon, maximum per day; DST gaps skipped, repeated wall times offered once at their first occurrence;
/// README "Slots").
#[utoipa::path(
    get,
    path = "/v1/slots",
    tag = "scheduling",
    operation_id = "list_slots",
    security(("bearerAuth" = ["bookings:read"])),
    params(SlotsQuery),
    responses(
        (status = 200, description = "Free starts by local date.", body = SlotsAnswer),
        (status = 400, description = "Unknown or missing parameter (`invalid_request`); range over 62 days (`range_too_long`).", body = ErrorBody),
        (status = 404, description = "No such host or event type in the caller's tenant (`not_found`).", body = ErrorBody),
        (status = 422, description = "`invalid_datetime` (`from`, `to`), `invalid_field` (`to` not after `from`), `invalid_time_zone`.", body = ErrorBody)
    )
)]
pub async fn list_slots(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<SlotsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsRead).await?;
    let Query(q) = query.map_err(|e| bad_request(e.body_text()))?;
    let now = unix_now();
    let from = q.from.as_deref().map(|v| parse_instant("from", v)).transpose()?.unwrap_or(now);
    let to = q.to.as_deref().map(|v| parse_instant("to", v)).transpose()?;
    let to = to.unwrap_or(from.saturating_add(DEFAULT_SLOT_RANGE_DAYS * 86_400));
    if to <= from {
        return Err(invalid_field("to", "`to` must be after `from`"));
    }
    if to - from > MAX_SLOT_RANGE_DAYS * 86_400 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "range_too_long",
            format!("`to` may be at most {MAX_SLOT_RANGE_DAYS} days after `from`"),
        )
        .field("to"));
    }
    let shown: Option<Tz> = match &q.time_zone {
        Some(z) if valid_time_zone(z) => z.parse().ok(),
        Some(_) => return Err(time_zone_error("time_zone")),
        None => None,
    };
    let h = find_host(&state, &tenant, &q.host_ref).await?;
    if !plausible_id(&q.event_type) {
        return Err(ApiError::not_found());
    }
    let e = match state.store.event_type_by_slug(&tenant, &h.id, &q.event_type).await? {
        Some(e) => e,
        None => state
            .store
            .event_type(&tenant, &q.event_type)
            .await?
            .filter(|e| e.host_id == h.id)
            .ok_or_else(ApiError::not_found)?,
    };
    let s = state.store.schedule(&tenant, &h.id, &e.schedule_id).await?.ok_or_else(ApiError::not_found)?;
    let found = compute_slots(&state, &h, &e, &s, from, to, now).await?;
    let tz: Tz = shown.or_else(|| s.time_zone.parse().ok()).unwrap_or(chrono_tz::UTC);
    let mut days: Vec<SlotDay> = Vec::new();
    for slot in &found {
        let Some(local) = tz.timestamp_opt(slot.start_at, 0).single() else { continue };
        let date = local.date_naive().to_string();
        let view = SlotView {
            start_at: rfc3339(slot.start_at),
            end_at: rfc3339(slot.end_at),
            local_start_at: local.to_rfc3339_opts(SecondsFormat::Secs, true),
            local_time: local.format("%H:%M").to_string(),
        };
        match days.last_mut() {
            Some(d) if d.date == date => d.slots.push(view),
            _ => days.push(SlotDay { date, slots: vec![view] }),
        }
    }
    let answer = SlotsAnswer {
        host_ref: h.reference,
        event_type_id: e.id,
        slug: e.slug,
        duration_minutes: e.duration_minutes,
        time_zone: tz.name().to_string(),
        schedule_time_zone: s.time_zone,
        from: rfc3339(from),
        to: rfc3339(to),
        days,
    };
    Ok(axum::Json(answer).into_response())
}

// ---------------------------------------------------------------------------------------------------------------
// Bookings from a slot

/// The guest of a booking made from a slot.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SlotGuest {
    /// 1-128 characters without control characters.
    #[schema(min_length = 1, max_length = 128, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub display_name: String,
    /// Contact email (`local@domain.tld`, at most 254 characters).
    #[serde(default)]
    #[schema(max_length = 254, format = Email)]
    pub email: Option<String>,
    /// IANA time zone name.
    #[serde(default)]
    #[schema(max_length = 64, example = "America/New_York")]
    pub time_zone: Option<String>,
    /// BCP 47 language tag.
    #[serde(default)]
    #[schema(max_length = 64, pattern = r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$", example = "en-US")]
    pub locale: Option<String>,
    /// The app's id of the guest, 1-128 characters without control characters.
    #[serde(default, rename = "ref")]
    #[schema(min_length = 1, max_length = 128, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub reference: Option<String>,
}

/// `POST /v1/event-types/{id}/bookings` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SlotBookingInput {
    /// A start offered by `GET /v1/slots` right now, RFC 3339 with an offset.
    #[schema(format = DateTime)]
    pub start_at: String,
    /// The guest.
    pub guest: SlotGuest,
    /// The guest's note to the host, 1-2000 characters (line breaks and tabs allowed).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 2000)]
    pub note: Option<String>,
    /// Any JSON object of at most 4096 bytes and 4 levels, echoed back verbatim (as on `POST /v1/bookings`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Box<serde_json::value::RawValue>>,
}

/// The longest note, characters.
pub const MAX_NOTE_CHARS: usize = 2000;

/// `POST /v1/event-types/{id}/bookings`: books an offered slot. The booking gets the event type's title, duration,
/// buffers, kind and URL, status `pending` when it requires confirmation (else `confirmed`), the host participant
/// from the host record (its `ref`, name, email, zone) and the guest from the body; it goes through the create path
/// of `POST /v1/bookings` (same answer, same `Idempotency-Key` rules, the database still refuses a double booking).
#[utoipa::path(
    post,
    path = "/v1/event-types/{id}/bookings",
    tag = "scheduling",
    operation_id = "book_slot",
    security(("bearerAuth" = ["bookings:write"])),
    params(
        ("id" = String, Path, description = "Event type id, `evt_…`."),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 printable ASCII characters; kept 24 h per tenant (shared with `POST /v1/bookings`).", min_length = 1, max_length = 255, pattern = r"^[\x20-\x7E]+$")
    ),
    request_body(content = SlotBookingInput, content_type = "application/json"),
    responses(
        (status = 201, description = "Created, as `POST /v1/bookings` answers (link tokens shown once).", body = BookingView, headers(("Idempotent-Replayed" = String, description = "`true` on a replay of a recorded `Idempotency-Key`."))),
        (status = 400, description = "Malformed JSON, unknown member, wrong type (`invalid_request`); bad `Idempotency-Key`.", body = ErrorBody),
        (status = 404, description = "No such event type in the caller's tenant (`not_found`).", body = ErrorBody),
        (status = 409, description = "`slot_unavailable`: `start_at` is not an offered slot now (taken, outside availability, notice or horizon, day full); `idempotency_key_in_use`.", body = ErrorBody),
        (status = 413, description = "Body too large (`payload_too_large`).", body = ErrorBody),
        (status = 422, description = "`missing_field`, `invalid_field`, `invalid_datetime`, `invalid_time_zone`, `idempotency_key_reuse`, and the checks of `POST /v1/bookings`.", body = ErrorBody)
    )
)]
pub async fn book_slot(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::BookingsWrite).await?;
    let body = body.map_err(api::body_error)?;
    let (e, h) = find_event_type(&state, &tenant, &id).await?;
    let idem = api::idempotency_key(&headers)?;
    let hash = api::request_hash(&body);
    if let Some(key) = &idem
        && let Some(rec) = state.store.idempotency_record(&tenant, key, unix_now()).await?
    {
        return api::replay(&rec, &hash);
    }
    let req: SlotBookingInput = parse_json(&body)?;
    let g = &req.guest;
    check_text("guest.display_name", &g.display_name, 128)?;
    if let Some(r) = &g.reference {
        check_text("guest.ref", r, 128)?;
    }
    if let Some(v) = &g.email
        && !plausible_email(v)
    {
        return Err(invalid_field("guest.email", "`email` must look like local@domain.tld, at most 254 characters"));
    }
    if let Some(z) = &g.time_zone
        && !valid_time_zone(z)
    {
        return Err(time_zone_error("guest.time_zone"));
    }
    if let Some(l) = &g.locale
        && !plausible_locale(l)
    {
        return Err(invalid_field("guest.locale", "`locale` must be a BCP 47 language tag, e.g. es or en-GB"));
    }
    if let Some(n) = &req.note {
        let chars = n.chars().count();
        if chars == 0 || chars > MAX_NOTE_CHARS || n.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        {
            return Err(invalid_field(
                "note",
                format!("`note` must be 1 to {MAX_NOTE_CHARS} characters without control characters"),
            ));
        }
    }
    let start = parse_instant("start_at", &req.start_at)?;
    let guest = CreateParticipant {
        reference: req.guest.reference,
        role: "guest".into(),
        display_name: req.guest.display_name,
        email: req.guest.email,
        time_zone: req.guest.time_zone,
        locale: req.guest.locale,
    };
    let slot = OfferedSlot { start, guest, note: req.note, metadata: req.metadata };
    book_offered(&state, tenant, &h, &e, slot, idem, hash).await
}

/// What a guest asks for when booking a slot: the start (Unix seconds), the guest participant (its fields checked
/// by the caller), the note (checked) and the metadata.
pub(crate) struct OfferedSlot {
    /// The start, Unix seconds.
    pub start: i64,
    /// The guest participant (role `guest`).
    pub guest: CreateParticipant,
    /// The guest's note.
    pub note: Option<String>,
    /// The app's metadata.
    pub metadata: Option<Box<serde_json::value::RawValue>>,
}

/// Books `slot` of event type `e` of host `h`: 409 `slot_unavailable` unless its start is a free slot now (the slot
/// computation of `GET /v1/slots`), else the booking of [`book_slot`] through [`api::create_checked`] (the answer
/// of `POST /v1/bookings`). Shared by `POST /v1/event-types/{id}/bookings` and the booking page.
pub(crate) async fn book_offered(
    state: &AppState,
    tenant: String,
    h: &Host,
    e: &EventType,
    slot: OfferedSlot,
    idem: Option<String>,
    hash: Vec<u8>,
) -> Result<Response, ApiError> {
    let start = slot.start;
    let now = unix_now();
    let s = state.store.schedule(&tenant, &h.id, &e.schedule_id).await?.ok_or_else(ApiError::not_found)?;
    let offered = compute_slots(state, h, e, &s, start, start.saturating_add(1), now).await?;
    if !offered.iter().any(|x| x.start_at == start) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "slot_unavailable",
            "`start_at` is not a free slot of this event type now (GET /v1/slots lists them)",
        )
        .field("start_at"));
    }
    let host = CreateParticipant {
        reference: Some(h.reference.clone()),
        role: "host".into(),
        display_name: h.display_name.clone(),
        email: h.email.clone(),
        time_zone: Some(h.time_zone.clone()),
        locale: None,
    };
    let create = CreateBooking {
        title: e.title.clone(),
        start_at: rfc3339(start),
        end_at: rfc3339(start + e.duration_minutes * 60),
        external_id: None,
        participants: vec![host, slot.guest],
        status: if e.requires_confirmation { CreateStatus::Pending } else { CreateStatus::Confirmed },
        buffer_before_s: e.buffer_before_minutes * 60,
        buffer_after_s: e.buffer_after_minutes * 60,
        kind: booking_kind(e.kind),
        external_url: e.external_url.clone(),
        metadata: slot.metadata,
        join_policy: None,
    };
    let origin = BookingOrigin { event_type_id: Some(e.id.clone()), note: slot.note };
    api::create_checked(state, tenant, create, idem, hash, origin).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        for ok in ["a", "intro-30", "x1-y2-z3"] {
            assert!(valid_slug(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a--b", "A", "a_b", "a b", &"a".repeat(65)] {
            assert!(!valid_slug(bad), "{bad}");
        }
    }

    #[test]
    fn schedules_are_checked_and_normalized() {
        let input: ScheduleInput = serde_json::from_value(serde_json::json!({
            "name": "x",
            "weekly": [{"day": "friday", "intervals": [{"start": "13:00", "end": "17:00"}, {"start": "09:00", "end": "12:00"}]},
                       {"day": "monday", "intervals": [{"start": "09:00", "end": "24:00"}]}],
            "overrides": [{"date": "2027-12-24", "intervals": []}]
        }))
        .unwrap();
        let a = availability_of(&input, "Europe/Berlin").unwrap();
        let (weekly, overrides) = normalized(&input, &a);
        assert_eq!(
            weekly,
            r#"[{"day":"monday","intervals":[{"start":"09:00","end":"24:00"}]},{"day":"friday","intervals":[{"start":"09:00","end":"12:00"},{"start":"13:00","end":"17:00"}]}]"#
        );
        assert_eq!(overrides, r#"[{"date":"2027-12-24","intervals":[]}]"#);
        let field = |v: serde_json::Value| {
            let i: ScheduleInput = serde_json::from_value(v).unwrap();
            format!("{:?}", availability_of(&i, "UTC").unwrap_err())
        };
        let e = field(
            serde_json::json!({"name": "x", "weekly": [{"day": "monday", "intervals": [{"start": "09:00", "end": "12:00"}, {"start": "11:00", "end": "13:00"}]}]}),
        );
        assert!(e.contains("weekly[0].intervals[1]"), "{e}");
        let e = field(
            serde_json::json!({"name": "x", "weekly": [{"day": "monday", "intervals": []}, {"day": "monday", "intervals": []}]}),
        );
        assert!(e.contains("weekly[1].day"), "{e}");
        let e = field(serde_json::json!({"name": "x", "overrides": [{"date": "2027-02-30", "intervals": []}]}));
        assert!(e.contains("overrides[0].date"), "{e}");
        let e = field(
            serde_json::json!({"name": "x", "weekly": [{"day": "monday", "intervals": [{"start": "10:00", "end": "09:00"}]}]}),
        );
        assert!(e.contains("weekly[0].intervals[0].end"), "{e}");
        assert!(availability_of(&input, "Mars/Olympus").is_err());
    }
}
