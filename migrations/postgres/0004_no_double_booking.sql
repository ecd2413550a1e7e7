-- Issue 8: a host is never double-booked (the same rule as migrations/sqlite/0004_no_double_booking.sql). Two
-- `pending` or `confirmed` bookings of one tenant whose host participant has the same `ref` never have intersecting
-- blocked intervals [start_at - buffer_before_s, end_at + buffer_after_s) (Unix seconds). `host_ref` is the host
-- participant's `ref`, copied onto the booking by the store on insert (NULL: not checked); `blocked_start` and
-- `blocked_end` are generated from the times and buffers, so every change of them (a reschedule too) is checked.
-- The exclusion constraint is checked by the database under concurrency (a second writer waits for the first and
-- fails with SQLSTATE 23P01, mapped to `StoreError::SlotUnavailable`, 409 slot_unavailable).
--
-- `btree_gist` gives GiST the `=` on text the constraint needs. Creating it needs a superuser (or, on PostgreSQL 13+,
-- a database owner with CREATE privilege: it is a trusted extension); a DBA may run
-- `CREATE EXTENSION btree_gist;` in Duet's database once beforehand, then this statement does nothing.
CREATE EXTENSION IF NOT EXISTS btree_gist;

ALTER TABLE bookings ADD COLUMN host_ref TEXT;
ALTER TABLE bookings ADD COLUMN buffer_before_s BIGINT NOT NULL DEFAULT 0
    CHECK (buffer_before_s BETWEEN 0 AND 86400);
ALTER TABLE bookings ADD COLUMN buffer_after_s BIGINT NOT NULL DEFAULT 0
    CHECK (buffer_after_s BETWEEN 0 AND 86400);
ALTER TABLE bookings ADD COLUMN blocked_start BIGINT GENERATED ALWAYS AS (start_at - buffer_before_s) STORED;
ALTER TABLE bookings ADD COLUMN blocked_end BIGINT GENERATED ALWAYS AS (end_at + buffer_after_s) STORED;

-- Existing bookings: the host participant's ref.
UPDATE bookings SET host_ref = p.ref FROM participants p WHERE p.booking_id = bookings.id AND p.role = 'host';
-- Live bookings that already overlap an earlier-created live booking of the same host (possible before this version)
-- are kept but exempt: their host_ref is cleared, so they are neither checked nor block others, and creating the
-- constraint cannot fail on old data.
UPDATE bookings SET host_ref = NULL
WHERE host_ref IS NOT NULL AND status IN ('pending', 'confirmed') AND EXISTS (
    SELECT 1 FROM bookings o
    WHERE o.tenant_id = bookings.tenant_id AND o.host_ref = bookings.host_ref AND o.id <> bookings.id
      AND o.status IN ('pending', 'confirmed')
      AND o.blocked_start < bookings.blocked_end AND o.blocked_end > bookings.blocked_start
      AND (o.created_at < bookings.created_at OR (o.created_at = bookings.created_at AND o.id < bookings.id)));

ALTER TABLE bookings ADD CONSTRAINT bookings_host_no_overlap EXCLUDE USING gist (
    tenant_id WITH =,
    host_ref WITH =,
    int8range(blocked_start, blocked_end) WITH &&
) WHERE (host_ref IS NOT NULL AND status IN ('pending', 'confirmed'));
