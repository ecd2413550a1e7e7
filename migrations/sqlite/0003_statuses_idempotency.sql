-- Issue 8: statuses `pending` and `rejected`, Idempotency-Key records, the index of `GET /v1/bookings`.
-- SQLite cannot alter a CHECK constraint, so `bookings` is rebuilt (rows, columns and indexes kept). `participants` is
-- rebuilt with it: its foreign key must follow the new table, and dropping the old `bookings` while participants still
-- referenced it would delete them (ON DELETE CASCADE, foreign keys are on). All of it runs in the migration's
-- transaction: a failure leaves the database as it was.
CREATE TABLE bookings_new (
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
    status          TEXT NOT NULL CHECK (status IN ('pending', 'confirmed', 'rejected', 'cancelled')),
    sequence        INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    cancelled_at    INTEGER,
    CHECK (end_at > start_at)
);
INSERT INTO bookings_new (id, tenant_id, title, external_id, start_at, end_at, host_opens_at, opens_at, join_cutoff_at,
                          hard_end_at, status, sequence, created_at, updated_at, cancelled_at)
    SELECT id, tenant_id, title, external_id, start_at, end_at, host_opens_at, opens_at, join_cutoff_at, hard_end_at,
           status, sequence, created_at, updated_at, cancelled_at FROM bookings;

CREATE TABLE participants_new (
    id               TEXT PRIMARY KEY,
    booking_id       TEXT NOT NULL REFERENCES bookings_new (id) ON DELETE CASCADE,
    role             TEXT NOT NULL CHECK (role IN ('host', 'guest')),
    ref              TEXT,
    display_name     TEXT NOT NULL,
    link_token_hash  BLOB NOT NULL UNIQUE,  -- SHA-256 of the link token
    first_joined_at  INTEGER,
    UNIQUE (booking_id, role)
);
INSERT INTO participants_new (id, booking_id, role, ref, display_name, link_token_hash, first_joined_at)
    SELECT id, booking_id, role, ref, display_name, link_token_hash, first_joined_at FROM participants;

DROP TABLE participants;
DROP TABLE bookings;
-- Renaming rewrites the foreign key of participants_new to `bookings`.
ALTER TABLE bookings_new RENAME TO bookings;
ALTER TABLE participants_new RENAME TO participants;
CREATE UNIQUE INDEX bookings_tenant_external_id ON bookings (tenant_id, external_id) WHERE external_id IS NOT NULL;
CREATE INDEX bookings_hard_end ON bookings (hard_end_at);
-- GET /v1/bookings: one tenant, ordered by start then id.
CREATE INDEX bookings_tenant_start ON bookings (tenant_id, start_at, id);

-- Idempotency-Key of POST /v1/bookings, kept 24 h per tenant. `response` is the original 201 body without the link
-- tokens (they are shown once and never stored).
CREATE TABLE idempotency_keys (
    tenant_id     TEXT NOT NULL,
    idem_key      TEXT NOT NULL,
    request_hash  BLOB NOT NULL,     -- SHA-256 of the canonical request body
    booking_id    TEXT NOT NULL,
    status_code   INTEGER NOT NULL,
    response      TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, idem_key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
