-- Duet booking store. All instants are Unix seconds, UTC.
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    key_hash    BLOB NOT NULL UNIQUE,   -- SHA-256 of the key
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);

CREATE TABLE bookings (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    title           TEXT NOT NULL,
    external_id     TEXT,
    start_at        INTEGER NOT NULL,
    end_at          INTEGER NOT NULL,
    host_opens_at   INTEGER NOT NULL,
    opens_at        INTEGER NOT NULL,
    join_cutoff_at  INTEGER NOT NULL,
    hard_end_at     INTEGER NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('confirmed', 'cancelled')),
    sequence        INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    cancelled_at    INTEGER,
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
    link_token_hash  BLOB NOT NULL UNIQUE,  -- SHA-256 of the link token
    first_joined_at  INTEGER,
    UNIQUE (booking_id, role)
);
