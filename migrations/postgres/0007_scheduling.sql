-- Issue 9: hosts, availability schedules, event types; bookings remember the event type they were made from.
-- The same schema as migrations/sqlite/0007_scheduling.sql. All instants are Unix seconds, UTC.
--
-- hosts: one per (tenant, ref); `ref` is the string bookings carry as the host participant's `ref`. secret_hash is the
-- SHA-256 of the host secret (shown once on create and rotation; it reaches the host's agenda page and calendar feed).
CREATE TABLE hosts (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL,
    ref           TEXT NOT NULL,
    display_name  TEXT NOT NULL,
    email         TEXT,
    time_zone     TEXT NOT NULL,
    secret_hash   BYTEA NOT NULL UNIQUE,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    UNIQUE (tenant_id, ref)
);

-- schedules: weekly rules and date overrides in one IANA zone, as validated JSON arrays (the API's own shape:
-- weekly [{day, intervals: [{start, end}]}], overrides [{date, intervals}]).
CREATE TABLE schedules (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    host_id     TEXT NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    time_zone   TEXT NOT NULL,
    weekly      TEXT NOT NULL,
    overrides   TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX schedules_host ON schedules (host_id);

-- event_types: slug unique per host; durations in minutes, horizon in days; external_url exactly for
-- kind = 'external_link'. A schedule in use cannot be deleted (NO ACTION: checked at the end of the statement, so
-- deleting a host still cascades to both).
CREATE TABLE event_types (
    id                      TEXT PRIMARY KEY,
    tenant_id               TEXT NOT NULL,
    host_id                 TEXT NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    schedule_id             TEXT NOT NULL REFERENCES schedules (id),
    slug                    TEXT NOT NULL,
    title                   TEXT NOT NULL,
    duration_minutes        BIGINT NOT NULL CHECK (duration_minutes > 0),
    buffer_before_minutes   BIGINT NOT NULL DEFAULT 0 CHECK (buffer_before_minutes >= 0),
    buffer_after_minutes    BIGINT NOT NULL DEFAULT 0 CHECK (buffer_after_minutes >= 0),
    minimum_notice_minutes  BIGINT NOT NULL CHECK (minimum_notice_minutes >= 0),
    horizon_days            BIGINT NOT NULL CHECK (horizon_days > 0),
    max_per_day             BIGINT CHECK (max_per_day > 0),
    slot_interval_minutes   BIGINT CHECK (slot_interval_minutes > 0),
    kind                    TEXT NOT NULL CHECK (kind IN ('hosted', 'external_link')),
    external_url            TEXT CHECK ((kind = 'external_link') = (external_url IS NOT NULL)),
    requires_confirmation   BIGINT NOT NULL DEFAULT 0 CHECK (requires_confirmation IN (0, 1)),
    created_at              BIGINT NOT NULL,
    updated_at              BIGINT NOT NULL,
    UNIQUE (host_id, slug)
);
CREATE INDEX event_types_tenant ON event_types (tenant_id, created_at, id);
CREATE INDEX event_types_schedule ON event_types (schedule_id);

-- bookings made from an event type (POST /v1/event-types/{id}/bookings) keep its id (max_per_day counts them) and
-- the guest's note.
ALTER TABLE bookings ADD COLUMN event_type_id TEXT;
ALTER TABLE bookings ADD COLUMN note TEXT;
CREATE INDEX bookings_event_type_start ON bookings (event_type_id, start_at)
    WHERE event_type_id IS NOT NULL AND status IN ('pending', 'confirmed');
