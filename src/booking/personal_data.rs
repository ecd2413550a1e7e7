//! Personal data: retention, erasure and export (README, "Retention and erasure"; GDPR Art. 5(1)(e) storage
//! limitation, Art. 15 access, Art. 17 erasure).
//!
//! What is personal in the store: participant names, emails, refs, time zones and locales, link tokens (hash and
//! sealed copy); a booking's title, note, metadata, external id and host ref; the webhook payloads that carried a
//! booking; email outbox rows (their recipient); browser summaries of call reports (browser family, candidate pair);
//! stored idempotent responses; host profiles. What stays after a purge or erasure is anonymous: a booking's times,
//! status, durations, call facts (joins, connected time, relayed bytes) and counts, so usage figures still add up.
//!
//! - **Retention** ([`run`], [`Store::purge_expired`]): a booking's personal data is purged `[retention]
//!   personal_data` (or the tenant's `retention_s`) after its `hard_end_at`. Each batch is one transaction that
//!   claims every booking with `UPDATE bookings SET purged_at = … WHERE id = … AND purged_at IS NULL` before purging
//!   it: a second node running at the same time gets 0 rows for a claimed booking (PostgreSQL: it waits for the
//!   first transaction's row lock, then sees `purged_at` set; SQLite has one writer) and skips it; a purge interrupted
//!   half-way rolls back whole and the next run does it again.
//! - **Erasure** ([`Store::erase_subject`], `POST /v1/data-subjects/erase`, `duet erase`): one person, by `ref` or
//!   email, across every booking, webhook delivery, email outbox row, call report and host profile of one tenant, in
//!   one transaction, with a `data_subject.erased` webhook event that carries only counts.
//! - **Export** ([`Store::export_subject`], `POST /v1/data-subjects/export`): the same selector, everything held
//!   about the person as JSON (no link token hashes or sealed tokens).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use super::api::{ApiError, authenticate, authenticate_key, body_error, parse_json, plausible_id, rfc3339};
use super::store::{Store, StoreError};
use super::tokens;
use super::webhooks::{enqueue_event, envelope};
use crate::api_key::Scope;
use crate::app::{AppState, unix_now};
use crate::config::RetentionConfig;
use crate::metrics::Metrics;
use crate::openapi::ErrorBody;

/// The title a purged booking keeps, and the display name of its purged participants.
pub const PURGED_TEXT: &str = "(purged)";

/// The title of a booking an erased person was in, the display name of an erased participant or host.
pub const ERASED_TEXT: &str = "(erased)";

/// Bookings purged per transaction by the retention task.
pub const PURGE_BATCH: i64 = 50;

/// The WebSocket close code an erased participant's live socket gets: 4004 (link revoked).
pub const ERASED_CLOSE_CODE: u16 = 4004;

/// Who a data-subject request is about: exactly one of `ref` (the integrator's id of the person, as given in
/// `participants[].ref` or a host's `ref`) or `email` (compared case-insensitively).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubjectSelector {
    /// The person's `ref`, 1 to 200 characters.
    #[serde(default, rename = "ref")]
    pub reference: Option<String>,
    /// The person's email address, 3 to 320 characters with an `@`.
    #[serde(default)]
    pub email: Option<String>,
}

/// A validated [`SubjectSelector`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// By `ref` (exact match).
    Ref(String),
    /// By email (case-insensitive match).
    Email(String),
}

impl SubjectSelector {
    /// Exactly one of `ref` and `email`: 422 `missing_field` (neither), `invalid_field` (both, or a bad value; `field`
    /// names it).
    pub fn validate(self) -> Result<Subject, ApiError> {
        let bad = |field: &str, msg: &str| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", msg.to_string()).field(field)
        };
        match (self.reference, self.email) {
            (Some(_), Some(_)) => Err(bad("email", "give `ref` or `email`, not both")),
            (None, None) => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "missing_field",
                "give the person's `ref` or `email`",
            )
            .field("ref")),
            (Some(r), None) => {
                let n = r.chars().count();
                if n == 0 || n > 200 || r.chars().any(char::is_control) {
                    return Err(bad("ref", "1 to 200 characters without control characters"));
                }
                Ok(Subject::Ref(r))
            }
            (None, Some(e)) => {
                let n = e.chars().count();
                if !(3..=320).contains(&n) || !e.contains('@') || e.chars().any(|c| c.is_control() || c == ' ') {
                    return Err(bad("email", "an email address (3 to 320 characters with an `@`)"));
                }
                Ok(Subject::Email(e))
            }
        }
    }
}

impl Subject {
    /// The SQL condition matching the person in table alias `t` (a `ref` and an `email` column), with its value as
    /// parameter `$n`.
    fn condition(&self, t: &str, n: usize) -> String {
        match self {
            Subject::Ref(_) => format!("{t}.ref = ${n}"),
            Subject::Email(_) => format!("LOWER({t}.email) = LOWER(${n})"),
        }
    }

    fn value(&self) -> &str {
        match self {
            Subject::Ref(v) | Subject::Email(v) => v,
        }
    }
}

/// Counts of what one erasure changed (`POST /v1/data-subjects/erase`, the `data_subject.erased` event, `duet
/// erase`). All zero when the tenant holds nothing about the person (or it was erased before).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct ErasedCounts {
    /// Participant rows cleared (name, ref, email, time zone, locale; link replaced, so it answers 404).
    pub participants: i64,
    /// Bookings the person was in (title, note, metadata and external id cleared; times, status and figures kept).
    pub bookings: i64,
    /// Host profiles cleared (name, email; ref and agenda secret replaced).
    pub hosts: i64,
    /// Webhook deliveries about those bookings whose payload was replaced by `{"booking_id", "erased": true}` (the
    /// attempt log, which holds only status codes and transport errors, is kept).
    pub webhook_deliveries: i64,
    /// Email outbox rows to the person, deleted (pending ones are not sent).
    pub emails: i64,
    /// Browser summaries of the person's calls, deleted.
    pub call_reports: i64,
    /// Stored idempotent responses of those bookings, deleted (a retry with the same key creates anew).
    pub idempotency_records: i64,
}

/// A participant whose link an erasure replaced: the daemon closes its socket and revokes its TURN credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErasedLink {
    /// Booking id.
    pub booking_id: String,
    /// Participant id.
    pub participant_id: String,
    /// The participant's `link_epoch` after the erasure (credentials of older epochs are refused).
    pub link_epoch: i64,
    /// The booking's `max_hard_end_at` (Unix seconds): how long the relay keeps the revocation.
    pub max_hard_end_at: i64,
}

/// Answer of `POST /v1/data-subjects/erase`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErasureView {
    /// What was erased.
    pub erased: ErasedCounts,
}

/// One participant row in an export (no link token hash, no sealed token).
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportParticipant {
    /// `par_…`.
    pub id: String,
    /// The booking.
    pub booking_id: String,
    /// `host` or `guest`.
    pub role: String,
    /// The integrator's id of the person.
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    /// Display name.
    pub display_name: String,
    /// Email address.
    pub email: Option<String>,
    /// IANA time zone.
    pub time_zone: Option<String>,
    /// BCP 47 locale.
    pub locale: Option<String>,
    /// First admission to the room, RFC 3339 UTC.
    pub first_joined_at: Option<String>,
    /// When the link was revoked, RFC 3339 UTC.
    pub link_revoked_at: Option<String>,
}

/// One host profile in an export (no agenda secret hash).
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportHost {
    /// `hst_…`.
    pub id: String,
    /// The integrator's id of the host.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Display name.
    pub display_name: String,
    /// Email address.
    pub email: Option<String>,
    /// IANA time zone.
    pub time_zone: String,
    /// Creation, RFC 3339 UTC.
    pub created_at: String,
}

/// One booking the person is in.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportBooking {
    /// `bkg_…`.
    pub id: String,
    /// Title.
    pub title: String,
    /// `pending`, `confirmed`, `rejected` or `cancelled`.
    pub status: String,
    /// Start, RFC 3339 UTC.
    pub start_at: String,
    /// End, RFC 3339 UTC.
    pub end_at: String,
    /// The integrator's id of the booking.
    pub external_id: Option<String>,
    /// Free-text note.
    pub note: Option<String>,
    /// The integrator's metadata (a JSON object).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Creation, RFC 3339 UTC.
    pub created_at: String,
}

/// One webhook delivery that carried a booking of the person.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportDelivery {
    /// `whd_…`.
    pub id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// E.g. `booking.created`.
    pub event_type: String,
    /// `pending`, `sending`, `delivered` or `failed`.
    pub status: String,
    /// Creation, RFC 3339 UTC.
    pub created_at: String,
    /// The body as sent (`{"type", "timestamp", "data"}`).
    #[schema(value_type = Object)]
    pub payload: Value,
}

/// One email outbox row to the person.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportEmail {
    /// `eml_…`.
    pub id: String,
    /// The booking.
    pub booking_id: String,
    /// The recipient participant.
    pub participant_id: String,
    /// `confirmation`, `reschedule`, `cancellation` or `reminder`.
    pub kind: String,
    /// `pending`, `sending`, `sent`, `failed` or `dropped`.
    pub status: String,
    /// Creation, RFC 3339 UTC.
    pub created_at: String,
    /// When it was sent, failed or dropped, RFC 3339 UTC.
    pub finished_at: Option<String>,
}

/// One call report entry of the person: the call facts of the participant and its browser summary.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportCallReport {
    /// The booking.
    pub booking_id: String,
    /// The participant.
    pub participant_id: String,
    /// Admissions to the room.
    pub joins: i64,
    /// Time connected, milliseconds.
    pub connected_ms: i64,
    /// Payload bytes relayed towards the peer.
    pub relay_bytes_to_peer: i64,
    /// Payload bytes relayed towards the participant.
    pub relay_bytes_to_client: i64,
    /// The browser summary as stored (`POST /v1/join/{link_token}/report`), if one came.
    #[schema(value_type = Option<Object>)]
    pub browser_summary: Option<Value>,
    /// When the summary came, RFC 3339 UTC.
    pub browser_summary_received_at: Option<String>,
}

/// Answer of `POST /v1/data-subjects/export`: everything the tenant's data holds about the person, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubjectExport {
    /// The person's participant rows.
    pub participants: Vec<ExportParticipant>,
    /// Host profiles of the person.
    pub hosts: Vec<ExportHost>,
    /// The bookings the person is in.
    pub bookings: Vec<ExportBooking>,
    /// Webhook deliveries about those bookings.
    pub webhook_deliveries: Vec<ExportDelivery>,
    /// Email outbox rows to the person.
    pub emails: Vec<ExportEmail>,
    /// The person's call facts and browser summaries.
    pub call_reports: Vec<ExportCallReport>,
}

/// What one run of [`Store::purge_expired`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeRun {
    /// Bookings this run purged (claimed and cleared).
    pub bookings: u64,
}

fn random_hash() -> Vec<u8> {
    tokens::link_token_hash(&tokens::new_link_token())
}

fn opt_time(v: Option<i64>) -> Option<String> {
    v.map(rfc3339)
}

/// Replaces the payload of every webhook delivery about `booking` with `{"type", "timestamp", "data":
/// {"booking_id", <marker>: true}}`; returns how many rows changed (rows already replaced are skipped).
async fn redact_deliveries(tx: &mut Transaction<'_, Any>, booking: &str, marker: &str) -> Result<i64, StoreError> {
    let rows = sqlx::query("SELECT id, event_type, created_at, payload FROM webhook_deliveries WHERE booking_id = $1")
        .bind(booking)
        .fetch_all(&mut **tx)
        .await?;
    let mut n = 0;
    for r in &rows {
        let id: String = r.try_get("id")?;
        let event_type: String = r.try_get("event_type")?;
        let created_at: i64 = r.try_get("created_at")?;
        let old: String = r.try_get("payload")?;
        let new = envelope(&event_type, created_at, &json!({"booking_id": booking, marker: true}));
        if old == new {
            continue;
        }
        sqlx::query("UPDATE webhook_deliveries SET payload = $1 WHERE id = $2")
            .bind(&new)
            .bind(&id)
            .execute(&mut **tx)
            .await?;
        n += 1;
    }
    Ok(n)
}

impl Store {
    /// The tenant's retention override (`tenants.retention_s`, seconds after `hard_end_at`): `Ok(None)` for no such
    /// tenant, `Ok(Some(None))` for a tenant on the configured default.
    pub async fn tenant_retention(&self, tenant: &str) -> Result<Option<Option<i64>>, StoreError> {
        let row = sqlx::query("SELECT retention_s FROM tenants WHERE id = $1")
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get::<Option<i64>, _>("retention_s")).transpose().map_err(Into::into)
    }

    /// Sets (or, with `None`, clears) the tenant's retention override; `false` for no such tenant.
    pub async fn set_tenant_retention(&self, tenant: &str, retention_s: Option<i64>) -> Result<bool, StoreError> {
        let n = sqlx::query("UPDATE tenants SET retention_s = $1 WHERE id = $2")
            .bind(retention_s)
            .bind(tenant)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// Purges, at `now` (Unix seconds), up to `batch` bookings whose `hard_end_at` plus their tenant's retention
    /// (`tenants.retention_s`, else `default_retention_s`) has passed and that are not purged yet, in one transaction
    /// (see the module documentation for why a concurrent run on another node is harmless). Per booking: title
    /// becomes [`PURGED_TEXT`]; note, metadata, external id and host ref are cleared; participants lose name (it
    /// becomes [`PURGED_TEXT`]), ref, email, time zone, locale and link (hash replaced by a random one, sealed
    /// copy cleared); webhook payloads are replaced by `{"booking_id", "purged": true}`; email outbox rows and
    /// idempotency records are deleted; browser summaries keep only round trip time, loss and bitrates. Times,
    /// status, call facts and counts stay.
    pub async fn purge_expired(&self, now: i64, default_retention_s: i64, batch: i64) -> Result<PurgeRun, StoreError> {
        let rows = sqlx::query(
            "SELECT b.id FROM bookings b LEFT JOIN tenants t ON t.id = b.tenant_id \
             WHERE b.purged_at IS NULL AND b.hard_end_at + COALESCE(t.retention_s, $1) <= $2 \
             ORDER BY b.hard_end_at, b.id LIMIT $3",
        )
        .bind(default_retention_s)
        .bind(now)
        .bind(batch)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Ok(PurgeRun::default());
        }
        let ids: Vec<String> = rows.iter().map(|r| r.try_get("id")).collect::<Result<_, _>>()?;
        let mut tx = self.pool.begin().await?;
        let mut run = PurgeRun::default();
        for id in &ids {
            let claimed = sqlx::query(
                "UPDATE bookings SET purged_at = $1, title = $2, note = NULL, metadata = NULL, external_id = NULL, \
                 host_ref = NULL WHERE id = $3 AND purged_at IS NULL",
            )
            .bind(now)
            .bind(PURGED_TEXT)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if claimed != 1 {
                continue; // purged by another node meanwhile
            }
            let pids =
                sqlx::query("SELECT id FROM participants WHERE booking_id = $1").bind(id).fetch_all(&mut *tx).await?;
            for p in &pids {
                let pid: String = p.try_get("id")?;
                sqlx::query(
                    "UPDATE participants SET display_name = $1, ref = NULL, email = NULL, time_zone = NULL, \
                     locale = NULL, link_token_hash = $2, link_token_enc = NULL WHERE id = $3",
                )
                .bind(PURGED_TEXT)
                .bind(random_hash())
                .bind(&pid)
                .execute(&mut *tx)
                .await?;
            }
            redact_deliveries(&mut tx, id, "purged").await?;
            sqlx::query("DELETE FROM email_outbox WHERE booking_id = $1").bind(id).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM idempotency_keys WHERE booking_id = $1").bind(id).execute(&mut *tx).await?;
            let reports = sqlx::query("SELECT participant_id, summary FROM call_client_reports WHERE booking_id = $1")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
            for r in &reports {
                let pid: String = r.try_get("participant_id")?;
                let text: String = r.try_get("summary")?;
                let mut v: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap_or_default();
                v.retain(|k, _| {
                    matches!(
                        k.as_str(),
                        "round_trip_time_ms" | "packet_loss" | "inbound_bitrate_bps" | "outbound_bitrate_bps"
                    )
                });
                sqlx::query(
                    "UPDATE call_client_reports SET summary = $1 WHERE booking_id = $2 AND participant_id = $3",
                )
                .bind(Value::Object(v).to_string())
                .bind(id)
                .bind(&pid)
                .execute(&mut *tx)
                .await?;
            }
            run.bookings += 1;
        }
        tx.commit().await?;
        Ok(run)
    }

    /// Erases `subject` in `tenant` at `now` (Unix seconds), in one transaction: the person's participant rows
    /// (name becomes [`ERASED_TEXT`]; ref, email, time zone, locale cleared; link hash replaced by a random one, sealed
    /// copy cleared, `link_epoch` + 1, `link_revoked_at` set), the title (becomes [`ERASED_TEXT`]), note, metadata
    /// and external id of their bookings (and `host_ref` where they are the host), the payloads of webhook deliveries about
    /// those bookings, their email outbox rows and browser summaries, the bookings' stored idempotent responses, and
    /// host profiles matching the selector (name [`ERASED_TEXT`], email cleared, ref and agenda secret replaced).
    /// When anything was erased, a `data_subject.erased` event with the counts (and nothing else) is written to the
    /// outbox. Returns the counts and the replaced links (for closing sockets and revoking TURN credentials).
    pub async fn erase_subject(
        &self,
        tenant: &str,
        subject: &Subject,
        now: i64,
    ) -> Result<(ErasedCounts, Vec<ErasedLink>), StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(&format!(
            "SELECT p.id, p.booking_id, p.role, p.ref FROM participants p JOIN bookings b ON b.id = p.booking_id \
             WHERE b.tenant_id = $1 AND {} ORDER BY p.booking_id, p.id",
            subject.condition("p", 2)
        ))
        .bind(tenant)
        .bind(subject.value())
        .fetch_all(&mut *tx)
        .await?;
        let mut counts = ErasedCounts::default();
        let mut links = Vec::new();
        let mut bookings: Vec<String> = Vec::new();
        for r in &rows {
            let pid: String = r.try_get("id")?;
            let bid: String = r.try_get("booking_id")?;
            let role: String = r.try_get("role")?;
            let old_ref: Option<String> = r.try_get("ref")?;
            sqlx::query(
                "UPDATE participants SET display_name = $1, ref = NULL, email = NULL, time_zone = NULL, \
                 locale = NULL, link_token_hash = $2, link_token_enc = NULL, link_epoch = link_epoch + 1, \
                 link_revoked_at = COALESCE(link_revoked_at, $3) WHERE id = $4",
            )
            .bind(ERASED_TEXT)
            .bind(random_hash())
            .bind(now)
            .bind(&pid)
            .execute(&mut *tx)
            .await?;
            if role == "host"
                && let Some(old) = old_ref
            {
                sqlx::query("UPDATE bookings SET host_ref = NULL WHERE id = $1 AND host_ref = $2")
                    .bind(&bid)
                    .bind(&old)
                    .execute(&mut *tx)
                    .await?;
            }
            let after = sqlx::query(
                "SELECT p.link_epoch, b.max_hard_end_at FROM participants p JOIN bookings b ON b.id = p.booking_id \
                 WHERE p.id = $1",
            )
            .bind(&pid)
            .fetch_one(&mut *tx)
            .await?;
            links.push(ErasedLink {
                booking_id: bid.clone(),
                participant_id: pid.clone(),
                link_epoch: after.try_get("link_epoch")?,
                max_hard_end_at: after.try_get("max_hard_end_at")?,
            });
            counts.participants += 1;
            counts.emails += sqlx::query("DELETE FROM email_outbox WHERE participant_id = $1 AND booking_id = $2")
                .bind(&pid)
                .bind(&bid)
                .execute(&mut *tx)
                .await?
                .rows_affected() as i64;
            counts.call_reports +=
                sqlx::query("DELETE FROM call_client_reports WHERE participant_id = $1 AND booking_id = $2")
                    .bind(&pid)
                    .bind(&bid)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected() as i64;
            if !bookings.contains(&bid) {
                bookings.push(bid);
            }
        }
        for bid in &bookings {
            sqlx::query(
                "UPDATE bookings SET title = $1, note = NULL, metadata = NULL, external_id = NULL WHERE id = $2",
            )
            .bind(ERASED_TEXT)
            .bind(bid)
            .execute(&mut *tx)
            .await?;
            counts.bookings += 1;
            counts.webhook_deliveries += redact_deliveries(&mut tx, bid, "erased").await?;
            counts.idempotency_records +=
                sqlx::query("DELETE FROM idempotency_keys WHERE tenant_id = $1 AND booking_id = $2")
                    .bind(tenant)
                    .bind(bid)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected() as i64;
        }
        let hosts =
            sqlx::query(&format!("SELECT h.id FROM hosts h WHERE h.tenant_id = $1 AND {}", subject.condition("h", 2)))
                .bind(tenant)
                .bind(subject.value())
                .fetch_all(&mut *tx)
                .await?;
        for h in &hosts {
            let hid: String = h.try_get("id")?;
            sqlx::query(
                "UPDATE hosts SET display_name = $1, email = NULL, ref = $2, secret_hash = $3, updated_at = $4 \
                 WHERE id = $5",
            )
            .bind(ERASED_TEXT)
            .bind(tokens::new_id("erased"))
            .bind(random_hash())
            .bind(now)
            .bind(&hid)
            .execute(&mut *tx)
            .await?;
            counts.hosts += 1;
        }
        let anything = counts.participants + counts.hosts > 0;
        let mut queued = 0;
        if anything {
            let data = json!({"erased": counts, "erased_at": rfc3339(now)});
            queued = enqueue_event(&mut tx, tenant, "data_subject.erased", &data, now).await?;
        }
        tx.commit().await?;
        if queued > 0 {
            self.wake_webhooks();
        }
        Ok((counts, links))
    }

    /// Everything `tenant` holds about `subject` (see [`SubjectExport`]), oldest first. Secrets (link token hashes,
    /// sealed link tokens, agenda secret hashes) are left out.
    pub async fn export_subject(&self, tenant: &str, subject: &Subject) -> Result<SubjectExport, StoreError> {
        let cond = subject.condition("p", 2);
        let prows = sqlx::query(&format!(
            "SELECT p.id, p.booking_id, p.role, p.ref, p.display_name, p.email, p.time_zone, p.locale, \
             p.first_joined_at, p.link_revoked_at FROM participants p JOIN bookings b ON b.id = p.booking_id \
             WHERE b.tenant_id = $1 AND {cond} ORDER BY b.created_at, b.id, p.id"
        ))
        .bind(tenant)
        .bind(subject.value())
        .fetch_all(&self.pool)
        .await?;
        let participants: Vec<ExportParticipant> = prows.iter().map(export_participant).collect::<Result<_, _>>()?;
        let brows = sqlx::query(&format!(
            "SELECT b.id, b.title, b.status, b.start_at, b.end_at, b.external_id, b.note, b.metadata, b.created_at \
             FROM bookings b WHERE b.tenant_id = $1 AND b.id IN (SELECT p.booking_id FROM participants p WHERE {cond}) \
             ORDER BY b.created_at, b.id"
        ))
        .bind(tenant)
        .bind(subject.value())
        .fetch_all(&self.pool)
        .await?;
        let bookings: Vec<ExportBooking> = brows.iter().map(export_booking).collect::<Result<_, _>>()?;
        let drows = sqlx::query(&format!(
            "SELECT d.id, d.endpoint_id, d.event_type, d.status, d.created_at, d.payload FROM webhook_deliveries d \
             WHERE d.tenant_id = $1 AND d.booking_id IN (SELECT p.booking_id FROM participants p \
             JOIN bookings b ON b.id = p.booking_id WHERE b.tenant_id = $1 AND {cond}) ORDER BY d.created_at, d.id"
        ))
        .bind(tenant)
        .bind(subject.value())
        .fetch_all(&self.pool)
        .await?;
        let webhook_deliveries = drows
            .iter()
            .map(|r| {
                let payload: String = r.try_get("payload")?;
                Ok(ExportDelivery {
                    id: r.try_get("id")?,
                    endpoint_id: r.try_get("endpoint_id")?,
                    event_type: r.try_get("event_type")?,
                    status: r.try_get("status")?,
                    created_at: rfc3339(r.try_get("created_at")?),
                    payload: serde_json::from_str(&payload).unwrap_or(Value::String(payload)),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let erows = sqlx::query(&format!(
            "SELECT e.id, e.booking_id, e.participant_id, e.kind, e.status, e.created_at, e.finished_at \
             FROM email_outbox e JOIN participants p ON p.id = e.participant_id \
             WHERE e.tenant_id = $1 AND {cond} ORDER BY e.created_at, e.id"
        ))
        .bind(tenant)
        .bind(subject.value())
        .fetch_all(&self.pool)
        .await?;
        let emails = erows
            .iter()
            .map(|r| {
                Ok(ExportEmail {
                    id: r.try_get("id")?,
                    booking_id: r.try_get("booking_id")?,
                    participant_id: r.try_get("participant_id")?,
                    kind: r.try_get("kind")?,
                    status: r.try_get("status")?,
                    created_at: rfc3339(r.try_get("created_at")?),
                    finished_at: opt_time(r.try_get("finished_at")?),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let mut call_reports = Vec::new();
        for p in &participants {
            let facts = sqlx::query(
                "SELECT joins, connected_ms, relay_bytes_to_peer, relay_bytes_to_client FROM call_participants \
                 WHERE booking_id = $1 AND participant_id = $2",
            )
            .bind(&p.booking_id)
            .bind(&p.id)
            .fetch_optional(&self.pool)
            .await?;
            let summary = sqlx::query(
                "SELECT received_ms, summary FROM call_client_reports WHERE booking_id = $1 AND participant_id = $2",
            )
            .bind(&p.booking_id)
            .bind(&p.id)
            .fetch_optional(&self.pool)
            .await?;
            if facts.is_none() && summary.is_none() {
                continue;
            }
            let get = |name: &str| -> Result<i64, StoreError> {
                Ok(match &facts {
                    Some(f) => f.try_get(name)?,
                    None => 0,
                })
            };
            let (browser_summary, received) = match &summary {
                Some(s) => {
                    let text: String = s.try_get("summary")?;
                    let ms: i64 = s.try_get("received_ms")?;
                    (Some(serde_json::from_str(&text).unwrap_or(Value::String(text))), Some(rfc3339(ms / 1000)))
                }
                None => (None, None),
            };
            call_reports.push(ExportCallReport {
                booking_id: p.booking_id.clone(),
                participant_id: p.id.clone(),
                joins: get("joins")?,
                connected_ms: get("connected_ms")?,
                relay_bytes_to_peer: get("relay_bytes_to_peer")?,
                relay_bytes_to_client: get("relay_bytes_to_client")?,
                browser_summary,
                browser_summary_received_at: received,
            });
        }
        let hrows = sqlx::query(&format!(
            "SELECT h.id, h.ref, h.display_name, h.email, h.time_zone, h.created_at FROM hosts h \
             WHERE h.tenant_id = $1 AND {} ORDER BY h.created_at, h.id",
            subject.condition("h", 2)
        ))
        .bind(tenant)
        .bind(subject.value())
        .fetch_all(&self.pool)
        .await?;
        let hosts = hrows
            .iter()
            .map(|r| {
                Ok(ExportHost {
                    id: r.try_get("id")?,
                    reference: r.try_get("ref")?,
                    display_name: r.try_get("display_name")?,
                    email: r.try_get("email")?,
                    time_zone: r.try_get("time_zone")?,
                    created_at: rfc3339(r.try_get("created_at")?),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(SubjectExport { participants, hosts, bookings, webhook_deliveries, emails, call_reports })
    }
}

fn export_participant(r: &AnyRow) -> Result<ExportParticipant, StoreError> {
    Ok(ExportParticipant {
        id: r.try_get("id")?,
        booking_id: r.try_get("booking_id")?,
        role: r.try_get("role")?,
        reference: r.try_get("ref")?,
        display_name: r.try_get("display_name")?,
        email: r.try_get("email")?,
        time_zone: r.try_get("time_zone")?,
        locale: r.try_get("locale")?,
        first_joined_at: opt_time(r.try_get("first_joined_at")?),
        link_revoked_at: opt_time(r.try_get("link_revoked_at")?),
    })
}

fn export_booking(r: &AnyRow) -> Result<ExportBooking, StoreError> {
    let metadata: Option<String> = r.try_get("metadata")?;
    Ok(ExportBooking {
        id: r.try_get("id")?,
        title: r.try_get("title")?,
        status: r.try_get("status")?,
        start_at: rfc3339(r.try_get("start_at")?),
        end_at: rfc3339(r.try_get("end_at")?),
        external_id: r.try_get("external_id")?,
        note: r.try_get("note")?,
        metadata: metadata.map(|m| serde_json::from_str(&m).unwrap_or(Value::String(m))),
        created_at: rfc3339(r.try_get("created_at")?),
    })
}

/// The retention task: every `config.interval`, [`Store::purge_expired`] in batches of [`PURGE_BATCH`] until a
/// batch comes back short; counts runs and purged bookings (`duet_retention_runs_total`,
/// `duet_retention_purged_bookings_total`); a database error is logged and retried at the next tick.
pub async fn run(store: Store, config: RetentionConfig, metrics: Metrics, shutdown: CancellationToken) {
    let default_s = i64::try_from(config.personal_data.as_secs()).unwrap_or(i64::MAX / 4);
    let mut tick = tokio::time::interval(config.interval.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        loop {
            match store.purge_expired(unix_now(), default_s, PURGE_BATCH).await {
                Ok(run) => {
                    metrics.retention_purged.inc_by(run.bookings);
                    if run.bookings > 0 {
                        tracing::info!(target: "booking", bookings = run.bookings, "personal data purged");
                    }
                    if run.bookings < PURGE_BATCH as u64 {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(target: "booking", error = %e, "retention purge failed; retrying next run");
                    break;
                }
            }
            if shutdown.is_cancelled() {
                return;
            }
        }
        metrics.retention_runs.inc();
    }
}

/// `POST /v1/data-subjects/erase`: erases one person (by `ref` or `email`) across every booking, webhook delivery,
/// email outbox row, call report and host profile of the caller's tenant; their links answer 404 at once, live
/// sockets are closed with 4004 and their TURN credentials revoked; a `data_subject.erased` webhook event carries the
/// counts. Scope `admin` or `bookings:write`. Idempotent: erasing again finds nothing and answers zero counts.
#[utoipa::path(
    post,
    path = "/v1/data-subjects/erase",
    tag = "personal data",
    operation_id = "erase_data_subject",
    security(("bearerAuth" = ["bookings:write"]), ("bearerAuth" = ["admin"])),
    request_body(content = SubjectSelector, content_type = "application/json"),
    responses(
        (status = 200, description = "What was erased (zero counts when the tenant holds nothing about the person).", body = ErasureView),
        (status = 400, description = "Malformed JSON, unknown member, wrong type (`invalid_request`).", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`).", body = ErrorBody),
        (status = 422, description = "`missing_field` (neither `ref` nor `email`), `invalid_field` (both, or a bad value).", body = ErrorBody)
    )
)]
pub async fn erase_data_subject(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let tenant = subject_tenant(&state, &headers).await?;
    let subject = parse_json::<SubjectSelector>(&body.map_err(body_error)?)?.validate()?;
    let (counts, links) = state.store.erase_subject(&tenant, &subject, unix_now()).await?;
    for l in &links {
        // Closed with 4004 (ERASED_CLOSE_CODE) on every node.
        crate::cluster::feed::announce(
            &state,
            crate::cluster::feed::FeedEvent::Participant {
                booking: l.booking_id.clone(),
                participant: l.participant_id.clone(),
                epoch: l.link_epoch,
                keep_until: l.max_hard_end_at,
                rotated: false,
            },
        )
        .await;
    }
    state.metrics.erasures.inc();
    tracing::info!(target: "booking", tenant = %tenant, participants = counts.participants, hosts = counts.hosts,
        "data subject erased");
    Ok(axum::Json(ErasureView { erased: counts }).into_response())
}

/// `POST /v1/data-subjects/export`: everything the caller's tenant holds about one person (by `ref` or `email`), as
/// JSON (an access request). Scope `admin` or `bookings:write` (the answer holds every booking of the person).
#[utoipa::path(
    post,
    path = "/v1/data-subjects/export",
    tag = "personal data",
    operation_id = "export_data_subject",
    security(("bearerAuth" = ["bookings:write"]), ("bearerAuth" = ["admin"])),
    request_body(content = SubjectSelector, content_type = "application/json"),
    responses(
        (status = 200, description = "Everything held about the person (empty lists when nothing is).", body = SubjectExport),
        (status = 400, description = "Malformed JSON, unknown member, wrong type (`invalid_request`).", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`).", body = ErrorBody),
        (status = 422, description = "`missing_field` (neither `ref` nor `email`), `invalid_field` (both, or a bad value).", body = ErrorBody)
    )
)]
pub async fn export_data_subject(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let tenant = subject_tenant(&state, &headers).await?;
    let subject = parse_json::<SubjectSelector>(&body.map_err(body_error)?)?.validate()?;
    let export = state.store.export_subject(&tenant, &subject).await?;
    Ok(axum::Json(export).into_response())
}

/// The tenant of a key with `bookings:write` or `admin` (401 / 403 `insufficient_scope` naming `bookings:write`).
async fn subject_tenant(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    match authenticate(state, headers, Scope::BookingsWrite).await {
        Ok(t) => Ok(t),
        Err(e) => match authenticate_key(state, headers, Scope::Admin).await {
            Ok(k) => Ok(k.tenant_id),
            Err(_) => Err(e),
        },
    }
}

/// `PUT /v1/admin/tenants/{id}/retention` body and answer.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantRetention {
    /// Seconds after a booking's `hard_end_at` when its personal data is purged (0 to 3 153 600 000, i.e. 100
    /// years); `null`: the configured `[retention] personal_data`.
    pub retention_s: Option<i64>,
}

/// `GET /v1/admin/tenants/{id}/retention`: the tenant's retention override (scope `admin`).
#[utoipa::path(
    get,
    path = "/v1/admin/tenants/{id}/retention",
    tag = "admin",
    operation_id = "get_tenant_retention",
    security(("bearerAuth" = ["admin"])),
    params(("id" = String, Path, description = "Tenant id, `ten_…`.")),
    responses(
        (status = 200, description = "The override (`null`: the configured default).", body = TenantRetention),
        (status = 404, description = "No such tenant (`not_found`).", body = ErrorBody)
    )
)]
pub async fn get_tenant_retention(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authenticate_key(&state, &headers, Scope::Admin).await?;
    if !plausible_id(&id) {
        return Err(ApiError::not_found());
    }
    let retention_s = state.store.tenant_retention(&id).await?.ok_or_else(ApiError::not_found)?;
    Ok(axum::Json(TenantRetention { retention_s }).into_response())
}

/// `PUT /v1/admin/tenants/{id}/retention`: sets (or with `null` clears) the tenant's retention override (scope
/// `admin`); the next purge run uses it.
#[utoipa::path(
    put,
    path = "/v1/admin/tenants/{id}/retention",
    tag = "admin",
    operation_id = "set_tenant_retention",
    security(("bearerAuth" = ["admin"])),
    params(("id" = String, Path, description = "Tenant id, `ten_…`.")),
    request_body(content = TenantRetention, content_type = "application/json"),
    responses(
        (status = 200, description = "The override now.", body = TenantRetention),
        (status = 400, description = "Malformed JSON, unknown member, wrong type (`invalid_request`).", body = ErrorBody),
        (status = 404, description = "No such tenant (`not_found`).", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`).", body = ErrorBody),
        (status = 422, description = "`invalid_field` (`retention_s` out of range).", body = ErrorBody)
    )
)]
pub async fn set_tenant_retention(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    authenticate_key(&state, &headers, Scope::Admin).await?;
    let req: TenantRetention = parse_json(&body.map_err(body_error)?)?;
    if req.retention_s.is_some_and(|s| !(0..=MAX_RETENTION_S).contains(&s)) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "`retention_s` must be 0 to 3153600000 seconds, or null",
        )
        .field("retention_s"));
    }
    if !plausible_id(&id) || !state.store.set_tenant_retention(&id, req.retention_s).await? {
        return Err(ApiError::not_found());
    }
    tracing::info!(target: "booking", tenant = %id, retention_s = ?req.retention_s, "tenant retention set");
    Ok(axum::Json(req).into_response())
}

/// Largest retention override: 100 years of 365 days, in seconds.
pub const MAX_RETENTION_S: i64 = 100 * 365 * 86_400;
