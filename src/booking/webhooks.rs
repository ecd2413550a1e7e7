//! Webhooks: a tenant's endpoints, the durable outbox and Standard Webhooks signing (README, "Webhooks").
//!
//! Signing follows the Standard Webhooks specification (`standard-webhooks/standard-webhooks`,
//! `spec/standard-webhooks.md`): each request carries `webhook-id` (the message id, the same on every attempt, so
//! receivers dedupe on it), `webhook-timestamp` (Unix seconds of the attempt) and `webhook-signature`, a
//! space-separated list of `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, one per secret that signs: the
//! current secret and, for [`crate::config::WebhookConfig::rotation_overlap`] after a rotation, the previous one.
//! Secrets are `whsec_` followed by the base64 of [`SECRET_BYTES`] random bytes; the HMAC key is those bytes.
//!
//! The outbox: [`enqueue_event`] writes one `webhook_deliveries` row per matching endpoint inside the caller's
//! transaction, so an event exists exactly when the change it reports was committed. The delivery worker
//! ([`super::webhook_delivery`]) claims due rows with a lease, so two workers never send one row at once, and logs every
//! attempt in `webhook_attempts`.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde_json::{Value, json};
use sha2::Sha256;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::store::{Booking, Store, StoreError};
use super::tokens;

/// Delays between attempts after a failure (Standard Webhooks / Svix style): 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, so
/// seven attempts over 17 h 35 min, then the delivery is `failed`. Each delay gets up to ±10 % jitter so retries of a
/// burst do not arrive together. `[webhooks] retry_schedule` replaces it (tests shorten it).
pub const RETRY_SCHEDULE: [Duration; 6] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
];

/// Time allowed for one attempt, connect to response headers: 10 s (README, "Webhooks"); longer counts as a
/// failed attempt.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Prefix of signing secrets (Standard Webhooks).
pub const SECRET_PREFIX: &str = "whsec_";

/// Random bytes in a signing secret: 32 (the spec asks for 24 to 64).
pub const SECRET_BYTES: usize = 32;

/// The event types an endpoint may subscribe to (`event_types`). `webhook.test` is sent only by
/// `POST /v1/webhook-endpoints/{id}/test`, whatever the endpoint's filter.
pub const EVENT_TYPES: &[&str] = &[
    "booking.created",
    "booking.confirmed",
    "booking.rejected",
    "booking.rescheduled",
    "booking.cancelled",
    "meeting.started",
    "participant.joined",
    "participant.left",
    "meeting.ended",
    "participant.no_show",
    "data_subject.erased",
];

/// The ping event of `POST /v1/webhook-endpoints/{id}/test`.
pub const TEST_EVENT: &str = "webhook.test";

/// A new signing secret: `whsec_` + standard base64 of [`SECRET_BYTES`] random bytes.
pub fn new_secret() -> String {
    let mut b = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut b);
    format!("{SECRET_PREFIX}{}", STANDARD.encode(b))
}

/// One Standard Webhooks signature, `v1,<base64 HMAC-SHA256(key, "{msg_id}.{timestamp}.{body}")>`, where the key is
/// the base64-decoded part of `secret` after `whsec_`. `None` for a secret that is not `whsec_<base64>` (never
/// written by Duet).
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = STANDARD.decode(secret.strip_prefix(SECRET_PREFIX)?).ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes())))
}

/// A webhook endpoint of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `whe_…`.
    pub id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Where events are POSTed: `https://…` (or `http://` for an address in `[webhooks] allow_private`).
    pub url: String,
    /// The operator's note, if any.
    pub description: Option<String>,
    /// The event types it receives; `None`: every event type.
    pub event_types: Option<Vec<String>>,
    /// A disabled endpoint gets no new events, and its pending deliveries wait until it is enabled again.
    pub enabled: bool,
    /// The current signing secret, `whsec_…`.
    pub secret: String,
    /// The secret before the last rotation: it signs too until `previous_secret_expires_at`.
    pub previous_secret: Option<String>,
    /// End of the rotation overlap, Unix seconds.
    pub previous_secret_expires_at: Option<i64>,
    /// Creation, Unix seconds.
    pub created_at: i64,
    /// Last change (rotations included), Unix seconds.
    pub updated_at: i64,
}

impl Endpoint {
    /// Whether the endpoint subscribes to `event_type`.
    pub fn accepts(&self, event_type: &str) -> bool {
        self.event_types.as_ref().is_none_or(|t| t.iter().any(|x| x == event_type))
    }

    /// The secrets that sign at `now` (Unix seconds): the current one, then the previous one during the overlap.
    pub fn signing_secrets(&self, now: i64) -> Vec<&str> {
        let mut v = vec![self.secret.as_str()];
        if let (Some(p), Some(until)) = (&self.previous_secret, self.previous_secret_expires_at)
            && now < until
        {
            v.push(p);
        }
        v
    }

    /// The `webhook-signature` header value at `now`: one `v1,…` per [`Endpoint::signing_secrets`], space-separated.
    pub fn signature_header(&self, msg_id: &str, timestamp: i64, body: &[u8], now: i64) -> String {
        let sigs: Vec<String> =
            self.signing_secrets(now).into_iter().filter_map(|s| sign(s, msg_id, timestamp, body)).collect();
        sigs.join(" ")
    }
}

/// State of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Waiting for its next attempt.
    Pending,
    /// Claimed by a worker (an attempt is under way).
    Sending,
    /// A 2xx answer came.
    Delivered,
    /// Every attempt of the retry schedule failed.
    Failed,
}

impl DeliveryStatus {
    /// Stored and wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Sending => "sending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    fn parse(s: &str) -> DeliveryStatus {
        match s {
            "sending" => DeliveryStatus::Sending,
            "delivered" => DeliveryStatus::Delivered,
            "failed" => DeliveryStatus::Failed,
            _ => DeliveryStatus::Pending,
        }
    }
}

/// One event for one endpoint (a row of the outbox).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// `whd_…`: the delivery (for the log and redeliver).
    pub id: String,
    /// `msg_…`: the `webhook-id` header, one per event (the same for every endpoint and every attempt).
    pub message_id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// E.g. `booking.created`.
    pub event_type: String,
    /// The request body, exactly as signed and sent: `{"type", "timestamp", "data"}`.
    pub payload: String,
    /// State.
    pub status: DeliveryStatus,
    /// Attempts logged so far.
    pub attempts: i64,
    /// Consecutive failures since the last success or redeliver: the index into the retry schedule.
    pub failures: i64,
    /// When the next attempt is due, Unix milliseconds (pending rows).
    pub next_attempt_ms: i64,
    /// Creation, Unix seconds.
    pub created_at: i64,
    /// When it was delivered or failed, Unix seconds.
    pub finished_at: Option<i64>,
}

/// One logged attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// 1, 2, … per delivery.
    pub attempt: i64,
    /// Start of the attempt, Unix milliseconds.
    pub attempted_at_ms: i64,
    /// The receiver's HTTP status; `None` when no answer came (`error` says why).
    pub status_code: Option<i64>,
    /// Why the attempt failed (`None` for a 2xx): `HTTP 500`, `timeout`, `connect: …`, `refused by the SSRF guard`.
    pub error: Option<String>,
    /// From the start of the attempt to the answer's headers (or the failure), milliseconds.
    pub duration_ms: i64,
}

/// The request body of an event: `{"type": <event type>, "timestamp": <RFC 3339 UTC>, "data": <data>}`.
pub fn envelope(event_type: &str, timestamp: i64, data: &Value) -> String {
    json!({"type": event_type, "timestamp": super::api::rfc3339(timestamp), "data": data}).to_string()
}

/// The `data` of a `booking.*` event: the booking as `GET /v1/bookings/{id}` shows it at `now` (no link tokens).
pub fn booking_data(b: &Booking, now: i64) -> Value {
    serde_json::to_value(super::api::BookingView::of(b, now, None)).unwrap_or(Value::Null)
}

/// Columns of [`endpoint_from_row`].
const ENDPOINT_COLUMNS: &str = "id, tenant_id, url, description, event_types, enabled, secret, previous_secret, \
                                previous_secret_expires_at, created_at, updated_at";

/// Columns of [`delivery_from_row`].
const DELIVERY_COLUMNS: &str = "id, message_id, tenant_id, endpoint_id, event_type, payload, status, attempts, \
                                failures, next_attempt_ms, created_at, finished_at";

fn endpoint_from_row(r: &AnyRow) -> Result<Endpoint, StoreError> {
    let types: Option<String> = r.try_get("event_types")?;
    Ok(Endpoint {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        url: r.try_get("url")?,
        description: r.try_get("description")?,
        event_types: types.map(|t| t.split_whitespace().map(str::to_string).collect()),
        enabled: r.try_get::<i64, _>("enabled")? != 0,
        secret: r.try_get("secret")?,
        previous_secret: r.try_get("previous_secret")?,
        previous_secret_expires_at: r.try_get("previous_secret_expires_at")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn delivery_from_row(r: &AnyRow) -> Result<Delivery, StoreError> {
    Ok(Delivery {
        id: r.try_get("id")?,
        message_id: r.try_get("message_id")?,
        tenant_id: r.try_get("tenant_id")?,
        endpoint_id: r.try_get("endpoint_id")?,
        event_type: r.try_get("event_type")?,
        payload: r.try_get("payload")?,
        status: DeliveryStatus::parse(&r.try_get::<String, _>("status")?),
        attempts: r.try_get("attempts")?,
        failures: r.try_get("failures")?,
        next_attempt_ms: r.try_get("next_attempt_ms")?,
        created_at: r.try_get("created_at")?,
        finished_at: r.try_get("finished_at")?,
    })
}

/// The booking an event with `data` is about, stored with each delivery (`webhook_deliveries.booking_id`) so the
/// retention purge and an erasure find the deliveries that carry the booking's data: `data.booking_id` (meeting and
/// participant events), else `data.id` of a `booking.*` event; `None` for events about no booking.
pub fn event_booking_id(event_type: &str, data: &Value) -> Option<String> {
    let id = data.get("booking_id").or_else(|| event_type.starts_with("booking.").then(|| data.get("id")).flatten());
    id.and_then(Value::as_str).map(str::to_string)
}

/// Inserts one pending delivery of `payload` for `endpoint`, due now, about booking `booking_id` (if any).
async fn insert_delivery(
    tx: &mut Transaction<'_, Any>,
    endpoint: &Endpoint,
    (message_id, booking_id): (&str, Option<&str>),
    event_type: &str,
    payload: &str,
    now: i64,
) -> Result<Delivery, StoreError> {
    let d = Delivery {
        id: tokens::new_id("whd"),
        message_id: message_id.to_string(),
        tenant_id: endpoint.tenant_id.clone(),
        endpoint_id: endpoint.id.clone(),
        event_type: event_type.to_string(),
        payload: payload.to_string(),
        status: DeliveryStatus::Pending,
        attempts: 0,
        failures: 0,
        next_attempt_ms: now.saturating_mul(1000),
        created_at: now,
        finished_at: None,
    };
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, message_id, tenant_id, endpoint_id, event_type, payload, status, \
         attempts, failures, next_attempt_ms, created_at, booking_id) \
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, 0, $7, $8, $9)",
    )
    .bind(&d.id)
    .bind(&d.message_id)
    .bind(&d.tenant_id)
    .bind(&d.endpoint_id)
    .bind(&d.event_type)
    .bind(&d.payload)
    .bind(d.next_attempt_ms)
    .bind(d.created_at)
    .bind(booking_id)
    .execute(&mut **tx)
    .await?;
    Ok(d)
}

/// Writes event `event_type` of `tenant` with `data` at `now` (Unix seconds) into the outbox inside `tx`: one
/// pending delivery per enabled endpoint of the tenant whose filter accepts the event type, all with one new
/// `webhook-id` (`msg_…`) and the body [`envelope`]. Call it in the transaction of the change the event reports, so
/// the event is committed exactly with the change; after the commit call [`Store::wake_webhooks`] (the worker also
/// polls every second). Returns how many deliveries were written (0 when no endpoint wants the event).
pub async fn enqueue_event(
    tx: &mut Transaction<'_, Any>,
    tenant: &str,
    event_type: &str,
    data: &Value,
    now: i64,
) -> Result<u64, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE tenant_id = $1 AND enabled = 1 ORDER BY created_at, id"
    ))
    .bind(tenant)
    .fetch_all(&mut **tx)
    .await?;
    let endpoints: Vec<Endpoint> = rows.iter().map(endpoint_from_row).collect::<Result<_, _>>()?;
    let wanted: Vec<&Endpoint> = endpoints.iter().filter(|e| e.accepts(event_type)).collect();
    if wanted.is_empty() {
        return Ok(0);
    }
    let message_id = tokens::new_id("msg");
    let payload = envelope(event_type, now, data);
    let booking_id = event_booking_id(event_type, data);
    for e in &wanted {
        insert_delivery(tx, e, (&message_id, booking_id.as_deref()), event_type, &payload, now).await?;
    }
    Ok(wanted.len() as u64)
}

/// What [`Store::record_webhook_attempt`] does to the delivery after the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// 2xx: `delivered`.
    Delivered,
    /// Failed; the next attempt is due at this Unix millisecond.
    RetryAt(i64),
    /// Failed; the retry schedule is used up: `failed`.
    Failed,
}

/// The outcome of [`Store::redeliver_webhook`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeliver {
    /// The delivery is pending again, due now, with its retry schedule restarted.
    Queued(Delivery),
    /// An attempt is under way: nothing changed (409).
    InFlight,
    /// No such delivery in the tenant.
    NotFound,
}

impl Store {
    /// Wakes the delivery worker (call after committing a transaction that ran [`enqueue_event`]).
    pub fn wake_webhooks(&self) {
        self.webhook_wake.notify_one();
    }

    /// The notification [`Store::wake_webhooks`] signals (the delivery worker waits on it).
    pub fn webhook_wakeup(&self) -> Arc<tokio::sync::Notify> {
        self.webhook_wake.clone()
    }

    /// Inserts endpoint `e`.
    pub async fn create_webhook_endpoint(&self, e: &Endpoint) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO webhook_endpoints (id, tenant_id, url, description, event_types, enabled, secret, \
             previous_secret, previous_secret_expires_at, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&e.id)
        .bind(&e.tenant_id)
        .bind(&e.url)
        .bind(&e.description)
        .bind(e.event_types.as_ref().map(|t| t.join(" ")))
        .bind(i64::from(e.enabled))
        .bind(&e.secret)
        .bind(&e.previous_secret)
        .bind(e.previous_secret_expires_at)
        .bind(e.created_at)
        .bind(e.updated_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The endpoints of `tenant`, oldest first.
    pub async fn webhook_endpoints(&self, tenant: &str) -> Result<Vec<Endpoint>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE tenant_id = $1 ORDER BY created_at, id"
        ))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(endpoint_from_row).collect()
    }

    /// Endpoint `id` of `tenant` (`None` for another tenant's).
    pub async fn webhook_endpoint(&self, tenant: &str, id: &str) -> Result<Option<Endpoint>, StoreError> {
        let row =
            sqlx::query(&format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1 AND tenant_id = $2"))
                .bind(id)
                .bind(tenant)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(endpoint_from_row).transpose()
    }

    /// Stores the url, description, event types, enabled flag and `updated_at` of `e` (its tenant's row); false
    /// when there is no such row. A pending delivery goes to the new URL at its next attempt.
    pub async fn update_webhook_endpoint(&self, e: &Endpoint) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE webhook_endpoints SET url = $1, description = $2, event_types = $3, enabled = $4, updated_at = $5 \
             WHERE id = $6 AND tenant_id = $7",
        )
        .bind(&e.url)
        .bind(&e.description)
        .bind(e.event_types.as_ref().map(|t| t.join(" ")))
        .bind(i64::from(e.enabled))
        .bind(e.updated_at)
        .bind(&e.id)
        .bind(&e.tenant_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if n == 1 && e.enabled {
            self.wake_webhooks();
        }
        Ok(n == 1)
    }

    /// Deletes endpoint `id` of `tenant` with its deliveries and their log; false when there is no such endpoint.
    pub async fn delete_webhook_endpoint(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        // SQLite enforces the cascade only with `foreign_keys = ON` (set per connection); delete explicitly.
        sqlx::query(
            "DELETE FROM webhook_attempts WHERE delivery_id IN \
             (SELECT id FROM webhook_deliveries WHERE endpoint_id = $1 AND tenant_id = $2)",
        )
        .bind(id)
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM webhook_deliveries WHERE endpoint_id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(tenant)
            .execute(&mut *tx)
            .await?;
        let n = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(tenant)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Replaces the secret of endpoint `id` of `tenant` with `new_secret` at `now`; the old one keeps signing beside
    /// it until `overlap_until` (Unix seconds). Returns the endpoint after the change.
    pub async fn rotate_webhook_secret(
        &self,
        tenant: &str,
        id: &str,
        new_secret: &str,
        overlap_until: i64,
        now: i64,
    ) -> Result<Option<Endpoint>, StoreError> {
        let n = sqlx::query(
            "UPDATE webhook_endpoints SET previous_secret = secret, previous_secret_expires_at = $1, secret = $2, \
             updated_at = $3 WHERE id = $4 AND tenant_id = $5",
        )
        .bind(overlap_until)
        .bind(new_secret)
        .bind(now)
        .bind(id)
        .bind(tenant)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if n != 1 {
            return Ok(None);
        }
        self.webhook_endpoint(tenant, id).await
    }

    /// Queues a `webhook.test` event (data: the endpoint id and a note) for endpoint `e` only, whatever its filter,
    /// through the same outbox; returns the delivery.
    pub async fn enqueue_test_event(&self, e: &Endpoint, now: i64) -> Result<Delivery, StoreError> {
        let mut tx = self.pool.begin().await?;
        let data = json!({"endpoint_id": e.id, "message": "a test event sent by POST /v1/webhook-endpoints/{id}/test"});
        let d = insert_delivery(
            &mut tx,
            e,
            (&tokens::new_id("msg"), None),
            TEST_EVENT,
            &envelope(TEST_EVENT, now, &data),
            now,
        )
        .await?;
        tx.commit().await?;
        self.wake_webhooks();
        Ok(d)
    }

    /// The deliveries of endpoint `endpoint` of `tenant`, newest first (by `created_at`, then id), after the
    /// position `before` (a cursor), at most `limit`, each with its attempts (oldest first).
    pub async fn webhook_deliveries(
        &self,
        tenant: &str,
        endpoint: &str,
        before: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<(Delivery, Vec<Attempt>)>, StoreError> {
        let rows = match before {
            None => {
                sqlx::query(&format!(
                    "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE endpoint_id = $1 AND tenant_id = $2 \
                     ORDER BY created_at DESC, id DESC LIMIT $3"
                ))
                .bind(endpoint)
                .bind(tenant)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
            Some((at, id)) => {
                sqlx::query(&format!(
                    "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE endpoint_id = $1 AND tenant_id = $2 \
                     AND (created_at < $3 OR (created_at = $3 AND id < $4)) ORDER BY created_at DESC, id DESC LIMIT $5"
                ))
                .bind(endpoint)
                .bind(tenant)
                .bind(at)
                .bind(id)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
        };
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let d = delivery_from_row(r)?;
            let attempts = self.webhook_attempts(&d.id).await?;
            out.push((d, attempts));
        }
        Ok(out)
    }

    /// The attempts of delivery `id`, oldest first.
    pub async fn webhook_attempts(&self, id: &str) -> Result<Vec<Attempt>, StoreError> {
        let rows = sqlx::query(
            "SELECT attempt, attempted_at_ms, status_code, error, duration_ms FROM webhook_attempts \
             WHERE delivery_id = $1 ORDER BY attempt",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Attempt {
                    attempt: r.try_get("attempt")?,
                    attempted_at_ms: r.try_get("attempted_at_ms")?,
                    status_code: r.try_get("status_code")?,
                    error: r.try_get("error")?,
                    duration_ms: r.try_get("duration_ms")?,
                })
            })
            .collect()
    }

    /// Delivery `id` of `tenant`.
    pub async fn webhook_delivery(&self, tenant: &str, id: &str) -> Result<Option<Delivery>, StoreError> {
        let row =
            sqlx::query(&format!("SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1 AND tenant_id = $2"))
                .bind(id)
                .bind(tenant)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(delivery_from_row).transpose()
    }

    /// Makes delivery `id` of `tenant` pending again, due at `now_ms`, with its retry schedule restarted (same
    /// `webhook-id`, so receivers can tell it is the same event).
    pub async fn redeliver_webhook(&self, tenant: &str, id: &str, now_ms: i64) -> Result<Redeliver, StoreError> {
        let n = sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', failures = 0, next_attempt_ms = $1, \
             finished_at = NULL, lease_until_ms = NULL WHERE id = $2 AND tenant_id = $3 AND status <> 'sending'",
        )
        .bind(now_ms)
        .bind(id)
        .bind(tenant)
        .execute(&self.pool)
        .await?
        .rows_affected();
        let Some(d) = self.webhook_delivery(tenant, id).await? else { return Ok(Redeliver::NotFound) };
        if n == 1 {
            self.wake_webhooks();
            Ok(Redeliver::Queued(d))
        } else {
            Ok(Redeliver::InFlight)
        }
    }

    /// Makes every delivery left `sending` pending again, due now: on start, the attempts a crash interrupted are
    /// retried (with the same `webhook-id`). Returns how many. With several daemons on one PostgreSQL database, a
    /// restart also re-queues the other nodes' attempts in flight: their receivers may see that event twice, with
    /// one `webhook-id`.
    pub async fn release_webhook_leases(&self, now_ms: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_ms = $1, lease_until_ms = NULL \
             WHERE status = 'sending'",
        )
        .bind(now_ms)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Claims up to `max` deliveries due at `now_ms` (pending and due, or `sending` with an expired lease) of enabled
    /// endpoints, oldest due first, each with its endpoint: each becomes `sending` until `now_ms + lease_ms`. A row is
    /// claimed by one conditional UPDATE, so two workers (or two daemons on one PostgreSQL database) never hold the
    /// same row at once.
    pub async fn claim_webhook_deliveries(
        &self,
        now_ms: i64,
        lease_ms: i64,
        max: usize,
    ) -> Result<Vec<(Delivery, Endpoint)>, StoreError> {
        let candidates: Vec<String> = sqlx::query(
            "SELECT d.id FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id \
             WHERE e.enabled = 1 AND ((d.status = 'pending' AND d.next_attempt_ms <= $1) \
             OR (d.status = 'sending' AND d.lease_until_ms <= $1)) ORDER BY d.next_attempt_ms LIMIT $2",
        )
        .bind(now_ms)
        .bind(max as i64)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for id in candidates {
            let n = sqlx::query(
                "UPDATE webhook_deliveries SET status = 'sending', lease_until_ms = $1 WHERE id = $2 \
                 AND ((status = 'pending' AND next_attempt_ms <= $3) OR (status = 'sending' AND lease_until_ms <= $3))",
            )
            .bind(now_ms + lease_ms)
            .bind(&id)
            .bind(now_ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if n != 1 {
                continue; // another worker got it first
            }
            let row = sqlx::query(&format!("SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1"))
                .bind(&id)
                .fetch_optional(&self.pool)
                .await?;
            let Some(d) = row.as_ref().map(delivery_from_row).transpose()? else { continue };
            let Some(e) = self.webhook_endpoint(&d.tenant_id, &d.endpoint_id).await? else { continue };
            out.push((d, e));
        }
        Ok(out)
    }

    /// The payload of delivery `id` as stored now: read again just before each attempt, so a payload redacted by a
    /// retention purge or an erasure after the delivery was claimed is what goes out. `None` when the row is gone.
    pub async fn webhook_payload(&self, id: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT payload FROM webhook_deliveries WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Logs attempt `a` of delivery `id` (numbered after the attempts logged so far) and applies `outcome`, in one
    /// transaction. Returns the attempt's number.
    pub async fn record_webhook_attempt(
        &self,
        id: &str,
        a: &Attempt,
        outcome: AttemptOutcome,
        now: i64,
    ) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let (status, next_ms, finished, failures_delta) = match outcome {
            AttemptOutcome::Delivered => ("delivered", None, Some(now), None),
            AttemptOutcome::RetryAt(ms) => ("pending", Some(ms), None, Some(1)),
            AttemptOutcome::Failed => ("failed", None, Some(now), Some(1)),
        };
        sqlx::query(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, status = $1, \
             next_attempt_ms = COALESCE($2, next_attempt_ms), finished_at = $3, lease_until_ms = NULL, \
             failures = CASE WHEN $4 = 1 THEN failures + 1 ELSE 0 END WHERE id = $5",
        )
        .bind(status)
        .bind(next_ms)
        .bind(finished)
        .bind(failures_delta.unwrap_or(0_i64))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let attempt: i64 = sqlx::query("SELECT attempts FROM webhook_deliveries WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?
            .unwrap_or(0);
        if attempt > 0 {
            sqlx::query(
                "INSERT INTO webhook_attempts (delivery_id, attempt, attempted_at_ms, status_code, error, duration_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(id)
            .bind(attempt)
            .bind(a.attempted_at_ms)
            .bind(a.status_code)
            .bind(&a.error)
            .bind(a.duration_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(attempt)
    }

    /// Deliveries not yet delivered or failed (pending or sending), every tenant: `duet_webhook_backlog`.
    pub async fn webhook_backlog(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM webhook_deliveries WHERE status IN ('pending', 'sending')")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks test vector (`standard-webhooks` repository, libraries' tests): secret
    /// `whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw`, id `msg_p5jXN8AQM9LWM0D4loKWxJek`, timestamp 1614265330, body
    /// `{"test": 2432232314}`.
    #[test]
    fn signs_the_spec_vector() {
        let sig = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig.as_deref(), Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="));
    }

    #[test]
    fn secrets_are_whsec_base64_of_32_bytes() {
        let s = new_secret();
        let raw = STANDARD.decode(s.strip_prefix(SECRET_PREFIX).unwrap()).unwrap();
        assert_eq!(raw.len(), SECRET_BYTES);
        assert_ne!(s, new_secret());
    }

    #[test]
    fn two_signatures_during_the_overlap_only() {
        let e = Endpoint {
            id: "whe_1".into(),
            tenant_id: "t".into(),
            url: "https://example.com/".into(),
            description: None,
            event_types: Some(vec!["booking.created".into()]),
            enabled: true,
            secret: new_secret(),
            previous_secret: Some(new_secret()),
            previous_secret_expires_at: Some(100),
            created_at: 0,
            updated_at: 0,
        };
        assert_eq!(e.signature_header("msg_1", 5, b"{}", 99).split(' ').count(), 2);
        assert_eq!(e.signature_header("msg_1", 5, b"{}", 100).split(' ').count(), 1);
        assert!(e.accepts("booking.created") && !e.accepts("booking.cancelled"));
    }
}
