-- Duet booking store, PostgreSQL: the schema of migrations/sqlite/0001_init.sql in PostgreSQL types. All instants
-- are Unix seconds, UTC (BIGINT); hashes are BYTEA.
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    key_hash    BYTEA NOT NULL UNIQUE,  -- SHA-256 of the key
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

CREATE TABLE bookings (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    title           TEXT NOT NULL,
    external_id     TEXT,
    start_at        BIGINT NOT NULL,
    end_at          BIGINT NOT NULL,
    host_opens_at   BIGINT NOT NULL,
    opens_at        BIGINT NOT NULL,
    join_cutoff_at  BIGINT NOT NULL,
    hard_end_at     BIGINT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('confirmed', 'cancelled')),
    sequence        BIGINT NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    cancelled_at    BIGINT,
    CHECK (end_at > start_at)
);
CREATE UNIQUE INDEX bookings_tenant_external_id ON bookings (tenant_id, external_id) WHERE external_id IS NOT NULL;
CREATE INDEX bookings_hard_end ON bookings (hard_end_at);

CREATE TABLE participants (
    id               TEXT PRIMARY KEY,
    booking_id       TEXT NOT NULL REFERENCES bookings (id) ON DELETE CASCADE,
    role             TEXT NOT NULL CHECK (role IN ('host', 'guest')),
    ref              TEXT,
    display_name     TEXT NOT NULL,
    link_token_hash  BYTEA NOT NULL UNIQUE,  -- SHA-256 of the link token
    first_joined_at  BIGINT,
    UNIQUE (booking_id, role)
);
