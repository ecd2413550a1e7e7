//! Call facts from real connections, and what is made of them (README, "Call reports"): the recorder task, the
//! durable timers (no-show at the cutoff, the end of a meeting both participants left) and the per-booking figures
//! of `GET /v1/bookings/{id}/report`.
//!
//! The signaling driver ([`crate::signal_io`]) and the relay driver ([`crate::relay_io`]) hand [`Fact`]s to a
//! [`FactSender`]: a bounded queue filled with `try_send`, so neither ever waits for the database; a full queue drops
//! the fact and counts it (`duet_call_facts_total{result="dropped"}`). One task ([`run`]) writes each fact in one
//! transaction, together with the webhook events it causes ([`enqueue_event`], the outbox):
//!
//! - a join (`HubEvent::Joined`): `participant.joined`; a leave (`HubEvent::Left`): `participant.left` with the hub's
//!   reason (`closed`, `replaced`, `left`, `timeout`, `window_closed`, `cancelled`, `shutdown`, …);
//! - the first `ready` of the booking's room (both participants connected for the first time): `meeting.started`;
//! - the room closed at the booking's hard end or on cancel, or both participants gone for `[calls] end_grace` (the
//!   meeting then ends at the last leave): `meeting.ended`, once, and only after a `meeting.started`;
//! - TURN allocations of the participant's credentials: counted, and their relayed bytes added when they end (the
//!   bytes of allocations still alive are read from the relay when a meeting ends or a report is asked for).
//!
//! A sweep every `[calls] sweep_interval` runs the durable timers from the database, so a restart loses none and a
//! second node sends none twice: `participant.no_show` for each participant of a confirmed booking whose
//! `join_cutoff_at` passed (within the last 24 h) who never joined, and `meeting.ended` for a meeting idle past the
//! grace or past its hard end (plus the grace) without a room close (the daemon was down then).

use serde::Serialize;
use serde_json::{Value, json};
use sqlx::{Any, Row, Transaction};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use super::store::{Booking, Status, Store, StoreError, booking_in};
use super::webhooks::enqueue_event;
use crate::config::CallsConfig;
use crate::metrics::Metrics;
use crate::relay_io::RelayHandle;

/// Facts waiting for the recorder; beyond this the drivers drop and count them. A call makes a handful of facts (two
/// joins, a ready, two leaves, a few allocations), so 4096 absorbs a burst of hundreds of calls starting at once.
pub const FACT_QUEUE: usize = 4096;

/// Payload bytes a participant's allocations must have relayed for the participant to count as `relayed`: ICE
/// connectivity checks over a relay candidate that loses to a direct path relay a few KiB (tens of ~150-byte STUN
/// checks); 32 KiB is about eight seconds of Opus audio, so any relayed media call passes it.
pub const RELAYED_MIN_BYTES: u64 = 32 * 1024;

/// Join and leave entries kept per booking in the report (later ones are counted, not listed).
pub const MAX_EVENTS_PER_BOOKING: i64 = 1000;

/// No-shows are decided only for cutoffs this recent (seconds), so the first start of this version does not send
/// events for old bookings.
pub const NO_SHOW_LOOKBACK_S: i64 = 86_400;

/// Bookings (per kind of timer) handled per sweep.
const SWEEP_BATCH: i64 = 100;

/// One thing a driver saw. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    /// A participant took its slot in the booking's room.
    Joined {
        /// Booking id (room key).
        booking: String,
        /// Participant id.
        participant: String,
        /// When.
        at_ms: i64,
    },
    /// A participant's connection left its slot.
    Left {
        /// Booking id.
        booking: String,
        /// Participant id.
        participant: String,
        /// The hub's leave reason (`duet_signaling::LeaveReason::as_str`).
        reason: &'static str,
        /// When.
        at_ms: i64,
    },
    /// Both slots filled, `ready` sent with this session number.
    Ready {
        /// Booking id.
        booking: String,
        /// The room's session counter (1 for the first pairing).
        session: u64,
        /// When.
        at_ms: i64,
    },
    /// The room closed with its connections: `window_closed`, `cancelled` or `shutdown`
    /// (`duet_signaling::CloseReason::as_str`).
    RoomClosed {
        /// Booking id.
        booking: String,
        /// Why.
        reason: &'static str,
        /// When.
        at_ms: i64,
    },
    /// A TURN allocation of the participant's credentials was created.
    RelayStarted {
        /// Booking id from the TURN username.
        booking: String,
        /// Participant id from the TURN username.
        participant: String,
        /// Client transport: `udp`, `tcp` or `tls`.
        transport: &'static str,
    },
    /// A TURN allocation of the participant's credentials ended.
    RelayEnded {
        /// Booking id from the TURN username.
        booking: String,
        /// Participant id from the TURN username.
        participant: String,
        /// Client transport: `udp`, `tcp` or `tls`.
        transport: &'static str,
        /// Payload bytes relayed client → peer.
        bytes_to_peer: u64,
        /// Payload bytes relayed peer → client.
        bytes_to_client: u64,
    },
}

/// The drivers' end of the recorder's queue; cheap to clone. Never blocks.
#[derive(Clone)]
pub struct FactSender {
    tx: mpsc::Sender<Fact>,
    metrics: Metrics,
}

impl FactSender {
    /// Queues `fact` from `source` (`signaling` or `relay`) without waiting; a full queue drops it, counted in
    /// `duet_call_facts_total{source,result="dropped"}`.
    pub fn send(&self, source: &'static str, fact: Fact) {
        let result = match self.tx.try_send(fact) {
            Ok(()) => "queued",
            Err(_) => "dropped",
        };
        self.metrics.call_facts.with_label_values(&[source, result]).inc();
    }
}

/// A queue of [`FACT_QUEUE`] facts: the sender for the drivers, the receiver for [`run`].
pub fn channel(metrics: Metrics) -> (FactSender, mpsc::Receiver<Fact>) {
    let (tx, rx) = mpsc::channel(FACT_QUEUE);
    (FactSender { tx, metrics }, rx)
}

/// Unix milliseconds now.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The recorder: writes every fact from `rx` and runs the sweep every `config.sweep_interval`, until `shutdown` (the
/// facts still queued then are written first). Database errors are logged and counted
/// (`duet_call_fact_errors_total`); the fact is lost, the sweep retries at its next turn.
pub async fn run(
    store: Store,
    relay: RelayHandle,
    mut rx: mpsc::Receiver<Fact>,
    config: CallsConfig,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let rec = Recorder { store, relay, config, metrics };
    let mut tick = tokio::time::interval(config.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            fact = rx.recv() => match fact {
                Some(fact) => rec.record(fact).await,
                None => break,
            },
            _ = tick.tick() => rec.sweep(unix_ms()).await,
            _ = shutdown.cancelled() => {
                while let Ok(fact) = rx.try_recv() {
                    rec.record(fact).await;
                }
                break;
            }
        }
    }
}

struct Recorder {
    store: Store,
    relay: RelayHandle,
    config: CallsConfig,
    metrics: Metrics,
}

/// A participant's figures at one instant (database plus the relay's live allocations).
#[derive(Debug, Clone, Default)]
pub struct ParticipantTotals {
    /// Admissions to the room.
    pub joins: i64,
    /// First admission, Unix ms.
    pub first_join_ms: Option<i64>,
    /// Connected time, ms (the current connection counted up to the instant asked for).
    pub connected_ms: i64,
    /// Connected at that instant.
    pub connected_now: bool,
    /// TURN allocations of the participant's credentials.
    pub relay_allocations: i64,
    /// Payload bytes relayed client → peer.
    pub bytes_to_peer: i64,
    /// Payload bytes relayed peer → client.
    pub bytes_to_client: i64,
    /// Client transport of the last allocation that relayed bytes.
    pub relay_transport: Option<String>,
}

impl ParticipantTotals {
    /// `relayed` when its allocations relayed at least [`RELAYED_MIN_BYTES`], else `direct`.
    pub fn transport(&self) -> ConnectionPath {
        if (self.bytes_to_peer + self.bytes_to_client) as u64 >= RELAYED_MIN_BYTES {
            ConnectionPath::Relayed
        } else {
            ConnectionPath::Direct
        }
    }

    /// [`ParticipantTotals::transport`], corrected by the participant's browser: when its own selected candidate is
    /// a relay one (`local_relay`, from the browser summary) and its allocations on Duet's relay carried bytes, its
    /// media went through Duet's relay even below [`RELAYED_MIN_BYTES`] (a call of a second or two).
    pub fn transport_seen_by(&self, local_relay: bool) -> ConnectionPath {
        if local_relay && self.bytes_to_peer + self.bytes_to_client > 0 {
            ConnectionPath::Relayed
        } else {
            self.transport()
        }
    }
}

/// How a participant's media went: straight to the other participant (or through a relay that is not Duet's), or
/// through Duet's TURN relay (at least [`RELAYED_MIN_BYTES`] relayed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionPath {
    /// No Duet relay carried its media.
    Direct,
    /// Duet's relay carried its media (`relay_transport` says over what).
    Relayed,
}

/// Reads the figures of every participant of `b` at `at_ms` inside `tx`, adding the relay's live allocations
/// (`live`: participant id, transport, bytes to peer, bytes to client).
pub async fn participant_totals(
    tx: &mut Transaction<'_, Any>,
    b: &Booking,
    at_ms: i64,
    live: &[(String, &'static str, u64, u64)],
) -> Result<Vec<(String, ParticipantTotals)>, StoreError> {
    let rows = sqlx::query(
        "SELECT participant_id, joins, first_join_ms, connected_since_ms, connected_ms, relay_allocations, \
         relay_bytes_to_peer, relay_bytes_to_client, relay_transport FROM call_participants WHERE booking_id = $1",
    )
    .bind(&b.id)
    .fetch_all(&mut **tx)
    .await?;
    let mut out = Vec::new();
    for p in &b.participants {
        let mut t = ParticipantTotals::default();
        if let Some(r) = rows.iter().find(|r| r.try_get::<String, _>("participant_id").is_ok_and(|id| id == p.id)) {
            let since: Option<i64> = r.try_get("connected_since_ms")?;
            t.joins = r.try_get("joins")?;
            t.first_join_ms = r.try_get("first_join_ms")?;
            t.connected_ms = r.try_get::<i64, _>("connected_ms")? + since.map_or(0, |s| (at_ms - s).max(0));
            t.connected_now = since.is_some();
            t.relay_allocations = r.try_get("relay_allocations")?;
            t.bytes_to_peer = r.try_get("relay_bytes_to_peer")?;
            t.bytes_to_client = r.try_get("relay_bytes_to_client")?;
            t.relay_transport = r.try_get("relay_transport")?;
        }
        for (_, transport, to_peer, to_client) in live.iter().filter(|l| l.0 == p.id) {
            t.bytes_to_peer += *to_peer as i64;
            t.bytes_to_client += *to_client as i64;
            if to_peer + to_client > 0 {
                t.relay_transport = Some(transport.to_string());
            }
        }
        out.push((p.id.clone(), t));
    }
    Ok(out)
}

/// The `participants[]` entries of `meeting.ended`.
fn ended_participants(b: &Booking, totals: &[(String, ParticipantTotals)]) -> Vec<Value> {
    totals
        .iter()
        .filter_map(|(pid, t)| {
            let p = b.participants.iter().find(|p| &p.id == pid)?;
            Some(json!({
                "participant_id": pid,
                "role": p.role.as_str(),
                "ref": p.reference,
                "joined": t.joins > 0,
                "joins": t.joins,
                "reconnects": (t.joins - 1).max(0),
                "connected_s": t.connected_ms / 1000,
                "transport": t.transport(),
                "relay_transport": t.relay_transport,
                "relay_allocations": t.relay_allocations,
                "relayed_bytes_to_peer": t.bytes_to_peer,
                "relayed_bytes_to_client": t.bytes_to_client,
            }))
        })
        .collect()
}

/// RFC 3339 UTC with milliseconds of Unix milliseconds.
pub fn rfc3339_ms(ms: i64) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// A transaction that holds the write lock from its first statement. SQLite (WAL) answers `SQLITE_BUSY` at once,
/// without waiting for its busy timeout, to a transaction that read and then tries to write after another connection
/// committed (its snapshot is stale); taking the lock first makes the busy timeout apply instead. On PostgreSQL the
/// statement changes nothing and locks nothing.
async fn begin_write(store: &Store) -> Result<Transaction<'static, Any>, StoreError> {
    let mut tx = store.pool.begin().await?;
    sqlx::query("DELETE FROM call_no_show_checks WHERE 1 = 0").execute(&mut *tx).await?;
    Ok(tx)
}

async fn next_event_n(tx: &mut Transaction<'_, Any>, booking: &str) -> Result<i64, StoreError> {
    let n: i64 = sqlx::query("SELECT COALESCE(MAX(n), 0) FROM call_events WHERE booking_id = $1")
        .bind(booking)
        .fetch_one(&mut **tx)
        .await?
        .try_get(0)?;
    Ok(n + 1)
}

async fn insert_event(
    tx: &mut Transaction<'_, Any>,
    booking: &str,
    participant: &str,
    kind: &str,
    at_ms: i64,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    let n = next_event_n(tx, booking).await?;
    if n > MAX_EVENTS_PER_BOOKING {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO call_events (booking_id, n, participant_id, kind, at_ms, reason) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(booking)
    .bind(n)
    .bind(participant)
    .bind(kind)
    .bind(at_ms)
    .bind(reason)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn ensure_participant(tx: &mut Transaction<'_, Any>, booking: &str, pid: &str) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO call_participants (booking_id, participant_id) VALUES ($1, $2) \
         ON CONFLICT (booking_id, participant_id) DO NOTHING",
    )
    .bind(booking)
    .bind(pid)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The common members of the meeting and participant events.
fn event_base(b: &Booking) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("booking_id".into(), json!(b.id));
    m.insert("external_id".into(), json!(b.external_id));
    m.insert("start_at".into(), json!(super::api::rfc3339(b.start_at)));
    m.insert("end_at".into(), json!(super::api::rfc3339(b.end_at)));
    m
}

impl Recorder {
    async fn record(&self, fact: Fact) {
        let label = match &fact {
            Fact::Joined { .. } => "joined",
            Fact::Left { .. } => "left",
            Fact::Ready { .. } => "ready",
            Fact::RoomClosed { .. } => "room_closed",
            Fact::RelayStarted { .. } => "relay_started",
            Fact::RelayEnded { .. } => "relay_ended",
        };
        // A failed transaction changed nothing: try again twice (a busy database, a serialization failure).
        let mut last = None;
        for attempt in 0..3 {
            match self.record_inner(fact.clone()).await {
                Ok(events) => {
                    if events > 0 {
                        self.store.wake_webhooks();
                    }
                    return;
                }
                Err(e) => {
                    tracing::debug!(target: "booking", fact = label, attempt, error = %e, "call fact not recorded yet");
                    last = Some(e);
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
        self.metrics.call_fact_errors.inc();
        if let Some(e) = last {
            tracing::warn!(target: "booking", fact = label, error = %e, "call fact not recorded");
        }
    }

    /// Counts one decided event and writes it to the outbox.
    async fn emit(
        &self,
        tx: &mut Transaction<'_, Any>,
        b: &Booking,
        event_type: &'static str,
        data: serde_json::Map<String, Value>,
        now_s: i64,
    ) -> Result<u64, StoreError> {
        self.metrics.call_events.with_label_values(&[event_type]).inc();
        // A booking whose personal data was purged (README, "Retention and erasure") keeps only the purge marker in
        // its webhook payloads, also for an event decided after the purge (a no-show at a cutoff the purge beat).
        // The no-op UPDATE takes the booking's row lock first (PostgreSQL; SQLite has one writer): a purge running at
        // the same time either committed before it (then `purged_at` is seen here) or waits for this transaction (then
        // its redaction sees this delivery).
        sqlx::query("UPDATE bookings SET purged_at = purged_at WHERE id = $1").bind(&b.id).execute(&mut **tx).await?;
        let purged: Option<i64> = sqlx::query_scalar("SELECT purged_at FROM bookings WHERE id = $1")
            .bind(&b.id)
            .fetch_optional(&mut **tx)
            .await?
            .flatten();
        let data = if purged.is_some() { json!({"booking_id": b.id, "purged": true}) } else { Value::Object(data) };
        enqueue_event(tx, &b.tenant_id, event_type, &data, now_s).await
    }

    /// Writes one fact and its events; returns how many webhook deliveries were queued.
    async fn record_inner(&self, fact: Fact) -> Result<u64, StoreError> {
        let booking_id = match &fact {
            Fact::Joined { booking, .. }
            | Fact::Left { booking, .. }
            | Fact::Ready { booking, .. }
            | Fact::RoomClosed { booking, .. }
            | Fact::RelayStarted { booking, .. }
            | Fact::RelayEnded { booking, .. } => booking.clone(),
        };
        // Room keys that are not bookings (a Virtual Y open relay, `vy:…`) have nothing to record.
        if booking_id.is_empty() || booking_id.len() > 64 || booking_id.contains(':') {
            return Ok(0);
        }
        let mut tx = begin_write(&self.store).await?;
        let Some(b) = booking_in(&mut tx, &booking_id).await? else {
            return Ok(0);
        };
        let now_s = unix_ms() / 1000;
        let known = |pid: &str| b.participants.iter().find(|p| p.id == pid).cloned();
        let mut queued = 0;
        match fact {
            Fact::Joined { participant, at_ms, .. } => {
                let Some(p) = known(&participant) else { return Ok(0) };
                sqlx::query(
                    "INSERT INTO call_sessions (booking_id, tenant_id, first_join_ms) VALUES ($1, $2, $3) \
                     ON CONFLICT (booking_id) DO NOTHING",
                )
                .bind(&b.id)
                .bind(&b.tenant_id)
                .bind(at_ms)
                .execute(&mut *tx)
                .await?;
                sqlx::query("UPDATE call_sessions SET all_left_ms = NULL WHERE booking_id = $1")
                    .bind(&b.id)
                    .execute(&mut *tx)
                    .await?;
                ensure_participant(&mut tx, &b.id, &p.id).await?;
                let row = sqlx::query(
                    "SELECT joins, connected_since_ms FROM call_participants WHERE booking_id = $1 AND participant_id = $2",
                )
                .bind(&b.id)
                .bind(&p.id)
                .fetch_one(&mut *tx)
                .await?;
                let joins: i64 = row.try_get::<i64, _>(0)? + 1;
                // A connection whose leave was lost (a dropped fact) ends where the next one starts.
                let missed = row.try_get::<Option<i64>, _>(1)?.map_or(0, |s| (at_ms - s).max(0));
                sqlx::query(
                    "UPDATE call_participants SET joins = $3, first_join_ms = COALESCE(first_join_ms, $4), \
                     connected_since_ms = $4, connected_ms = connected_ms + $5 \
                     WHERE booking_id = $1 AND participant_id = $2",
                )
                .bind(&b.id)
                .bind(&p.id)
                .bind(joins)
                .bind(at_ms)
                .bind(missed)
                .execute(&mut *tx)
                .await?;
                insert_event(&mut tx, &b.id, &p.id, "join", at_ms, None).await?;
                sqlx::query("UPDATE participants SET first_joined_at = COALESCE(first_joined_at, $1) WHERE id = $2")
                    .bind(at_ms / 1000)
                    .bind(&p.id)
                    .execute(&mut *tx)
                    .await?;
                let mut data = event_base(&b);
                data.insert("participant_id".into(), json!(p.id));
                data.insert("role".into(), json!(p.role.as_str()));
                data.insert("ref".into(), json!(p.reference));
                data.insert("joined_at".into(), json!(rfc3339_ms(at_ms)));
                data.insert("joins".into(), json!(joins));
                data.insert("reconnect".into(), json!(joins > 1));
                queued += self.emit(&mut tx, &b, "participant.joined", data, now_s).await?;
            }
            Fact::Left { participant, reason, at_ms, .. } => {
                let Some(p) = known(&participant) else { return Ok(0) };
                let row = sqlx::query(
                    "SELECT connected_since_ms, connected_ms FROM call_participants \
                     WHERE booking_id = $1 AND participant_id = $2",
                )
                .bind(&b.id)
                .bind(&p.id)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else { return Ok(0) };
                let since: Option<i64> = row.try_get(0)?;
                let add = since.map_or(0, |s| (at_ms - s).max(0));
                let connected_ms: i64 = row.try_get::<i64, _>(1)? + add;
                sqlx::query(
                    "UPDATE call_participants SET connected_since_ms = NULL, connected_ms = $3 \
                     WHERE booking_id = $1 AND participant_id = $2",
                )
                .bind(&b.id)
                .bind(&p.id)
                .bind(connected_ms)
                .execute(&mut *tx)
                .await?;
                insert_event(&mut tx, &b.id, &p.id, "leave", at_ms, Some(reason)).await?;
                let connected: i64 = sqlx::query(
                    "SELECT COUNT(*) FROM call_participants WHERE booking_id = $1 AND connected_since_ms IS NOT NULL",
                )
                .bind(&b.id)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
                if connected == 0 {
                    sqlx::query("UPDATE call_sessions SET all_left_ms = $2 WHERE booking_id = $1 AND ended_ms IS NULL")
                        .bind(&b.id)
                        .bind(at_ms)
                        .execute(&mut *tx)
                        .await?;
                }
                let mut data = event_base(&b);
                data.insert("participant_id".into(), json!(p.id));
                data.insert("role".into(), json!(p.role.as_str()));
                data.insert("ref".into(), json!(p.reference));
                data.insert("left_at".into(), json!(rfc3339_ms(at_ms)));
                data.insert("reason".into(), json!(reason));
                data.insert("connected_s".into(), json!(connected_ms / 1000));
                queued += self.emit(&mut tx, &b, "participant.left", data, now_s).await?;
            }
            Fact::Ready { session, at_ms, .. } => {
                let session = i64::try_from(session).unwrap_or(i64::MAX);
                let row = sqlx::query("SELECT started_ms FROM call_sessions WHERE booking_id = $1")
                    .bind(&b.id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(row) = row else { return Ok(0) };
                let started: Option<i64> = row.try_get(0)?;
                sqlx::query(
                    "UPDATE call_sessions SET sessions = CASE WHEN sessions < $2 THEN $2 ELSE sessions END, \
                     started_ms = COALESCE(started_ms, $3), all_left_ms = NULL WHERE booking_id = $1",
                )
                .bind(&b.id)
                .bind(session)
                .bind(at_ms)
                .execute(&mut *tx)
                .await?;
                if started.is_none() {
                    let mut data = event_base(&b);
                    data.insert("started_at".into(), json!(rfc3339_ms(at_ms)));
                    let parts: Vec<Value> = b
                        .participants
                        .iter()
                        .map(|p| json!({"participant_id": p.id, "role": p.role.as_str(), "ref": p.reference}))
                        .collect();
                    data.insert("participants".into(), Value::Array(parts));
                    queued += self.emit(&mut tx, &b, "meeting.started", data, now_s).await?;
                }
            }
            Fact::RoomClosed { reason, at_ms, .. } => {
                // A shutdown closes rooms that go on after the restart: not an end.
                if reason == "window_closed" || reason == "cancelled" {
                    queued += self.end_meeting(&mut tx, &b, at_ms, reason, now_s).await?;
                }
            }
            Fact::RelayStarted { participant, .. } => {
                let Some(p) = known(&participant) else { return Ok(0) };
                ensure_participant(&mut tx, &b.id, &p.id).await?;
                sqlx::query(
                    "UPDATE call_participants SET relay_allocations = relay_allocations + 1 \
                     WHERE booking_id = $1 AND participant_id = $2",
                )
                .bind(&b.id)
                .bind(&p.id)
                .execute(&mut *tx)
                .await?;
            }
            Fact::RelayEnded { participant, transport, bytes_to_peer, bytes_to_client, .. } => {
                let Some(p) = known(&participant) else { return Ok(0) };
                ensure_participant(&mut tx, &b.id, &p.id).await?;
                let (to_peer, to_client) = (
                    i64::try_from(bytes_to_peer).unwrap_or(i64::MAX),
                    i64::try_from(bytes_to_client).unwrap_or(i64::MAX),
                );
                let used = (to_peer > 0 || to_client > 0).then_some(transport);
                sqlx::query(
                    "UPDATE call_participants SET relay_bytes_to_peer = relay_bytes_to_peer + $3, \
                     relay_bytes_to_client = relay_bytes_to_client + $4, \
                     relay_transport = COALESCE($5, relay_transport) WHERE booking_id = $1 AND participant_id = $2",
                )
                .bind(&b.id)
                .bind(&p.id)
                .bind(to_peer)
                .bind(to_client)
                .bind(used)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(queued)
    }

    /// Ends the meeting of `b` at `at_ms` with `reason` (`window_closed`, `cancelled`, `all_left`) if it started and
    /// has not ended: closes the connections still open in the database at that instant and writes `meeting.ended`.
    async fn end_meeting(
        &self,
        tx: &mut Transaction<'_, Any>,
        b: &Booking,
        at_ms: i64,
        reason: &'static str,
        now_s: i64,
    ) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT started_ms, ended_ms FROM call_sessions WHERE booking_id = $1")
            .bind(&b.id)
            .fetch_optional(&mut **tx)
            .await?;
        let Some(row) = row else { return Ok(0) };
        let (started, ended): (Option<i64>, Option<i64>) = (row.try_get(0)?, row.try_get(1)?);
        let Some(started) = started else { return Ok(0) };
        if ended.is_some() {
            return Ok(0);
        }
        let at_ms = at_ms.max(started);
        sqlx::query(
            "UPDATE call_participants SET connected_ms = connected_ms + \
             (CASE WHEN connected_since_ms < $2 THEN $2 - connected_since_ms ELSE 0 END), connected_since_ms = NULL \
             WHERE booking_id = $1 AND connected_since_ms IS NOT NULL",
        )
        .bind(&b.id)
        .bind(at_ms)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE call_sessions SET ended_ms = $2, end_reason = $3, all_left_ms = NULL WHERE booking_id = $1",
        )
        .bind(&b.id)
        .bind(at_ms)
        .bind(reason)
        .execute(&mut **tx)
        .await?;
        let live = self.relay.booking_usage(&b.id);
        let totals = participant_totals(tx, b, at_ms, &live).await?;
        let mut data = event_base(b);
        data.insert("started_at".into(), json!(rfc3339_ms(started)));
        data.insert("ended_at".into(), json!(rfc3339_ms(at_ms)));
        data.insert("duration_s".into(), json!((at_ms - started) / 1000));
        data.insert("end_reason".into(), json!(reason));
        data.insert("participants".into(), Value::Array(ended_participants(b, &totals)));
        self.emit(tx, b, "meeting.ended", data, now_s).await
    }

    /// The durable timers: meetings idle past the grace or past their hard end, and no-shows.
    async fn sweep(&self, now_ms: i64) {
        if let Err(e) = self.sweep_inner(now_ms).await {
            self.metrics.call_fact_errors.inc();
            tracing::warn!(target: "booking", error = %e, "call sweep failed");
        }
    }

    async fn sweep_inner(&self, now_ms: i64) -> Result<(), StoreError> {
        let grace_ms = i64::try_from(self.config.end_grace.as_millis()).unwrap_or(i64::MAX);
        let now_s = now_ms / 1000;
        let mut queued = 0;
        // Both participants gone for the grace: the meeting ended at the last leave.
        let idle = sqlx::query(
            "SELECT booking_id FROM call_sessions WHERE ended_ms IS NULL AND started_ms IS NOT NULL \
             AND all_left_ms IS NOT NULL AND all_left_ms <= $1 ORDER BY all_left_ms LIMIT $2",
        )
        .bind(now_ms.saturating_sub(grace_ms))
        .bind(SWEEP_BATCH)
        .fetch_all(&self.store.pool)
        .await?;
        for r in idle {
            let id: String = r.try_get(0)?;
            let mut tx = begin_write(&self.store).await?;
            let Some(b) = booking_in(&mut tx, &id).await? else { continue };
            let left: Option<i64> = sqlx::query("SELECT all_left_ms FROM call_sessions WHERE booking_id = $1")
                .bind(&id)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
            // Someone came back since the query.
            let Some(left) = left.filter(|l| *l <= now_ms.saturating_sub(grace_ms)) else { continue };
            queued += self.end_meeting(&mut tx, &b, left, "all_left", now_s).await?;
            tx.commit().await?;
        }
        // Started meetings past their hard end (plus the grace) that no room close ended: the daemon was down then.
        let stale = sqlx::query(
            "SELECT s.booking_id FROM call_sessions s JOIN bookings b ON b.id = s.booking_id \
             WHERE s.ended_ms IS NULL AND s.started_ms IS NOT NULL AND b.hard_end_at * 1000 <= $1 LIMIT $2",
        )
        .bind(now_ms.saturating_sub(grace_ms))
        .bind(SWEEP_BATCH)
        .fetch_all(&self.store.pool)
        .await?;
        for r in stale {
            let id: String = r.try_get(0)?;
            let mut tx = begin_write(&self.store).await?;
            let Some(b) = booking_in(&mut tx, &id).await? else { continue };
            let reason = if b.status == Status::Cancelled { "cancelled" } else { "window_closed" };
            let at = b.window.hard_end_at * 1000;
            queued += self.end_meeting(&mut tx, &b, at, reason, now_s).await?;
            tx.commit().await?;
        }
        // No-shows at the cutoff.
        let due = sqlx::query(
            "SELECT id FROM bookings b WHERE status = 'confirmed' AND join_cutoff_at <= $1 AND join_cutoff_at > $2 \
             AND NOT EXISTS (SELECT 1 FROM call_no_show_checks c \
                             WHERE c.booking_id = b.id AND c.join_cutoff_at = b.join_cutoff_at) \
             ORDER BY join_cutoff_at LIMIT $3",
        )
        .bind(now_s)
        .bind(now_s - NO_SHOW_LOOKBACK_S)
        .bind(SWEEP_BATCH)
        .fetch_all(&self.store.pool)
        .await?;
        for r in due {
            let id: String = r.try_get(0)?;
            let mut tx = begin_write(&self.store).await?;
            let Some(b) = booking_in(&mut tx, &id).await? else { continue };
            if b.status != Status::Confirmed || b.window.join_cutoff_at > now_s {
                continue;
            }
            let claimed = sqlx::query(
                "INSERT INTO call_no_show_checks (booking_id, join_cutoff_at, checked_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (booking_id, join_cutoff_at) DO NOTHING",
            )
            .bind(&b.id)
            .bind(b.window.join_cutoff_at)
            .bind(now_s)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if claimed == 0 {
                continue; // another node decided it
            }
            let joined: Vec<String> =
                sqlx::query("SELECT participant_id FROM call_participants WHERE booking_id = $1 AND joins > 0")
                    .bind(&b.id)
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<_, _>>()?;
            for p in &b.participants {
                if p.first_joined_at.is_some() || joined.contains(&p.id) {
                    continue;
                }
                let mut data = event_base(&b);
                data.insert("participant_id".into(), json!(p.id));
                data.insert("role".into(), json!(p.role.as_str()));
                data.insert("ref".into(), json!(p.reference));
                data.insert("display_name".into(), json!(p.display_name));
                data.insert("join_cutoff_at".into(), json!(super::api::rfc3339(b.window.join_cutoff_at)));
                queued += self.emit(&mut tx, &b, "participant.no_show", data, now_s).await?;
            }
            tx.commit().await?;
        }
        if queued > 0 {
            self.store.wake_webhooks();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_relayed_call_is_relayed_when_the_browser_says_so() {
        let mut t = ParticipantTotals::default();
        assert_eq!(
            t.transport_seen_by(true),
            ConnectionPath::Direct,
            "nothing relayed: the browser alone decides nothing"
        );
        t.bytes_to_peer = 15_000;
        t.bytes_to_client = 15_000;
        assert_eq!(t.transport_seen_by(false), ConnectionPath::Direct);
        assert_eq!(t.transport_seen_by(true), ConnectionPath::Relayed);
    }

    #[test]
    fn relayed_needs_the_threshold_in_both_directions_together() {
        let mut t = ParticipantTotals::default();
        assert_eq!(t.transport(), ConnectionPath::Direct);
        t.bytes_to_peer = (RELAYED_MIN_BYTES / 2) as i64;
        t.bytes_to_client = (RELAYED_MIN_BYTES / 2 - 1) as i64;
        assert_eq!(t.transport(), ConnectionPath::Direct, "ICE checks over an unused relay candidate");
        t.bytes_to_client += 1;
        assert_eq!(t.transport(), ConnectionPath::Relayed);
    }

    #[test]
    fn instants_have_milliseconds() {
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_ms(1_700_000_000_000), "2023-11-14T22:13:20Z");
    }
}
