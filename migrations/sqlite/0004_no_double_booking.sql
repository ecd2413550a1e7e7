-- Issue 8: a host is never double-booked. Two `pending` or `confirmed` bookings of one tenant whose host participant
-- has the same `ref` never have intersecting blocked intervals [start_at - buffer_before_s, end_at + buffer_after_s)
-- (Unix seconds). `host_ref` is the host participant's `ref`, copied onto the booking by the store on insert (NULL:
-- not checked). `blocked_start` / `blocked_end` are generated from the times and buffers, so every change of them
-- (a reschedule too) is checked. The triggers run inside the writing statement, which holds SQLite's write lock: two
-- concurrent writers cannot both pass the check. The message names the rule; the store maps it to
-- `StoreError::SlotUnavailable` (409 slot_unavailable). The same rule as the exclusion constraint of
-- migrations/postgres/0004_no_double_booking.sql.
ALTER TABLE bookings ADD COLUMN host_ref TEXT;
ALTER TABLE bookings ADD COLUMN buffer_before_s INTEGER NOT NULL DEFAULT 0
    CHECK (buffer_before_s BETWEEN 0 AND 86400);
ALTER TABLE bookings ADD COLUMN buffer_after_s INTEGER NOT NULL DEFAULT 0
    CHECK (buffer_after_s BETWEEN 0 AND 86400);
ALTER TABLE bookings ADD COLUMN blocked_start INTEGER GENERATED ALWAYS AS (start_at - buffer_before_s) VIRTUAL;
ALTER TABLE bookings ADD COLUMN blocked_end INTEGER GENERATED ALWAYS AS (end_at + buffer_after_s) VIRTUAL;

-- Existing bookings: the host participant's ref.
UPDATE bookings SET host_ref = (SELECT p.ref FROM participants p WHERE p.booking_id = bookings.id AND p.role = 'host');
-- Live bookings that already overlap an earlier-created live booking of the same host (possible before this version)
-- are kept but exempt: their host_ref is cleared, so they are neither checked nor block others. Every pair of the
-- remaining rows is free of overlaps (the later one of an overlapping pair is always exempt).
UPDATE bookings SET host_ref = NULL
WHERE host_ref IS NOT NULL AND status IN ('pending', 'confirmed') AND EXISTS (
    SELECT 1 FROM bookings o
    WHERE o.tenant_id = bookings.tenant_id AND o.host_ref = bookings.host_ref AND o.id <> bookings.id
      AND o.status IN ('pending', 'confirmed')
      AND o.blocked_start < bookings.blocked_end AND o.blocked_end > bookings.blocked_start
      AND (o.created_at < bookings.created_at OR (o.created_at = bookings.created_at AND o.id < bookings.id)));

-- The overlap probe: one host's live bookings ending after the new one starts (the host's future bookings).
CREATE INDEX bookings_host_blocked ON bookings (tenant_id, host_ref, blocked_end)
    WHERE host_ref IS NOT NULL AND status IN ('pending', 'confirmed');

CREATE TRIGGER bookings_host_no_overlap_insert BEFORE INSERT ON bookings
WHEN NEW.host_ref IS NOT NULL AND NEW.status IN ('pending', 'confirmed')
BEGIN
    SELECT RAISE(ABORT, 'slot_unavailable: bookings_host_no_overlap') WHERE EXISTS (
        SELECT 1 FROM bookings o
        WHERE o.tenant_id = NEW.tenant_id AND o.host_ref = NEW.host_ref AND o.id <> NEW.id
          AND o.host_ref IS NOT NULL AND o.status IN ('pending', 'confirmed')
          AND o.blocked_end > NEW.start_at - NEW.buffer_before_s
          AND o.blocked_start < NEW.end_at + NEW.buffer_after_s);
END;

CREATE TRIGGER bookings_host_no_overlap_update
BEFORE UPDATE OF tenant_id, host_ref, start_at, end_at, buffer_before_s, buffer_after_s, status ON bookings
WHEN NEW.host_ref IS NOT NULL AND NEW.status IN ('pending', 'confirmed')
BEGIN
    SELECT RAISE(ABORT, 'slot_unavailable: bookings_host_no_overlap') WHERE EXISTS (
        SELECT 1 FROM bookings o
        WHERE o.tenant_id = NEW.tenant_id AND o.host_ref = NEW.host_ref AND o.id <> NEW.id
          AND o.host_ref IS NOT NULL AND o.status IN ('pending', 'confirmed')
          AND o.blocked_end > NEW.start_at - NEW.buffer_before_s
          AND o.blocked_start < NEW.end_at + NEW.buffer_after_s);
END;
