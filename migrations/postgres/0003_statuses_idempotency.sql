-- Issue 8: statuses `pending` and `rejected`, Idempotency-Key records, the index of `GET /v1/bookings` (the same
-- schema as migrations/sqlite/0003_statuses_idempotency.sql).
ALTER TABLE bookings DROP CONSTRAINT bookings_status_check;
ALTER TABLE bookings ADD CONSTRAINT bookings_status_check
    CHECK (status IN ('pending', 'confirmed', 'rejected', 'cancelled'));
-- GET /v1/bookings: one tenant, ordered by start then id.
CREATE INDEX bookings_tenant_start ON bookings (tenant_id, start_at, id);

-- Idempotency-Key of POST /v1/bookings, kept 24 h per tenant. `response` is the original 201 body without the link
-- tokens (they are shown once and never stored).
CREATE TABLE idempotency_keys (
    tenant_id     TEXT NOT NULL,
    idem_key      TEXT NOT NULL,
    request_hash  BYTEA NOT NULL,    -- SHA-256 of the canonical request body
    booking_id    TEXT NOT NULL,
    status_code   BIGINT NOT NULL,
    response      TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, idem_key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
