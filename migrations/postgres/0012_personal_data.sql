-- Issue 13: retention, erasure and export of personal data; migrations/sqlite/0012_personal_data.sql in PostgreSQL
-- types (see there for the columns).
ALTER TABLE bookings ADD COLUMN purged_at BIGINT;
ALTER TABLE tenants ADD COLUMN retention_s BIGINT CHECK (retention_s >= 0);
ALTER TABLE webhook_deliveries ADD COLUMN booking_id TEXT;
UPDATE webhook_deliveries SET booking_id = COALESCE(
    payload::jsonb -> 'data' ->> 'booking_id',
    CASE WHEN event_type LIKE 'booking.%' THEN payload::jsonb -> 'data' ->> 'id' END);
CREATE INDEX webhook_deliveries_booking ON webhook_deliveries (booking_id) WHERE booking_id IS NOT NULL;
CREATE INDEX bookings_unpurged_hard_end ON bookings (hard_end_at) WHERE purged_at IS NULL;
CREATE INDEX participants_email ON participants (LOWER(email)) WHERE email IS NOT NULL;
CREATE INDEX participants_ref ON participants (ref) WHERE ref IS NOT NULL;
