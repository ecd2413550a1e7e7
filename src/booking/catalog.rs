//! Storage of hosts, availability schedules and event types (migration 0007), on the same sqlx `Any` pool and SQL
//! text for SQLite and PostgreSQL as the bookings ([`Store`]). Every query is scoped to a tenant: another tenant's
//! objects are `None`, never an error that tells they exist.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::store::{Kind, Store, StoreError};

/// A host: the person bookings are made with. Its `reference` is the string bookings carry as the host
/// participant's `ref` (the key of the no-double-booking rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// `hst_…`.
    pub id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// The app's id of the host, 1-128 characters, unique per tenant.
    pub reference: String,
    /// Shown to guests.
    pub display_name: String,
    /// Contact email.
    pub email: Option<String>,
    /// IANA time zone name of the host (the default of its schedules).
    pub time_zone: String,
    /// Creation, Unix seconds.
    pub created_at: i64,
    /// Last change (a secret rotation too), Unix seconds.
    pub updated_at: i64,
}

/// An availability schedule of a host. `weekly` and `overrides` are the validated JSON arrays of the API
/// (`catalog_api::ScheduleInput`), stored as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// `sch_…`.
    pub id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// The host (`hst_…`).
    pub host_id: String,
    /// The operator's name for it, e.g. "Working hours".
    pub name: String,
    /// IANA time zone of its local times and dates.
    pub time_zone: String,
    /// JSON array of weekly rules `[{day, intervals: [{start, end}]}]`.
    pub weekly: String,
    /// JSON array of date overrides `[{date, intervals: [{start, end}]}]`.
    pub overrides: String,
    /// Creation, Unix seconds.
    pub created_at: i64,
    /// Last change, Unix seconds.
    pub updated_at: i64,
}

/// An event type: what a guest books with a host (cal.com's `EventType`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventType {
    /// `evt_…`.
    pub id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// The host (`hst_…`).
    pub host_id: String,
    /// The schedule its slots come from (`sch_…`, a schedule of the same host).
    pub schedule_id: String,
    /// Unique per host, `[a-z0-9]+(-[a-z0-9]+)*`, at most 64 characters.
    pub slug: String,
    /// Title of the bookings made from it.
    pub title: String,
    /// Length of a booking, minutes.
    pub duration_minutes: i64,
    /// The host is kept free this long before a booking, minutes.
    pub buffer_before_minutes: i64,
    /// The host is kept free this long after a booking, minutes.
    pub buffer_after_minutes: i64,
    /// Earliest start counted from now, minutes.
    pub minimum_notice_minutes: i64,
    /// Latest start counted from now (the booking horizon), days.
    pub horizon_days: i64,
    /// At most this many pending or confirmed bookings of this event type start on one local date of its schedule.
    pub max_per_day: Option<i64>,
    /// Step between offered starts, minutes; `None`: the duration.
    pub slot_interval_minutes: Option<i64>,
    /// `hosted` or `external_link`.
    pub kind: Kind,
    /// The https URL of an `external_link` event type.
    pub external_url: Option<String>,
    /// Bookings start `pending` and wait for `POST /v1/bookings/{id}/confirm`.
    pub requires_confirmation: bool,
    /// Creation, Unix seconds.
    pub created_at: i64,
    /// Last change, Unix seconds.
    pub updated_at: i64,
}

/// A pending or confirmed booking of a host as the slot computation needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusyBooking {
    /// `[start_at - buffer_before_s, end_at + buffer_after_s)`, Unix seconds.
    pub blocked: (i64, i64),
    /// Start, Unix seconds.
    pub start_at: i64,
    /// The event type it was made from.
    pub event_type_id: Option<String>,
}

const HOST_COLUMNS: &str = "id, tenant_id, ref, display_name, email, time_zone, created_at, updated_at";
const SCHEDULE_COLUMNS: &str = "id, tenant_id, host_id, name, time_zone, weekly, overrides, created_at, updated_at";
const EVENT_TYPE_COLUMNS: &str = "id, tenant_id, host_id, schedule_id, slug, title, duration_minutes, \
     buffer_before_minutes, buffer_after_minutes, minimum_notice_minutes, horizon_days, max_per_day, \
     slot_interval_minutes, kind, external_url, requires_confirmation, created_at, updated_at";

fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

fn host_from_row(r: &AnyRow) -> Result<Host, StoreError> {
    Ok(Host {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        reference: r.try_get("ref")?,
        display_name: r.try_get("display_name")?,
        email: r.try_get("email")?,
        time_zone: r.try_get("time_zone")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn schedule_from_row(r: &AnyRow) -> Result<Schedule, StoreError> {
    Ok(Schedule {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        host_id: r.try_get("host_id")?,
        name: r.try_get("name")?,
        time_zone: r.try_get("time_zone")?,
        weekly: r.try_get("weekly")?,
        overrides: r.try_get("overrides")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn event_type_from_row(r: &AnyRow) -> Result<EventType, StoreError> {
    Ok(EventType {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        host_id: r.try_get("host_id")?,
        schedule_id: r.try_get("schedule_id")?,
        slug: r.try_get("slug")?,
        title: r.try_get("title")?,
        duration_minutes: r.try_get("duration_minutes")?,
        buffer_before_minutes: r.try_get("buffer_before_minutes")?,
        buffer_after_minutes: r.try_get("buffer_after_minutes")?,
        minimum_notice_minutes: r.try_get("minimum_notice_minutes")?,
        horizon_days: r.try_get("horizon_days")?,
        max_per_day: r.try_get("max_per_day")?,
        slot_interval_minutes: r.try_get("slot_interval_minutes")?,
        kind: if r.try_get::<String, _>("kind")? == "external_link" { Kind::ExternalLink } else { Kind::Hosted },
        external_url: r.try_get("external_url")?,
        requires_confirmation: r.try_get::<i64, _>("requires_confirmation")? != 0,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

impl Store {
    /// Inserts host `h` with the SHA-256 of its secret. Errors: [`StoreError::HostRefTaken`], [`StoreError::Db`].
    pub async fn create_host(&self, h: &Host, secret_hash: &[u8]) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO hosts (id, tenant_id, ref, display_name, email, time_zone, secret_hash, created_at, \
             updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&h.id)
        .bind(&h.tenant_id)
        .bind(&h.reference)
        .bind(&h.display_name)
        .bind(&h.email)
        .bind(&h.time_zone)
        .bind(secret_hash)
        .bind(h.created_at)
        .bind(h.updated_at)
        .execute(&self.pool)
        .await
        .map_err(|e| if unique_violation(&e) { StoreError::HostRefTaken } else { StoreError::Db(e) })?;
        Ok(())
    }

    /// The host of `tenant` whose `ref` is `reference`.
    pub async fn host(&self, tenant: &str, reference: &str) -> Result<Option<Host>, StoreError> {
        let row = sqlx::query(&format!("SELECT {HOST_COLUMNS} FROM hosts WHERE tenant_id = $1 AND ref = $2"))
            .bind(tenant)
            .bind(reference)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(host_from_row).transpose()
    }

    /// The host of `tenant` with id `id`.
    pub async fn host_by_id(&self, tenant: &str, id: &str) -> Result<Option<Host>, StoreError> {
        let row = sqlx::query(&format!("SELECT {HOST_COLUMNS} FROM hosts WHERE tenant_id = $1 AND id = $2"))
            .bind(tenant)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(host_from_row).transpose()
    }

    /// The host a host secret belongs to (any tenant: the secret is the capability), by its SHA-256.
    pub async fn host_by_secret(&self, secret_hash: &[u8]) -> Result<Option<Host>, StoreError> {
        let row = sqlx::query(&format!("SELECT {HOST_COLUMNS} FROM hosts WHERE secret_hash = $1"))
            .bind(secret_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(host_from_row).transpose()
    }

    /// The hosts of `tenant`, ordered by `ref`.
    pub async fn hosts(&self, tenant: &str) -> Result<Vec<Host>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {HOST_COLUMNS} FROM hosts WHERE tenant_id = $1 ORDER BY ref"))
            .bind(tenant)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(host_from_row).collect()
    }

    /// Writes the display name, email, time zone and `updated_at` of host `h` (by tenant and id). Returns false when
    /// the tenant has no such host.
    pub async fn update_host(&self, h: &Host) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE hosts SET display_name = $1, email = $2, time_zone = $3, updated_at = $4 \
             WHERE tenant_id = $5 AND id = $6",
        )
        .bind(&h.display_name)
        .bind(&h.email)
        .bind(&h.time_zone)
        .bind(h.updated_at)
        .bind(&h.tenant_id)
        .bind(&h.id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Replaces the secret of host `id` of `tenant` (the old one stops working at once). False: no such host.
    pub async fn set_host_secret(&self, tenant: &str, id: &str, hash: &[u8], now: i64) -> Result<bool, StoreError> {
        let n = sqlx::query("UPDATE hosts SET secret_hash = $1, updated_at = $2 WHERE tenant_id = $3 AND id = $4")
            .bind(hash)
            .bind(now)
            .bind(tenant)
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// Deletes host `id` of `tenant` with its schedules and event types (bookings are kept). False: no such host.
    pub async fn delete_host(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Explicit, not only ON DELETE CASCADE: event types first (they reference the schedules).
        sqlx::query("DELETE FROM event_types WHERE tenant_id = $1 AND host_id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM schedules WHERE tenant_id = $1 AND host_id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let n = sqlx::query("DELETE FROM hosts WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Inserts schedule `s`.
    pub async fn create_schedule(&self, s: &Schedule) -> Result<(), StoreError> {
        sqlx::query(&format!("INSERT INTO schedules ({SCHEDULE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"))
            .bind(&s.id)
            .bind(&s.tenant_id)
            .bind(&s.host_id)
            .bind(&s.name)
            .bind(&s.time_zone)
            .bind(&s.weekly)
            .bind(&s.overrides)
            .bind(s.created_at)
            .bind(s.updated_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Schedule `id` of host `host_id` of `tenant`.
    pub async fn schedule(&self, tenant: &str, host_id: &str, id: &str) -> Result<Option<Schedule>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE tenant_id = $1 AND host_id = $2 AND id = $3"
        ))
        .bind(tenant)
        .bind(host_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(schedule_from_row).transpose()
    }

    /// The schedules of host `host_id` of `tenant`, oldest first.
    pub async fn schedules(&self, tenant: &str, host_id: &str) -> Result<Vec<Schedule>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE tenant_id = $1 AND host_id = $2 ORDER BY created_at, id"
        ))
        .bind(tenant)
        .bind(host_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(schedule_from_row).collect()
    }

    /// Writes name, zone, rules and `updated_at` of schedule `s`. False: no such schedule.
    pub async fn update_schedule(&self, s: &Schedule) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE schedules SET name = $1, time_zone = $2, weekly = $3, overrides = $4, updated_at = $5 \
             WHERE tenant_id = $6 AND host_id = $7 AND id = $8",
        )
        .bind(&s.name)
        .bind(&s.time_zone)
        .bind(&s.weekly)
        .bind(&s.overrides)
        .bind(s.updated_at)
        .bind(&s.tenant_id)
        .bind(&s.host_id)
        .bind(&s.id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Deletes schedule `id` of host `host_id` of `tenant` unless an event type uses it. False: no such schedule.
    /// Errors: [`StoreError::ScheduleInUse`] (nothing deleted), [`StoreError::Db`].
    pub async fn delete_schedule(&self, tenant: &str, host_id: &str, id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM schedules WHERE tenant_id = $1 AND host_id = $2 AND id = $3")
            .bind(tenant)
            .bind(host_id)
            .bind(id)
            .execute(&self.pool)
            .await;
        match r {
            Ok(r) => Ok(r.rows_affected() == 1),
            Err(sqlx::Error::Database(d)) if d.is_foreign_key_violation() => Err(StoreError::ScheduleInUse),
            Err(e) => Err(StoreError::Db(e)),
        }
    }

    /// Inserts event type `e`. Errors: [`StoreError::SlugTaken`], [`StoreError::Db`].
    pub async fn create_event_type(&self, e: &EventType) -> Result<(), StoreError> {
        bind_event_type(
            sqlx::query(&format!(
                "INSERT INTO event_types ({EVENT_TYPE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
                 $11, $12, $13, $14, $15, $16, $17, $18)"
            )),
            e,
        )
        .execute(&self.pool)
        .await
        .map_err(|x| if unique_violation(&x) { StoreError::SlugTaken } else { StoreError::Db(x) })?;
        Ok(())
    }

    /// Rewrites event type `e` (by tenant and id; every column but `id`, `tenant_id` and `created_at`). False: no
    /// such event type. Errors: [`StoreError::SlugTaken`], [`StoreError::Db`].
    pub async fn update_event_type(&self, e: &EventType) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE event_types SET host_id = $1, schedule_id = $2, slug = $3, title = $4, duration_minutes = $5, \
             buffer_before_minutes = $6, buffer_after_minutes = $7, minimum_notice_minutes = $8, horizon_days = $9, \
             max_per_day = $10, slot_interval_minutes = $11, kind = $12, external_url = $13, \
             requires_confirmation = $14, updated_at = $15 WHERE tenant_id = $16 AND id = $17",
        )
        .bind(&e.host_id)
        .bind(&e.schedule_id)
        .bind(&e.slug)
        .bind(&e.title)
        .bind(e.duration_minutes)
        .bind(e.buffer_before_minutes)
        .bind(e.buffer_after_minutes)
        .bind(e.minimum_notice_minutes)
        .bind(e.horizon_days)
        .bind(e.max_per_day)
        .bind(e.slot_interval_minutes)
        .bind(e.kind.as_str())
        .bind(&e.external_url)
        .bind(i64::from(e.requires_confirmation))
        .bind(e.updated_at)
        .bind(&e.tenant_id)
        .bind(&e.id)
        .execute(&self.pool)
        .await
        .map_err(|x| if unique_violation(&x) { StoreError::SlugTaken } else { StoreError::Db(x) })?
        .rows_affected();
        Ok(n == 1)
    }

    /// Event type `id` of `tenant`.
    pub async fn event_type(&self, tenant: &str, id: &str) -> Result<Option<EventType>, StoreError> {
        let row =
            sqlx::query(&format!("SELECT {EVENT_TYPE_COLUMNS} FROM event_types WHERE tenant_id = $1 AND id = $2"))
                .bind(tenant)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(event_type_from_row).transpose()
    }

    /// The event type of host `host_id` of `tenant` with slug `slug`.
    pub async fn event_type_by_slug(
        &self,
        tenant: &str,
        host_id: &str,
        slug: &str,
    ) -> Result<Option<EventType>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {EVENT_TYPE_COLUMNS} FROM event_types WHERE tenant_id = $1 AND host_id = $2 AND slug = $3"
        ))
        .bind(tenant)
        .bind(host_id)
        .bind(slug)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(event_type_from_row).transpose()
    }

    /// The event types of `tenant` (of one host with `host_id`), oldest first.
    pub async fn event_types(&self, tenant: &str, host_id: Option<&str>) -> Result<Vec<EventType>, StoreError> {
        let rows = match host_id {
            Some(h) => {
                sqlx::query(&format!(
                    "SELECT {EVENT_TYPE_COLUMNS} FROM event_types WHERE tenant_id = $1 AND host_id = $2 \
                 ORDER BY created_at, id"
                ))
                .bind(tenant)
                .bind(h)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {EVENT_TYPE_COLUMNS} FROM event_types WHERE tenant_id = $1 ORDER BY created_at, id"
                ))
                .bind(tenant)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(event_type_from_row).collect()
    }

    /// Deletes event type `id` of `tenant` (its bookings are kept). False: no such event type.
    pub async fn delete_event_type(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let n = sqlx::query("DELETE FROM event_types WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// The `pending` and `confirmed` bookings of `tenant` whose host `ref` is `host_ref` and whose blocked interval
    /// intersects `[from, to)` (Unix seconds), ordered by blocked start: a search of the index
    /// `bookings_host_blocked`.
    pub async fn host_busy(
        &self,
        tenant: &str,
        host_ref: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<BusyBooking>, StoreError> {
        let rows = sqlx::query(HOST_BUSY).bind(tenant).bind(host_ref).bind(from).bind(to).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(BusyBooking {
                    blocked: (r.try_get("blocked_start")?, r.try_get("blocked_end")?),
                    start_at: r.try_get("start_at")?,
                    event_type_id: r.try_get("event_type_id")?,
                })
            })
            .collect()
    }
}

/// The query of [`Store::host_busy`]: a search of the partial index `bookings_host_blocked`.
const HOST_BUSY: &str = "SELECT blocked_start, blocked_end, start_at, event_type_id FROM bookings \
     WHERE tenant_id = $1 AND host_ref = $2 AND host_ref IS NOT NULL AND status IN ('pending', 'confirmed') \
     AND blocked_end > $3 AND blocked_start < $4 ORDER BY blocked_start, id";

/// Binds the columns of [`EVENT_TYPE_COLUMNS`] in order.
fn bind_event_type<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    e: &'q EventType,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    q.bind(&e.id)
        .bind(&e.tenant_id)
        .bind(&e.host_id)
        .bind(&e.schedule_id)
        .bind(&e.slug)
        .bind(&e.title)
        .bind(e.duration_minutes)
        .bind(e.buffer_before_minutes)
        .bind(e.buffer_after_minutes)
        .bind(e.minimum_notice_minutes)
        .bind(e.horizon_days)
        .bind(e.max_per_day)
        .bind(e.slot_interval_minutes)
        .bind(e.kind.as_str())
        .bind(&e.external_url)
        .bind(i64::from(e.requires_confirmation))
        .bind(e.created_at)
        .bind(e.updated_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The busy-time query of a slot computation searches the host's partial index, never scans the bookings.
    #[tokio::test]
    async fn host_busy_searches_the_host_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("t.db")).await.expect("open");
        let plan: Vec<String> = sqlx::query(&format!("EXPLAIN QUERY PLAN {HOST_BUSY}"))
            .bind("ten_default")
            .bind("coach:1")
            .bind(0_i64)
            .bind(10_i64)
            .fetch_all(&store.pool)
            .await
            .expect("plan")
            .iter()
            .map(|r| r.get::<String, _>("detail"))
            .collect();
        assert!(plan.iter().any(|d| d.starts_with("SEARCH bookings USING INDEX bookings_host_blocked")), "{plan:?}");
        assert!(!plan.iter().any(|d| d.starts_with("SCAN bookings")), "{plan:?}");
        assert!(store.host_busy("ten_default", "coach:1", 0, 10).await.expect("query").is_empty());
    }
}
