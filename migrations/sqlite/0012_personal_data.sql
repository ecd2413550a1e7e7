-- Issue 13: retention, erasure and export of personal data (README, "Retention and erasure").
--
-- bookings.purged_at: when the retention purge (or nothing else) removed the booking's personal data, Unix seconds;
-- NULL while it is kept. The purge claims a booking with `UPDATE ... WHERE purged_at IS NULL` inside the transaction
-- that purges it, so a second node's run skips it and an interrupted purge (rolled back) is done by the next run.
-- tenants.retention_s: the tenant's override of [retention] personal_data, seconds after hard_end_at (NULL: the
-- configured default).
-- webhook_deliveries.booking_id: the booking an event is about (NULL for events about no booking), so the purge and
-- an erasure find the deliveries that carry a booking's data; filled from the payload for existing rows.
ALTER TABLE bookings ADD COLUMN purged_at INTEGER;
ALTER TABLE tenants ADD COLUMN retention_s INTEGER CHECK (retention_s >= 0);
ALTER TABLE webhook_deliveries ADD COLUMN booking_id TEXT;
UPDATE webhook_deliveries SET booking_id = COALESCE(
    json_extract(payload, '$.data.booking_id'),
    CASE WHEN event_type LIKE 'booking.%' THEN json_extract(payload, '$.data.id') END)
WHERE json_valid(payload);
CREATE INDEX webhook_deliveries_booking ON webhook_deliveries (booking_id) WHERE booking_id IS NOT NULL;
CREATE INDEX bookings_unpurged_hard_end ON bookings (hard_end_at) WHERE purged_at IS NULL;
CREATE INDEX participants_email ON participants (LOWER(email)) WHERE email IS NOT NULL;
CREATE INDEX participants_ref ON participants (ref) WHERE ref IS NOT NULL;
