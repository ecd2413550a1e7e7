//! Booking storage (sqlx): SQLite by default (`<data_dir>/duet.sqlite3`, WAL), PostgreSQL with `[database] url`.
//!
//! One code path for both backends: sqlx's `Any` driver, the same SQL text (`$1, $2 …` placeholders, which SQLite
//! accepts too) and the same row mapping (`try_get`). Each backend has its migrations (`migrations/sqlite/`,
//! `migrations/postgres/`, the same schema), applied on open.
//!
//! Rows hold Unix seconds (UTC). Link tokens are stored only as SHA-256 hashes. A cancel bumps `sequence` in the same
//! statement that changes the status, so session tokens issued before it stop verifying at once.

use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyPool, ConnectOptions, Executor, Row};

use crate::config::DatabaseConfig;
use crate::data_dir::DataDir;

use super::email_outbox::EmailKind;
use super::webhooks::{booking_data, enqueue_event};
use super::window::{JoinPolicy, JoinWindow, Role};
use crate::api_key::Scope;

/// Booking status as stored (`ended` is derived from the clock, never stored: see [`Booking::ended`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Created before the app confirms it (e.g. before payment): links exist, joins get 409
    /// `booking_pending_confirmation`.
    Pending,
    /// Scheduled; joins follow the window.
    Confirmed,
    /// Refused while pending: joins get 410 `booking_rejected`, rooms close 4004, TURN credentials revoked.
    Rejected,
    /// Cancelled: joins get 410, rooms close 4004, TURN credentials revoked.
    Cancelled,
}

impl Status {
    /// Stored and wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Confirmed => "confirmed",
            Status::Rejected => "rejected",
            Status::Cancelled => "cancelled",
        }
    }

    /// The status of its stored form (`None` for anything else).
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "pending" => Status::Pending,
            "confirmed" => Status::Confirmed,
            "rejected" => Status::Rejected,
            "cancelled" => Status::Cancelled,
            _ => return None,
        })
    }

    /// Rejected or cancelled: the booking's links answer 410 and its tokens and TURN credentials are revoked.
    pub fn is_revoked(self) -> bool {
        matches!(self, Status::Rejected | Status::Cancelled)
    }
}

/// The outcome of [`Store::transition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The booking moved to the new status (and its `sequence` went up).
    Changed,
    /// The booking already had the new status: nothing changed (idempotent repeat).
    Unchanged,
    /// The booking's status does not allow the move (409 `invalid_transition`); nothing changed.
    Refused,
}

/// A stored `Idempotency-Key` of `POST /v1/bookings` (kept [`IDEMPOTENCY_TTL_S`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// The key (1-255 printable ASCII characters), unique per tenant.
    pub key: String,
    /// SHA-256 of the canonical request body (32 bytes).
    pub request_hash: Vec<u8>,
    /// The booking the first request created.
    pub booking_id: String,
    /// HTTP status of the original answer (201).
    pub status_code: i64,
    /// The original JSON body, without link tokens.
    pub response: String,
    /// When the key was first used, Unix seconds.
    pub created_at: i64,
}

/// How long an `Idempotency-Key` is kept: 24 h, in seconds.
pub const IDEMPOTENCY_TTL_S: i64 = 86_400;

/// The outcome of [`Store::create_booking_idempotent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotentCreate {
    /// The booking and the key's record were inserted together.
    Created,
    /// The key was already recorded (by an earlier or a concurrent request, now committed): nothing was inserted.
    Existing(IdempotencyRecord),
}

/// Filters of [`Store::list`]; every filter is optional, the tenant is not.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// `start_at >= from` (Unix seconds).
    pub from: Option<i64>,
    /// `start_at < to` (Unix seconds).
    pub to: Option<i64>,
    /// The (derived) status.
    pub status: Option<StatusFilter>,
    /// A participant of the booking has this `ref`.
    pub participant_ref: Option<String>,
    /// The booking's `external_id`.
    pub external_id: Option<String>,
    /// Only bookings after this `(start_at, id)` position (the cursor).
    pub after: Option<(i64, String)>,
    /// At most this many rows.
    pub limit: u32,
    /// The clock for the derived `ended` status, Unix seconds.
    pub now: i64,
}

/// A status filter of [`Store::list`]: `confirmed` means confirmed and not ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// Stored status `pending`.
    Pending,
    /// Stored `confirmed` with `hard_end_at` still ahead.
    Confirmed,
    /// Stored `rejected`.
    Rejected,
    /// Stored `cancelled`.
    Cancelled,
    /// Derived: stored `confirmed` with `hard_end_at` passed.
    Ended,
}

/// A participant row.
#[derive(Debug, Clone)]
pub struct Participant {
    /// `par_…`.
    pub id: String,
    /// Host or guest.
    pub role: Role,
    /// The app's own id for the person.
    pub reference: Option<String>,
    /// Shown to the other participant.
    pub display_name: String,
    /// First admission, Unix seconds.
    pub first_joined_at: Option<i64>,
    /// Contact email (validated loosely by the API, at most 254 characters).
    pub email: Option<String>,
    /// IANA time zone name, e.g. `Europe/Berlin`.
    pub time_zone: Option<String>,
    /// BCP 47 language tag, e.g. `en-GB`.
    pub locale: Option<String>,
    /// Goes up with every rotation or revocation of the participant's link: session tokens carry the epoch they were
    /// issued under (claim `pep`) and stop verifying on the WebSocket once it moved.
    pub link_epoch: i64,
    /// When the link was revoked (Unix seconds); `None` while the participant has a working link.
    pub link_revoked_at: Option<i64>,
    /// The link token encrypted at rest ([`super::link_seal`]), for invitations and emails; `None` when revoked or
    /// created before migration 0009.
    pub link_token_enc: Option<String>,
}

/// The kind of a booking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A Duet room: join answers a session token and TURN credentials.
    Hosted,
    /// A remote meeting URL (Zoom, Meet, Teams): no room, no TURN; join answers the URL inside the window.
    ExternalLink,
}

impl Kind {
    /// Stored and wire form: `hosted` or `external_link`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Hosted => "hosted",
            Kind::ExternalLink => "external_link",
        }
    }
}

/// A booking with its participants.
#[derive(Debug, Clone)]
pub struct Booking {
    /// `bkg_…`.
    pub id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Title.
    pub title: String,
    /// The app's id (Virtual Y `meetingId`).
    pub external_id: Option<String>,
    /// Scheduled start, Unix seconds.
    pub start_at: i64,
    /// Scheduled end, Unix seconds.
    pub end_at: i64,
    /// The join window.
    pub window: JoinWindow,
    /// Status.
    pub status: Status,
    /// Bumped by every change that invalidates issued tokens.
    pub sequence: i64,
    /// Creation, Unix seconds.
    pub created_at: i64,
    /// Last change, Unix seconds.
    pub updated_at: i64,
    /// Seconds before `start_at` the host is kept free (0-86400): part of the blocked interval, see
    /// [`Booking::blocked`].
    pub buffer_before_s: i64,
    /// Seconds after `end_at` the host is kept free (0-86400).
    pub buffer_after_s: i64,
    /// Host then guest.
    pub participants: Vec<Participant>,
    /// `hosted` or `external_link`.
    pub kind: Kind,
    /// The https URL to open, exactly for [`Kind::ExternalLink`].
    pub external_url: Option<String>,
    /// The app's JSON object as it was sent (at most 4 KiB), echoed back verbatim.
    pub metadata: Option<String>,
    /// The booking's own join policy (members absent: the daemon's `[booking]` defaults); `window` was computed
    /// with it.
    pub join_policy: JoinPolicy,
    /// The latest `hard_end_at` the booking ever had, Unix seconds (TURN credentials issued under it may carry it).
    pub max_hard_end_at: i64,
    /// The last change of its times or join policy, Unix seconds; `None` when never rescheduled.
    pub rescheduled_at: Option<i64>,
    /// Seconds the host added from inside the call, over all its extensions (capped by `[booking]
    /// host_extend_max`).
    pub extended_s: i64,
    /// The event type the booking was made from (`POST /v1/event-types/{id}/bookings`), `evt_…`; `None` for
    /// bookings made with `POST /v1/bookings`.
    pub event_type_id: Option<String>,
    /// The guest's note (at most 2000 characters) of a booking made from an event type.
    pub note: Option<String>,
}

impl Booking {
    /// The host's blocked interval `[start_at - buffer_before_s, end_at + buffer_after_s)`, Unix seconds: two
    /// `pending` or `confirmed` bookings of one tenant with the same host `ref` never have intersecting blocked
    /// intervals (touching ones, `end == start`, do not intersect).
    pub fn blocked(&self) -> (i64, i64) {
        (self.start_at - self.buffer_before_s, self.end_at + self.buffer_after_s)
    }

    /// The derived `ended` status: a confirmed booking whose `hard_end_at` has passed at `now` (Unix seconds).
    pub fn ended(&self, now: i64) -> bool {
        self.status == Status::Confirmed && now >= self.window.hard_end_at
    }

    /// The status shown in responses at `now`: the stored one, or `ended` (see [`Booking::ended`]).
    pub fn status_at(&self, now: i64) -> &'static str {
        if self.ended(now) { "ended" } else { self.status.as_str() }
    }

    /// Whether `p` is a no-show at `now`: the booking is confirmed, `join_cutoff_at` has passed and `p` never
    /// joined.
    pub fn no_show(&self, p: &Participant, now: i64) -> bool {
        self.status == Status::Confirmed && now >= self.window.join_cutoff_at && p.first_joined_at.is_none()
    }
}

/// What a `booking.rescheduled` webhook event says beyond the booking ([`Store::update_booking`]).
#[derive(Debug, Clone, Copy)]
pub struct RescheduleEvent {
    /// `rescheduled` (new times or join policy) or `extended` (the same start, a later end).
    pub reason: &'static str,
    /// The host extended the meeting from inside the call (`POST /v1/join/{link}/extend`): both sockets already got
    /// the new window, so no reschedule email goes out. Any other change of the times mails both participants.
    pub from_call: bool,
    /// The start before the change, Unix seconds.
    pub previous_start_at: i64,
    /// The end before the change, Unix seconds.
    pub previous_end_at: i64,
}

/// A participant to insert, with the hash of its link token.
#[derive(Debug, Clone)]
pub struct NewParticipant {
    /// Id.
    pub id: String,
    /// Role.
    pub role: Role,
    /// App reference.
    pub reference: Option<String>,
    /// Display name.
    pub display_name: String,
    /// SHA-256 of the link token.
    pub link_token_hash: Vec<u8>,
    /// The link token sealed by [`super::link_seal::LinkSealer::seal`] (`None`: not kept).
    pub link_token_enc: Option<String>,
    /// Contact email.
    pub email: Option<String>,
    /// IANA time zone name.
    pub time_zone: Option<String>,
    /// BCP 47 language tag.
    pub locale: Option<String>,
}

/// What [`Store::set_link`] does to a participant's link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkChange {
    /// A new link replaces the old one (a revoked link is live again).
    Rotate,
    /// The link is replaced by one nobody holds and marked revoked.
    Revoke,
}

/// An API key row (the key itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// `key_…` (the admin key is `key_admin`).
    pub id: String,
    /// The tenant it authenticates as.
    pub tenant_id: String,
    /// The operator's label for the key, if any.
    pub name: Option<String>,
    /// What the key may do.
    pub scopes: Vec<Scope>,
    /// SHA-256 of the key (32 bytes).
    pub key_hash: Vec<u8>,
    /// Creation of the current key (the last rotation), Unix seconds.
    pub created_at: i64,
    /// Expiry, Unix seconds; from then on the key answers 401.
    pub expires_at: Option<i64>,
    /// Revocation, Unix seconds; a revoked key answers 401.
    pub revoked_at: Option<i64>,
}

impl ApiKey {
    /// Whether the key authenticates at `now` (Unix seconds): neither revoked nor expired.
    pub fn is_live(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }
}

/// A tenant: the owner of API keys and bookings. Keys of one tenant never see another tenant's objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// `ten_…` (the embedded default is `ten_default`).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Creation, Unix seconds.
    pub created_at: i64,
}

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `external_id` already used by another booking of the tenant.
    #[error("external_id already used")]
    DuplicateExternalId,
    /// The tenant named by a new API key does not exist.
    #[error("no such tenant")]
    UnknownTenant,
    /// The `Idempotency-Key` is held by a request that has not finished (409 `idempotency_key_in_use`); only seen
    /// if the other request's transaction was rolled back while this one waited.
    #[error("idempotency key in use")]
    IdempotencyKeyInUse,
    /// The booking would overlap (buffers included) a `pending` or `confirmed` booking of the same tenant whose host
    /// has the same `ref` (409 `slot_unavailable`); nothing was written. Raised by the database: the PostgreSQL
    /// exclusion constraint `bookings_host_no_overlap` (SQLSTATE 23P01) or the SQLite triggers of the same name
    /// (migration 0004), on insert and on every update of a booking's times, buffers, host or status.
    #[error("the host already has a booking at this time")]
    SlotUnavailable,
    /// The tenant already has a host with this `ref` (409 `host_ref_taken`).
    #[error("host ref already used")]
    HostRefTaken,
    /// The host already has an event type with this slug (409 `slug_taken`).
    #[error("event type slug already used")]
    SlugTaken,
    /// The schedule is used by an event type and cannot be deleted (409 `schedule_in_use`).
    #[error("schedule in use")]
    ScheduleInUse,
    /// Anything from the database.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// The name of the rule that keeps a host from being double-booked: the PostgreSQL exclusion constraint, and the
/// text the SQLite triggers raise.
pub const HOST_NO_OVERLAP: &str = "bookings_host_no_overlap";

/// Whether a database error is the no-double-booking rule's refusal (PostgreSQL SQLSTATE 23P01 on
/// [`HOST_NO_OVERLAP`], or the SQLite trigger's `RAISE(ABORT, 'slot_unavailable: …')`).
fn is_host_overlap(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(d) = e else { return false };
    if d.code().as_deref() == Some("23P01") {
        return d.constraint().is_none_or(|c| c == HOST_NO_OVERLAP);
    }
    d.message().contains(HOST_NO_OVERLAP) && d.message().contains("slot_unavailable")
}

/// [`StoreError::SlotUnavailable`] for the no-double-booking refusal, [`StoreError::Db`] for anything else.
fn db_error(e: sqlx::Error) -> StoreError {
    if is_host_overlap(&e) { StoreError::SlotUnavailable } else { StoreError::Db(e) }
}

/// Which database a [`Store`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// SQLite (the embedded default).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// Migrations of the SQLite backend (`migrations/sqlite/`; `0001_init.sql` is the file older versions applied from
/// `migrations/`, unchanged, so existing databases keep their checksums).
pub static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
/// Migrations of the PostgreSQL backend (`migrations/postgres/`, the same schema).
pub static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// Per-connection settings of SQLite: WAL, `synchronous = NORMAL` (a power loss may lose the last commits, never
/// corrupts the file), foreign keys enforced, 5 s busy timeout (so `duet api-key` can write next to the daemon).
const SQLITE_PRAGMAS: &str =
    "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;";

/// The booking store.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    backend: Backend,
    /// Signalled after a commit that queued webhook deliveries ([`Store::wake_webhooks`]).
    pub(super) webhook_wake: std::sync::Arc<tokio::sync::Notify>,
    /// What the email outbox gets ([`Store::with_email`]); `None`: email is off and nothing is queued.
    pub(super) email: Option<std::sync::Arc<super::email_outbox::EmailPlan>>,
    /// Signalled after a commit that queued emails ([`Store::wake_email`]).
    pub(super) email_wake: std::sync::Arc<tokio::sync::Notify>,
}

/// sqlx logs every statement it runs at DEBUG (target `sqlx::query`, the SQL text with its `$n` placeholders) and
/// statements slower than 1 s at WARN. Duet binds every value, so the text holds no personal data, but at `debug` it
/// is one line per query of every background task: moved to TRACE, where only someone tracing sqlx sees it.
fn quiet_statements(opts: AnyConnectOptions) -> AnyConnectOptions {
    opts.log_statements(log::LevelFilter::Trace)
}

impl Store {
    /// Opens (creating if missing) the SQLite database at `path` with the default pool size (8) and applies the SQLite
    /// migrations.
    pub async fn open(path: &Path) -> Result<Store, sqlx::Error> {
        Store::open_sqlite(path, 8).await
    }

    /// Opens (creating if missing) the SQLite database at `path` with at most `max_connections` connections (WAL,
    /// `synchronous = NORMAL`, foreign keys on, 5 s busy timeout) and applies the SQLite migrations.
    pub async fn open_sqlite(path: &Path, max_connections: u32) -> Result<Store, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let path = std::path::absolute(path).map_err(sqlx::Error::Io)?;
        let sqlite = SqliteConnectOptions::new().filename(&path).create_if_missing(true);
        let opts = quiet_statements(AnyConnectOptions::from_url(&sqlite.to_url_lossy())?);
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(SQLITE_PRAGMAS).await?;
                    Ok(())
                })
            })
            .connect_with(opts)
            .await?;
        SQLITE_MIGRATIONS.run(&pool).await?;
        Ok(Store {
            pool,
            backend: Backend::Sqlite,
            webhook_wake: Default::default(),
            email: None,
            email_wake: Default::default(),
        })
    }

    /// Connects to PostgreSQL at `url` (`postgres://…`) with at most `max_connections` connections (10 s to get one)
    /// and applies the PostgreSQL migrations. Errors: unreachable server, refused login, missing database, a failed
    /// migration (sqlx's messages carry no part of the URL).
    pub async fn open_postgres(url: &str, max_connections: u32) -> Result<Store, sqlx::Error> {
        sqlx::any::install_default_drivers();
        const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
        let opts = quiet_statements(url.parse()?);
        // One connection first, so an unreachable server or a refused login is reported as such (the pool would only
        // say that it timed out).
        let first =
            tokio::time::timeout(CONNECT_TIMEOUT, <sqlx::AnyConnection as sqlx::Connection>::connect_with(&opts))
                .await
                .map_err(|_| {
                    sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, "no connection within 10 s"))
                })??;
        sqlx::Connection::close(first).await?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(opts)
            .await?;
        POSTGRES_MIGRATIONS.run(&pool).await?;
        Ok(Store {
            pool,
            backend: Backend::Postgres,
            webhook_wake: Default::default(),
            email: None,
            email_wake: Default::default(),
        })
    }

    /// Opens the store `[database]` configures: SQLite in `data` ([`DataDir::database`], created 0600 if missing) or
    /// PostgreSQL at `database.url`. Errors name the file, or the key `database.url` with the URL's password hidden.
    pub async fn open_configured(db: &DatabaseConfig, data: &DataDir) -> anyhow::Result<Store> {
        use anyhow::Context;
        match db {
            DatabaseConfig::Sqlite { max_connections } => {
                let path = data.database()?;
                Store::open_sqlite(&path, *max_connections)
                    .await
                    .with_context(|| format!("opening database {}", path.display()))
            }
            DatabaseConfig::Postgres { url, max_connections } => Store::open_postgres(url.expose(), *max_connections)
                .await
                .with_context(|| format!("opening the PostgreSQL database of `database.url` ({})", url.redacted())),
        }
    }

    /// The backend this store runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Waits for the connections to close (checkpointing the WAL); for short-lived users such as `duet api-key`.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Cheap liveness query for `/readyz`: false when the database does not answer `SELECT 1` within 2 s.
    pub async fn ping(&self) -> bool {
        let q = sqlx::query("SELECT 1").execute(&self.pool);
        matches!(tokio::time::timeout(Duration::from_secs(2), q).await, Ok(Ok(_)))
    }

    /// Sets the key of API key `id` (SHA-256 `key_hash`) for `tenant`, inserting the row if `id` is new (with every
    /// scope, no expiry: this is how the admin key `key_admin` is kept in step with its file). A different
    /// hash replaces the stored one (the old key stops authenticating at once) and clears `revoked_at`; the same hash
    /// changes nothing, so a revoked key stays revoked. Returns whether the row was inserted or changed.
    ///
    /// Errors: [`StoreError::Db`], e.g. a unique violation when another key id already has this hash.
    pub async fn upsert_api_key(&self, id: &str, tenant: &str, key_hash: &[u8], now: i64) -> Result<bool, StoreError> {
        let changed = sqlx::query(
            "INSERT INTO api_keys (id, tenant_id, key_hash, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET tenant_id = excluded.tenant_id, key_hash = excluded.key_hash, \
             created_at = excluded.created_at, revoked_at = NULL WHERE api_keys.key_hash <> excluded.key_hash",
        )
        .bind(id)
        .bind(tenant)
        .bind(key_hash)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed == 1)
    }

    /// Marks API key `id` revoked at `now` (Unix seconds): it answers 401 from the next request on. Returns false when
    /// there is no such key or it was already revoked.
    pub async fn revoke_api_key(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let changed = sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(changed == 1)
    }

    /// API key `id`, if stored (live or not).
    pub async fn api_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        let row = sqlx::query(&format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(api_key_from_row).transpose()
    }

    /// The API key whose SHA-256 is `key_hash`, live or not (the caller checks [`ApiKey::is_live`]).
    pub async fn api_key_by_hash(&self, key_hash: &[u8]) -> Result<Option<ApiKey>, StoreError> {
        let row = sqlx::query(&format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE key_hash = $1"))
            .bind(key_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(api_key_from_row).transpose()
    }

    /// The tenant of a live API key: not revoked, not expired now (the daemon's clock), whatever its scopes.
    pub async fn tenant_for_key(&self, key_hash: &[u8]) -> Result<Option<String>, StoreError> {
        let now = crate::app::unix_now();
        Ok(self.api_key_by_hash(key_hash).await?.filter(|k| k.is_live(now)).map(|k| k.tenant_id))
    }

    /// The API keys of `tenant` (all tenants with `None`), oldest first.
    pub async fn api_keys(&self, tenant: Option<&str>) -> Result<Vec<ApiKey>, StoreError> {
        let rows = match tenant {
            Some(t) => {
                sqlx::query(&format!(
                    "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id"
                ))
                .bind(t)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!("SELECT {API_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(api_key_from_row).collect()
    }

    /// Inserts API key row `k` (its tenant must exist; `scopes` at least one), in one statement that also checks
    /// that the tenant exists. Errors: [`StoreError::UnknownTenant`], [`StoreError::Db`].
    pub async fn create_api_key(&self, k: &ApiKey) -> Result<(), StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO api_keys (id, tenant_id, name, scopes, key_hash, created_at, expires_at, revoked_at) \
             SELECT $1, id, $2, $3, $4, $5, $6, $8 FROM tenants WHERE id = $7",
        )
        .bind(&k.id)
        .bind(&k.name)
        .bind(crate::api_key::scopes_to_text(&k.scopes))
        .bind(&k.key_hash)
        .bind(k.created_at)
        .bind(k.expires_at)
        .bind(&k.tenant_id)
        .bind(k.revoked_at)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(StoreError::UnknownTenant);
        }
        Ok(())
    }

    /// Gives API key `id` a new key (SHA-256 `key_hash`) created at `now`, keeping its tenant, name, scopes and
    /// expiry and clearing a revocation: the old key fails from the next request on. Returns false for an unknown id.
    pub async fn rotate_api_key(&self, id: &str, key_hash: &[u8], now: i64) -> Result<bool, StoreError> {
        let changed =
            sqlx::query("UPDATE api_keys SET key_hash = $1, created_at = $2, revoked_at = NULL WHERE id = $3")
                .bind(key_hash)
                .bind(now)
                .bind(id)
                .execute(&self.pool)
                .await?
                .rows_affected();
        Ok(changed == 1)
    }

    /// Creates tenant `id` named `name` at `now` (Unix seconds).
    pub async fn create_tenant(&self, id: &str, name: &str, now: i64) -> Result<Tenant, StoreError> {
        sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(name)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(Tenant { id: id.into(), name: name.into(), created_at: now })
    }

    /// Creates tenant `id` named `name` at `now` unless it exists (start-up's default tenant).
    pub async fn ensure_tenant(&self, id: &str, name: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING")
            .bind(id)
            .bind(name)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Tenant `id`, if it exists.
    pub async fn tenant(&self, id: &str) -> Result<Option<Tenant>, StoreError> {
        let row = sqlx::query("SELECT id, name, created_at FROM tenants WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(tenant_from_row).transpose()
    }

    /// Every tenant: the default tenant first, then oldest first.
    pub async fn tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, created_at FROM tenants \
             ORDER BY CASE WHEN id = 'ten_default' THEN 0 ELSE 1 END, created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(tenant_from_row).collect()
    }

    /// Inserts a booking and its participants in one transaction, with its `booking.created` webhook event (outbox).
    /// The host participant's `ref` is stored on the booking as its `host_ref` (the no-double-booking rule's key).
    ///
    /// Errors: [`StoreError::DuplicateExternalId`], [`StoreError::SlotUnavailable`] (both: nothing inserted),
    /// [`StoreError::Db`].
    pub async fn create_booking(&self, b: &Booking, parts: &[NewParticipant]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        insert_booking(&mut tx, b, parts).await?;
        let queued =
            enqueue_event(&mut tx, &b.tenant_id, "booking.created", &booking_data(b, b.created_at), b.created_at)
                .await?;
        let mailed = self.enqueue_created_emails(&mut tx, b).await?;
        tx.commit().await?;
        if queued > 0 {
            self.wake_webhooks();
        }
        if mailed > 0 {
            self.wake_email();
        }
        Ok(())
    }

    /// Inserts a booking, its participants, its `booking.created` webhook event and the record of its
    /// `Idempotency-Key` in one transaction. The record is
    /// inserted first: a concurrent request with the same key waits for this transaction (SQLite: the write lock;
    /// PostgreSQL: the unique index) and then gets [`IdempotentCreate::Existing`], so one key creates at most one
    /// booking. A record older than [`IDEMPOTENCY_TTL_S`] at `rec.created_at` is replaced.
    ///
    /// Errors: [`StoreError::DuplicateExternalId`], [`StoreError::SlotUnavailable`] (both: nothing inserted, the key
    /// stays free), [`StoreError::Db`].
    pub async fn create_booking_idempotent(
        &self,
        b: &Booking,
        parts: &[NewParticipant],
        rec: &IdempotencyRecord,
    ) -> Result<IdempotentCreate, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM idempotency_keys WHERE tenant_id = $1 AND idem_key = $2 AND created_at <= $3")
            .bind(&b.tenant_id)
            .bind(&rec.key)
            .bind(rec.created_at - IDEMPOTENCY_TTL_S)
            .execute(&mut *tx)
            .await?;
        let claimed = sqlx::query(
            "INSERT INTO idempotency_keys (tenant_id, idem_key, request_hash, booking_id, status_code, response, \
             created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant_id, idem_key) DO NOTHING",
        )
        .bind(&b.tenant_id)
        .bind(&rec.key)
        .bind(&rec.request_hash)
        .bind(&rec.booking_id)
        .bind(rec.status_code)
        .bind(&rec.response)
        .bind(rec.created_at)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !claimed {
            tx.rollback().await?;
            return match self.idempotency_record(&b.tenant_id, &rec.key, rec.created_at).await? {
                Some(r) => Ok(IdempotentCreate::Existing(r)),
                None => Err(StoreError::IdempotencyKeyInUse),
            };
        }
        insert_booking(&mut tx, b, parts).await?;
        let queued =
            enqueue_event(&mut tx, &b.tenant_id, "booking.created", &booking_data(b, b.created_at), b.created_at)
                .await?;
        let mailed = self.enqueue_created_emails(&mut tx, b).await?;
        tx.commit().await?;
        if queued > 0 {
            self.wake_webhooks();
        }
        if mailed > 0 {
            self.wake_email();
        }
        Ok(IdempotentCreate::Created)
    }

    /// The live (younger than [`IDEMPOTENCY_TTL_S`] at `now`) record of `key` for `tenant`.
    pub async fn idempotency_record(
        &self,
        tenant: &str,
        key: &str,
        now: i64,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT idem_key, request_hash, booking_id, status_code, response, created_at FROM idempotency_keys \
             WHERE tenant_id = $1 AND idem_key = $2 AND created_at > $3",
        )
        .bind(tenant)
        .bind(key)
        .bind(now - IDEMPOTENCY_TTL_S)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(IdempotencyRecord {
                key: r.try_get("idem_key")?,
                request_hash: r.try_get("request_hash")?,
                booking_id: r.try_get("booking_id")?,
                status_code: r.try_get("status_code")?,
                response: r.try_get("response")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .transpose()
    }

    /// Deletes the `Idempotency-Key` records older than [`IDEMPOTENCY_TTL_S`] at `now` (every tenant); returns how
    /// many. Called lazily by creates that carry a key.
    pub async fn purge_idempotency_keys(&self, now: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM idempotency_keys WHERE created_at <= $1")
            .bind(now - IDEMPOTENCY_TTL_S)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    /// Moves booking `id` of `tenant` to status `to` if its status is one of `from`, bumping `sequence` (tokens
    /// issued before die) and `updated_at` (and `cancelled_at` for [`Status::Cancelled`]) in the same statement, and
    /// writes the webhook event of the change (`booking.confirmed`, `booking.rejected`, `booking.cancelled`) in the
    /// same transaction. Returns the booking after the call and the outcome; `None` when the tenant has no such
    /// booking.
    pub async fn transition(
        &self,
        tenant: &str,
        id: &str,
        to: Status,
        from: &[Status],
        now: i64,
    ) -> Result<Option<(Booking, Transition)>, StoreError> {
        let allowed: Vec<String> = (0..from.len()).map(|i| format!("${}", i + 5)).collect();
        if allowed.is_empty() {
            return Ok(self.booking(Some(tenant), id).await?.map(|b| {
                let t = if b.status == to { Transition::Unchanged } else { Transition::Refused };
                (b, t)
            }));
        }
        let sql = format!(
            "UPDATE bookings SET status = $1, sequence = sequence + 1, updated_at = $2, \
             cancelled_at = CASE WHEN $1 = 'cancelled' THEN $2 ELSE cancelled_at END \
             WHERE id = $3 AND tenant_id = $4 AND status IN ({})",
            allowed.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(to.as_str()).bind(now).bind(id).bind(tenant);
        for s in from {
            q = q.bind(s.as_str());
        }
        let mut tx = self.pool.begin().await?;
        let changed = q.execute(&mut *tx).await.map_err(db_error)?.rows_affected() == 1;
        let (mut queued, mut mailed) = (0, 0);
        if changed && let Some(b) = booking_in(&mut tx, id).await? {
            queued = enqueue_event(&mut tx, tenant, &format!("booking.{}", to.as_str()), &booking_data(&b, now), now)
                .await?;
            let kind = if to.is_revoked() { EmailKind::Cancellation } else { EmailKind::Confirmation };
            mailed = self.enqueue_emails(&mut tx, &b, kind, now).await?;
        }
        tx.commit().await?;
        if queued > 0 {
            self.wake_webhooks();
        }
        if mailed > 0 {
            self.wake_email();
        }
        Ok(self.booking(Some(tenant), id).await?.map(|b| {
            let t = if changed {
                Transition::Changed
            } else if b.status == to {
                Transition::Unchanged
            } else {
                Transition::Refused
            };
            (b, t)
        }))
    }

    /// Writes the changed booking `b` (same id and tenant; title, times, window, metadata, join policy,
    /// `max_hard_end_at`, `rescheduled_at`, `extended_s`, `sequence` and `updated_at` as the caller computed them)
    /// if and only if the stored booking still has `expected_sequence` and is `pending` or `confirmed`: the
    /// optimistic concurrency of `PATCH` with `If-Match` (RFC 9110 §13.1.1). The database checks the host's
    /// overlaps on the new times (SQLite trigger, PostgreSQL exclusion constraint).
    ///
    /// With `event` (a change of the times or window) the `booking.rescheduled` webhook event is written in the
    /// same transaction: the booking as now, plus `reason` (`rescheduled` or `extended`) and `previous`
    /// `{start_at, end_at}` (README, "Reschedule and extend").
    ///
    /// Returns `true` when written, `false` when the row changed since (or is gone): the caller reads it again to
    /// tell 404, 412 and 409 apart. Errors: [`StoreError::SlotUnavailable`] (nothing written), [`StoreError::Db`].
    pub async fn update_booking(
        &self,
        b: &Booking,
        expected_sequence: i64,
        event: Option<&RescheduleEvent>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query(
            "UPDATE bookings SET title = $1, start_at = $2, end_at = $3, host_opens_at = $4, opens_at = $5, \
             join_cutoff_at = $6, hard_end_at = $7, metadata = $8, early_join_s = $9, host_early_join_s = $10, \
             overrun_grace_s = $11, max_hard_end_at = $12, rescheduled_at = $13, extended_s = $14, sequence = $15, \
             updated_at = $16 \
             WHERE tenant_id = $17 AND id = $18 AND sequence = $19 AND status IN ('pending', 'confirmed')",
        )
        .bind(&b.title)
        .bind(b.start_at)
        .bind(b.end_at)
        .bind(b.window.host_opens_at)
        .bind(b.window.opens_at)
        .bind(b.window.join_cutoff_at)
        .bind(b.window.hard_end_at)
        .bind(&b.metadata)
        .bind(b.join_policy.early_join_s)
        .bind(b.join_policy.host_early_join_s)
        .bind(b.join_policy.overrun_grace_s)
        .bind(b.max_hard_end_at.max(b.window.hard_end_at))
        .bind(b.rescheduled_at)
        .bind(b.extended_s)
        .bind(b.sequence)
        .bind(b.updated_at)
        .bind(&b.tenant_id)
        .bind(&b.id)
        .bind(expected_sequence)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?
        .rows_affected();
        let (mut queued, mut mailed) = (0, 0);
        if n == 1
            && let Some(e) = event
            && let Some(stored) = booking_in(&mut tx, &b.id).await?
        {
            let mut data = booking_data(&stored, b.updated_at);
            if let Some(obj) = data.as_object_mut() {
                obj.insert("reason".into(), e.reason.into());
                let previous = serde_json::json!({
                    "start_at": super::api::rfc3339(e.previous_start_at),
                    "end_at": super::api::rfc3339(e.previous_end_at),
                });
                obj.insert("previous".into(), previous);
            }
            queued = enqueue_event(&mut tx, &b.tenant_id, "booking.rescheduled", &data, b.updated_at).await?;
            let times_moved = (e.previous_start_at, e.previous_end_at) != (stored.start_at, stored.end_at);
            mailed = if !e.from_call && times_moved {
                self.enqueue_emails(&mut tx, &stored, EmailKind::Reschedule, b.updated_at).await?
            } else {
                // An extension from the call, or a join-policy change: the reminders stay where they are.
                0
            };
        }
        tx.commit().await?;
        if queued > 0 {
            self.wake_webhooks();
        }
        if mailed > 0 {
            self.wake_email();
        }
        Ok(n == 1)
    }

    /// Every participant whose link was rotated or revoked (`link_epoch > 0`) in a booking whose `max_hard_end_at` is
    /// after `now`, as `(booking, participant, link_epoch, max_hard_end_at)`: on start the daemon tells the relay to
    /// keep refusing the TURN credentials of their older links.
    pub async fn live_link_epochs(&self, now: i64) -> Result<Vec<(String, String, i64, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT p.booking_id, p.id, p.link_epoch, b.max_hard_end_at FROM participants p \
             JOIN bookings b ON b.id = p.booking_id WHERE p.link_epoch > 0 AND b.max_hard_end_at > $1",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect())
    }

    /// Every `pending` or `confirmed` booking rescheduled at least once whose `max_hard_end_at` is after `now`, as
    /// `(id, hard_end_at, max_hard_end_at, host_opens_at)`: on start the daemon gives the relay their hard ends
    /// (credentials issued before a reschedule carry the old one) so a restart does not forget a reschedule.
    pub async fn live_reschedules(&self, now: i64) -> Result<Vec<(String, i64, i64, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, hard_end_at, max_hard_end_at, host_opens_at FROM bookings \
             WHERE rescheduled_at IS NOT NULL AND max_hard_end_at > $1 AND status IN ('pending', 'confirmed')",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect())
    }

    /// The id of a `pending` or `confirmed` booking of `tenant` other than `except` whose host has `ref` `host_ref`
    /// and whose blocked interval intersects `[blocked_start, blocked_end)` (Unix seconds), the earliest first;
    /// `None` when the slot is free. Informational (names the conflict of a refused write, or checks an extension
    /// before trying it): the database enforces the rule itself, see [`StoreError::SlotUnavailable`].
    pub async fn host_conflict(
        &self,
        tenant: &str,
        host_ref: &str,
        blocked_start: i64,
        blocked_end: i64,
        except: &str,
    ) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(HOST_CONFLICT)
            .bind(tenant)
            .bind(host_ref)
            .bind(blocked_start)
            .bind(blocked_end)
            .bind(except)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// The bookings of `tenant` that pass `f`, ordered by `start_at` then `id`, at most `f.limit`, with their
    /// participants (two queries).
    pub async fn list(&self, tenant: &str, f: &ListFilter) -> Result<Vec<Booking>, StoreError> {
        enum Arg<'a> {
            I(i64),
            S(&'a str),
        }
        let mut args: Vec<Arg<'_>> = vec![Arg::S(tenant)];
        let mut sql = String::from("SELECT * FROM bookings WHERE tenant_id = $1");
        let push = |args: &mut Vec<Arg<'_>>| format!("${}", args.len());
        if let Some(from) = f.from {
            args.push(Arg::I(from));
            sql += &format!(" AND start_at >= {}", push(&mut args));
        }
        if let Some(to) = f.to {
            args.push(Arg::I(to));
            sql += &format!(" AND start_at < {}", push(&mut args));
        }
        if let Some(st) = f.status {
            let (stored, ended) = match st {
                StatusFilter::Pending => ("pending", None),
                StatusFilter::Confirmed => ("confirmed", Some(false)),
                StatusFilter::Rejected => ("rejected", None),
                StatusFilter::Cancelled => ("cancelled", None),
                StatusFilter::Ended => ("confirmed", Some(true)),
            };
            args.push(Arg::S(stored));
            sql += &format!(" AND status = {}", push(&mut args));
            if let Some(ended) = ended {
                args.push(Arg::I(f.now));
                let op = if ended { "<=" } else { ">" };
                sql += &format!(" AND hard_end_at {op} {}", push(&mut args));
            }
        }
        if let Some(r) = &f.participant_ref {
            args.push(Arg::S(r));
            sql += &format!(
                " AND EXISTS (SELECT 1 FROM participants p WHERE p.booking_id = bookings.id AND p.ref = {})",
                push(&mut args)
            );
        }
        if let Some(x) = &f.external_id {
            args.push(Arg::S(x));
            sql += &format!(" AND external_id = {}", push(&mut args));
        }
        if let Some((start, id)) = &f.after {
            args.push(Arg::I(*start));
            let s = push(&mut args);
            args.push(Arg::S(id));
            let i = push(&mut args);
            sql += &format!(" AND (start_at > {s} OR (start_at = {s} AND id > {i}))");
        }
        args.push(Arg::I(i64::from(f.limit)));
        sql += &format!(" ORDER BY start_at, id LIMIT {}", push(&mut args));
        let mut q = sqlx::query(&sql);
        for a in &args {
            q = match a {
                Arg::I(v) => q.bind(*v),
                Arg::S(v) => q.bind(*v),
            };
        }
        let rows = q.fetch_all(&self.pool).await?;
        let mut out = rows.iter().map(booking_from_row).collect::<Result<Vec<_>, _>>()?;
        if out.is_empty() {
            return Ok(out);
        }
        let marks: Vec<String> = (1..=out.len()).map(|i| format!("${i}")).collect();
        let psql = format!(
            "SELECT booking_id, {PARTICIPANT_COLUMNS} FROM participants \
             WHERE booking_id IN ({}) ORDER BY CASE role WHEN 'host' THEN 0 ELSE 1 END",
            marks.join(", ")
        );
        let mut pq = sqlx::query(&psql);
        for b in &out {
            pq = pq.bind(b.id.as_str());
        }
        for r in pq.fetch_all(&self.pool).await? {
            let bid: String = r.try_get("booking_id")?;
            if let Some(b) = out.iter_mut().find(|b| b.id == bid) {
                b.participants.push(participant_from_row(&r)?);
            }
        }
        Ok(out)
    }

    /// A booking by id, scoped to a tenant (`None` for another tenant's: no existence oracle).
    pub async fn booking(&self, tenant: Option<&str>, id: &str) -> Result<Option<Booking>, StoreError> {
        let row = sqlx::query("SELECT * FROM bookings WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        let Some(row) = row else { return Ok(None) };
        let mut b = booking_from_row(&row)?;
        if tenant.is_some_and(|t| t != b.tenant_id) {
            return Ok(None);
        }
        b.participants = self.participants(&b.id).await?;
        Ok(Some(b))
    }

    async fn participants(&self, booking: &str) -> Result<Vec<Participant>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {PARTICIPANT_COLUMNS} FROM participants WHERE booking_id = $1 \
             ORDER BY CASE role WHEN 'host' THEN 0 ELSE 1 END"
        ))
        .bind(booking)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(participant_from_row).collect()
    }

    /// Cancels a pending or confirmed booking. Returns the booking after the call and whether this call changed it (a
    /// second cancel, or a cancel of a rejected booking, changes nothing).
    pub async fn cancel(&self, tenant: &str, id: &str, now: i64) -> Result<Option<(Booking, bool)>, StoreError> {
        let r = self.transition(tenant, id, Status::Cancelled, &[Status::Pending, Status::Confirmed], now).await?;
        Ok(r.map(|(b, t)| (b, t == Transition::Changed)))
    }

    /// The booking and participant a link token belongs to.
    pub async fn by_link(&self, link_hash: &[u8]) -> Result<Option<(Booking, Participant)>, StoreError> {
        let row = sqlx::query("SELECT booking_id, id FROM participants WHERE link_token_hash = $1")
            .bind(link_hash)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let (booking_id, pid): (String, String) = (row.get(0), row.get(1));
        let Some(b) = self.booking(None, &booking_id).await? else {
            return Ok(None);
        };
        let Some(p) = b.participants.iter().find(|p| p.id == pid).cloned() else {
            return Ok(None);
        };
        Ok(Some((b, p)))
    }

    /// The Virtual Y `meetingId` lookup: the live (not cancelled, not past its hard end at `now`, Unix seconds) booking
    /// of `tenant` whose `external_id` is `external_id`, with its participants. One indexed search on the unique
    /// `(tenant_id, external_id)` index plus one query for the participants of a hit; an unknown id costs one index
    /// probe (the test below checks the plan).
    pub async fn live_by_external_id(
        &self,
        tenant: &str,
        external_id: &str,
        now: i64,
    ) -> Result<Option<Booking>, StoreError> {
        let row = sqlx::query(VY_LOOKUP).bind(tenant).bind(external_id).bind(now).fetch_optional(&self.pool).await?;
        let Some(row) = row else { return Ok(None) };
        let mut b = booking_from_row(&row)?;
        b.participants = self.participants(&b.id).await?;
        Ok(Some(b))
    }

    /// Rotates or revokes the link of participant `pid` of booking `booking` of `tenant` at `now` (Unix seconds), in
    /// one statement: `new_hash` (the first of the pair; SHA-256 of the new link token; for [`LinkChange::Revoke`] the hash of a random token
    /// nobody holds) replaces the stored hash, so the old link answers 404 at once; `link_epoch` goes up, so session
    /// tokens issued before stop verifying; `link_revoked_at` is set (revoke) or cleared (rotate); `link_token_enc`
    /// becomes `sealed` (the second of the pair: the new token sealed, rotate) or is cleared (revoke). Returns the booking
    /// and the participant after the change; `None` when the tenant has no such booking or the booking no such
    /// participant (another tenant's booking is `None` too).
    pub async fn set_link(
        &self,
        tenant: &str,
        booking: &str,
        pid: &str,
        (new_hash, sealed): (&[u8], Option<&str>),
        change: LinkChange,
        now: i64,
    ) -> Result<Option<(Booking, Participant)>, StoreError> {
        let revoked_at = match change {
            LinkChange::Rotate => None,
            LinkChange::Revoke => Some(now),
        };
        let changed = sqlx::query(
            "UPDATE participants SET link_token_hash = $1, link_epoch = link_epoch + 1, link_revoked_at = $2, \
             link_token_enc = $6 WHERE id = $3 AND booking_id = $4 \
             AND EXISTS (SELECT 1 FROM bookings b WHERE b.id = $4 AND b.tenant_id = $5)",
        )
        .bind(new_hash)
        .bind(revoked_at)
        .bind(pid)
        .bind(booking)
        .bind(tenant)
        .bind(if change == LinkChange::Revoke { None } else { sealed })
        .execute(&self.pool)
        .await?
        .rows_affected();
        if changed != 1 {
            return Ok(None);
        }
        let Some(b) = self.booking(Some(tenant), booking).await? else { return Ok(None) };
        let p = b.participants.iter().find(|p| p.id == pid).cloned();
        Ok(p.map(|p| (b, p)))
    }

    /// Records the first admission of a participant (kept if already set).
    pub async fn mark_joined(&self, participant: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE participants SET first_joined_at = COALESCE(first_joined_at, $1) WHERE id = $2")
            .bind(now)
            .bind(participant)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Cancelled or rejected bookings whose latest hard end has not passed, as `(id, max_hard_end_at)`: fed to the
    /// relay's revocation set at start so a restart does not forget a revocation (credentials issued before a
    /// shortening carry the longer hard end).
    pub async fn live_revocations(&self, now: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, max_hard_end_at FROM bookings WHERE status IN ('cancelled', 'rejected') AND max_hard_end_at > $1",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

/// Booking `id` with its participants, read inside transaction `tx` (so it sees the transaction's own changes).
pub async fn booking_in(tx: &mut sqlx::Transaction<'_, sqlx::Any>, id: &str) -> Result<Option<Booking>, StoreError> {
    let row = sqlx::query("SELECT * FROM bookings WHERE id = $1").bind(id).fetch_optional(&mut **tx).await?;
    let Some(row) = row else { return Ok(None) };
    let mut b = booking_from_row(&row)?;
    let rows = sqlx::query(&format!(
        "SELECT {PARTICIPANT_COLUMNS} FROM participants WHERE booking_id = $1 \
         ORDER BY CASE role WHEN 'host' THEN 0 ELSE 1 END"
    ))
    .bind(id)
    .fetch_all(&mut **tx)
    .await?;
    b.participants = rows.iter().map(participant_from_row).collect::<Result<_, _>>()?;
    Ok(Some(b))
}

/// The query of [`Store::live_by_external_id`] (only confirmed hosted bookings: pending ones are not open yet,
/// rejected and cancelled ones are closed, external-link ones have no room).
const VY_LOOKUP: &str = "SELECT * FROM bookings WHERE tenant_id = $1 AND external_id = $2 \
                         AND status = 'confirmed' AND kind = 'hosted' AND hard_end_at > $3";

/// The query of [`Store::host_conflict`]: a probe of the partial index `bookings_host_blocked`.
const HOST_CONFLICT: &str = "SELECT id FROM bookings WHERE tenant_id = $1 AND host_ref = $2 \
                             AND host_ref IS NOT NULL AND status IN ('pending', 'confirmed') \
                             AND blocked_end > $3 AND blocked_start < $4 AND id <> $5 \
                             ORDER BY blocked_start, id LIMIT 1";

/// The inserts of [`Store::create_booking`] inside transaction `tx`. The booking's `host_ref` is the host
/// participant's `ref` (none: the booking is not checked for overlaps).
async fn insert_booking(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    b: &Booking,
    parts: &[NewParticipant],
) -> Result<(), StoreError> {
    let host_ref = parts.iter().find(|p| p.role == Role::Host).and_then(|p| p.reference.as_deref());
    let r = sqlx::query(
        "INSERT INTO bookings (id, tenant_id, title, external_id, start_at, end_at, host_opens_at, opens_at, \
         join_cutoff_at, hard_end_at, status, sequence, created_at, updated_at, host_ref, buffer_before_s, \
         buffer_after_s, kind, external_url, metadata, early_join_s, host_early_join_s, overrun_grace_s, \
         max_hard_end_at, rescheduled_at, extended_s, event_type_id, note) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, \
         $23, $24, $25, $26, $27, $28)",
    )
    .bind(&b.id)
    .bind(&b.tenant_id)
    .bind(&b.title)
    .bind(&b.external_id)
    .bind(b.start_at)
    .bind(b.end_at)
    .bind(b.window.host_opens_at)
    .bind(b.window.opens_at)
    .bind(b.window.join_cutoff_at)
    .bind(b.window.hard_end_at)
    .bind(b.status.as_str())
    .bind(b.sequence)
    .bind(b.created_at)
    .bind(b.updated_at)
    .bind(host_ref)
    .bind(b.buffer_before_s)
    .bind(b.buffer_after_s)
    .bind(b.kind.as_str())
    .bind(&b.external_url)
    .bind(&b.metadata)
    .bind(b.join_policy.early_join_s)
    .bind(b.join_policy.host_early_join_s)
    .bind(b.join_policy.overrun_grace_s)
    .bind(b.max_hard_end_at.max(b.window.hard_end_at))
    .bind(b.rescheduled_at)
    .bind(b.extended_s)
    .bind(&b.event_type_id)
    .bind(&b.note)
    .execute(&mut **tx)
    .await;
    if let Err(e) = &r {
        if is_host_overlap(e) {
            return Err(StoreError::SlotUnavailable);
        }
        if let sqlx::Error::Database(d) = e
            && d.is_unique_violation()
        {
            return Err(StoreError::DuplicateExternalId);
        }
    }
    r?;
    for p in parts {
        sqlx::query(
            "INSERT INTO participants (id, booking_id, role, ref, display_name, link_token_hash, email, time_zone, \
             locale, link_token_enc) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&p.id)
        .bind(&b.id)
        .bind(p.role.as_str())
        .bind(&p.reference)
        .bind(&p.display_name)
        .bind(&p.link_token_hash)
        .bind(&p.email)
        .bind(&p.time_zone)
        .bind(&p.locale)
        .bind(&p.link_token_enc)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// The columns [`participant_from_row`] reads.
const PARTICIPANT_COLUMNS: &str = "id, role, ref, display_name, first_joined_at, email, time_zone, locale, link_epoch, link_revoked_at, \
     link_token_enc";

/// The columns [`api_key_from_row`] reads.
const API_KEY_COLUMNS: &str = "id, tenant_id, name, scopes, key_hash, created_at, expires_at, revoked_at";

fn api_key_from_row(r: &AnyRow) -> Result<ApiKey, StoreError> {
    let scopes: String = r.try_get("scopes")?;
    Ok(ApiKey {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        name: r.try_get("name")?,
        // Unknown words (none are written) grant nothing.
        scopes: scopes.split_whitespace().filter_map(|w| w.parse().ok()).collect(),
        key_hash: r.try_get("key_hash")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}

fn tenant_from_row(r: &AnyRow) -> Result<Tenant, StoreError> {
    Ok(Tenant { id: r.try_get("id")?, name: r.try_get("name")?, created_at: r.try_get("created_at")? })
}

fn booking_from_row(r: &AnyRow) -> Result<Booking, StoreError> {
    let status: String = r.try_get("status")?;
    Ok(Booking {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        title: r.try_get("title")?,
        external_id: r.try_get("external_id")?,
        start_at: r.try_get("start_at")?,
        end_at: r.try_get("end_at")?,
        window: JoinWindow {
            host_opens_at: r.try_get("host_opens_at")?,
            opens_at: r.try_get("opens_at")?,
            join_cutoff_at: r.try_get("join_cutoff_at")?,
            hard_end_at: r.try_get("hard_end_at")?,
        },
        // The CHECK constraint allows only the four stored statuses.
        status: Status::parse(&status).unwrap_or(Status::Cancelled),
        sequence: r.try_get("sequence")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        buffer_before_s: r.try_get("buffer_before_s")?,
        buffer_after_s: r.try_get("buffer_after_s")?,
        participants: Vec::new(),
        kind: if r.try_get::<String, _>("kind")? == "external_link" { Kind::ExternalLink } else { Kind::Hosted },
        external_url: r.try_get("external_url")?,
        metadata: r.try_get("metadata")?,
        join_policy: JoinPolicy {
            early_join_s: r.try_get("early_join_s")?,
            host_early_join_s: r.try_get("host_early_join_s")?,
            overrun_grace_s: r.try_get("overrun_grace_s")?,
        },
        max_hard_end_at: r.try_get("max_hard_end_at")?,
        rescheduled_at: r.try_get("rescheduled_at")?,
        extended_s: r.try_get("extended_s")?,
        event_type_id: r.try_get("event_type_id")?,
        note: r.try_get("note")?,
    })
}

fn participant_from_row(r: &AnyRow) -> Result<Participant, StoreError> {
    let role: String = r.try_get("role")?;
    Ok(Participant {
        id: r.try_get("id")?,
        // The CHECK constraint allows only 'host' and 'guest'.
        role: Role::parse(&role).unwrap_or(Role::Guest),
        reference: r.try_get("ref")?,
        display_name: r.try_get("display_name")?,
        first_joined_at: r.try_get("first_joined_at")?,
        email: r.try_get("email")?,
        time_zone: r.try_get("time_zone")?,
        locale: r.try_get("locale")?,
        link_epoch: r.try_get("link_epoch")?,
        link_revoked_at: r.try_get("link_revoked_at")?,
        link_token_enc: r.try_get("link_token_enc")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The unauthenticated Virtual Y lookup is an index search, never a scan of the bookings table.
    #[tokio::test]
    async fn vy_lookup_searches_the_tenant_external_id_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("t.db")).await.expect("open");
        let plan: Vec<String> = sqlx::query(&format!("EXPLAIN QUERY PLAN {VY_LOOKUP}"))
            .bind("ten_default")
            .bind("order-1001")
            .bind(0_i64)
            .fetch_all(&store.pool)
            .await
            .expect("plan")
            .iter()
            .map(|r| r.get::<String, _>("detail"))
            .collect();
        assert!(
            plan.iter().any(|d| d.starts_with("SEARCH bookings USING INDEX bookings_tenant_external_id")),
            "{plan:?}"
        );
        assert!(!plan.iter().any(|d| d.starts_with("SCAN")), "{plan:?}");
        assert!(store.live_by_external_id("ten_default", "order-1001", 0).await.expect("lookup").is_none());
    }

    /// The overlap probe searches the host's partial index, never scans the bookings table.
    #[tokio::test]
    async fn host_conflict_searches_the_host_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("t.db")).await.expect("open");
        let plan: Vec<String> = sqlx::query(&format!("EXPLAIN QUERY PLAN {HOST_CONFLICT}"))
            .bind("ten_default")
            .bind("coach:1")
            .bind(0_i64)
            .bind(10_i64)
            .bind("bkg_x")
            .fetch_all(&store.pool)
            .await
            .expect("plan")
            .iter()
            .map(|r| r.get::<String, _>("detail"))
            .collect();
        assert!(plan.iter().any(|d| d.starts_with("SEARCH bookings USING INDEX bookings_host_blocked")), "{plan:?}");
        assert!(!plan.iter().any(|d| d.starts_with("SCAN bookings")), "{plan:?}");
        assert_eq!(store.host_conflict("ten_default", "coach:1", 0, 10, "bkg_x").await.expect("probe"), None);
    }

    /// SHA-384 of `migrations/0001_init.sql` as the SQLite-only versions embedded it: the checksum sqlx recorded in
    /// every existing `duet.sqlite3` (`_sqlx_migrations`, version 1, "init").
    const RELEASED_INIT_SHA384: &str =
        "a07212bc420f72f343a29a7be4c73d90729ad0195fc02b21f46a85772e74982f98ac976239812b67d8506f404b814f20";

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// A database created by the SQLite-only binary (its migrator, `migrations/0001_init.sql`, applied by plain
    /// sqlx SQLite) opens with the moved migrations: same version, description and checksum, data kept.
    #[tokio::test]
    async fn databases_of_the_sqlite_only_version_keep_migrating() {
        let init = SQLITE_MIGRATIONS.iter().find(|m| m.version == 1).expect("migration 1");
        assert_eq!((init.description.as_ref(), hex(&init.checksum)), ("init", RELEASED_INIT_SHA384.to_string()));

        let dir = tempfile::tempdir().expect("tempdir");
        let old_dir = dir.path().join("migrations");
        std::fs::create_dir(&old_dir).unwrap();
        std::fs::write(old_dir.join("0001_init.sql"), init.sql.as_bytes()).unwrap();
        let old = Migrator::new(old_dir.as_path()).await.expect("the old migrator");
        let db = dir.path().join("duet.sqlite3");
        let pool = sqlx::SqlitePool::connect_with(SqliteConnectOptions::new().filename(&db).create_if_missing(true))
            .await
            .unwrap();
        old.run(&pool).await.expect("old migrations");
        sqlx::query("INSERT INTO api_keys (id, tenant_id, key_hash, created_at) VALUES ('key_admin', 't', x'01', 5)")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;

        let store = Store::open(&db).await.expect("the new binary opens the old database");
        let admin = store.api_key("key_admin").await.unwrap().expect("key_admin");
        assert_eq!(
            (admin.created_at, admin.scopes.as_slice()),
            (5, Scope::ALL.as_slice()),
            "0002 gives it every scope"
        );
        let tenants: Vec<String> = store.tenants().await.unwrap().into_iter().map(|t| t.id).collect();
        assert_eq!(tenants, ["ten_default", "t"], "0002 makes the default tenant and one per existing key");
        let recorded: Vec<u8> = sqlx::query("SELECT checksum FROM _sqlx_migrations WHERE version = 1")
            .fetch_one(&store.pool)
            .await
            .unwrap()
            .get(0);
        assert_eq!(hex(&recorded), RELEASED_INIT_SHA384);
    }

    /// Migration 3 rebuilds the SQLite `bookings` table (new status CHECK): rows, participants, their foreign key
    /// (with its cascade) and the indexes survive; the new statuses are accepted, others refused.
    #[tokio::test]
    async fn sqlite_migration_3_keeps_bookings_and_participants() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old_dir = dir.path().join("migrations");
        std::fs::create_dir(&old_dir).unwrap();
        for m in SQLITE_MIGRATIONS.iter().filter(|m| m.version < 3) {
            std::fs::write(old_dir.join(format!("{:04}_{}.sql", m.version, m.description)), m.sql.as_bytes()).unwrap();
        }
        let db = dir.path().join("duet.sqlite3");
        let pool = sqlx::SqlitePool::connect_with(
            SqliteConnectOptions::new().filename(&db).create_if_missing(true).foreign_keys(true),
        )
        .await
        .unwrap();
        Migrator::new(old_dir.as_path()).await.unwrap().run(&pool).await.expect("migrations before 3");
        for sql in [
            "INSERT INTO bookings VALUES ('bkg_1', 'ten_a', 't', 'ext-1', 100, 200, 85, 90, 200, 215, 'cancelled', 1, \
             50, 60, 60)",
            "INSERT INTO participants VALUES ('par_h', 'bkg_1', 'host', 'instructor:42', 'Dr. Ana', x'01', 95)",
            "INSERT INTO participants VALUES ('par_g', 'bkg_1', 'guest', NULL, 'J. Doe', x'02', NULL)",
        ] {
            sqlx::query(sql).execute(&pool).await.unwrap();
        }
        pool.close().await;

        let store = Store::open(&db).await.expect("migrate to 3");
        let b = store.booking(Some("ten_a"), "bkg_1").await.unwrap().expect("booking kept");
        assert_eq!((b.status, b.sequence, b.external_id.as_deref()), (Status::Cancelled, 1, Some("ext-1")));
        assert_eq!(b.participants.len(), 2);
        assert_eq!(b.participants[0].first_joined_at, Some(95));
        assert!(store.by_link(&[2]).await.unwrap().is_some(), "link hashes kept");
        let fk: i64 =
            sqlx::query("SELECT count(*) FROM pragma_foreign_key_check").fetch_one(&store.pool).await.unwrap().get(0);
        assert_eq!(fk, 0);
        let indexes: Vec<String> =
            sqlx::query("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
                .fetch_all(&store.pool)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
        for name in ["bookings_tenant_external_id", "bookings_hard_end", "bookings_tenant_start"] {
            assert!(indexes.iter().any(|i| i == name), "{name} in {indexes:?}");
        }
        // The foreign key points at the new table and still cascades.
        let r = sqlx::query("INSERT INTO participants VALUES ('par_x', 'bkg_nope', 'host', NULL, 'X', x'03', NULL)")
            .execute(&store.pool)
            .await;
        assert!(r.is_err(), "foreign key enforced");
        sqlx::query("UPDATE bookings SET status = 'pending' WHERE id = 'bkg_1'").execute(&store.pool).await.unwrap();
        sqlx::query("UPDATE bookings SET status = 'rejected' WHERE id = 'bkg_1'").execute(&store.pool).await.unwrap();
        assert!(
            sqlx::query("UPDATE bookings SET status = 'ended' WHERE id = 'bkg_1'").execute(&store.pool).await.is_err()
        );
        sqlx::query("DELETE FROM bookings WHERE id = 'bkg_1'").execute(&store.pool).await.unwrap();
        let left: i64 = sqlx::query("SELECT count(*) FROM participants").fetch_one(&store.pool).await.unwrap().get(0);
        assert_eq!(left, 0, "ON DELETE CASCADE kept");
    }

    /// Every SQLite connection runs with WAL, `synchronous = NORMAL`, foreign keys on and a 5 s busy timeout.
    #[tokio::test]
    async fn sqlite_connections_get_their_pragmas() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_sqlite(&dir.path().join("t.db"), 2).await.expect("open");
        let mut conns = Vec::new();
        for _ in 0..2 {
            conns.push(store.pool.acquire().await.unwrap());
        }
        for c in &mut conns {
            let mode: String = sqlx::query("PRAGMA journal_mode").fetch_one(&mut **c).await.unwrap().get(0);
            let sync: i64 = sqlx::query("PRAGMA synchronous").fetch_one(&mut **c).await.unwrap().get(0);
            let fk: i64 = sqlx::query("PRAGMA foreign_keys").fetch_one(&mut **c).await.unwrap().get(0);
            let busy: i64 = sqlx::query("PRAGMA busy_timeout").fetch_one(&mut **c).await.unwrap().get(0);
            assert_eq!((mode.as_str(), sync, fk, busy), ("wal", 1, 1, 5000));
        }
    }
}
