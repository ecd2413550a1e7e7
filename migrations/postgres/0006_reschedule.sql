-- Issue 8: reschedule and extend (PATCH /v1/bookings/{id}), per-booking join policy. The same schema as
-- migrations/sqlite/0006_reschedule.sql.
--
-- early_join_s / host_early_join_s / overrun_grace_s: the booking's own join policy (NULL: the daemon's [booking]
-- default at the time the window is computed). The window instants stay stored (host_opens_at ... hard_end_at); a
-- reschedule recomputes them from the new times and this policy.
-- max_hard_end_at: the latest hard end the booking ever had, Unix seconds. TURN credentials carry the hard end they
-- were issued under in their username; after a reschedule the relay ends every credential of the booking at the new
-- hard end, and keeps that rule until max_hard_end_at, so a credential of a longer earlier window never revives.
-- rescheduled_at: the last reschedule (NULL: never); on start the daemon gives the relay the hard end of every live
-- rescheduled booking. extended_s: seconds the host added from inside the call, capped by [booking] host_extend_max.
ALTER TABLE bookings ADD COLUMN early_join_s BIGINT CHECK (early_join_s BETWEEN 0 AND 86400);
ALTER TABLE bookings ADD COLUMN host_early_join_s BIGINT CHECK (host_early_join_s BETWEEN 0 AND 86400);
ALTER TABLE bookings ADD COLUMN overrun_grace_s BIGINT CHECK (overrun_grace_s BETWEEN 0 AND 86400);
ALTER TABLE bookings ADD COLUMN max_hard_end_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE bookings ADD COLUMN rescheduled_at BIGINT;
ALTER TABLE bookings ADD COLUMN extended_s BIGINT NOT NULL DEFAULT 0 CHECK (extended_s >= 0);
UPDATE bookings SET max_hard_end_at = hard_end_at;
CREATE INDEX bookings_rescheduled_live ON bookings (max_hard_end_at) WHERE rescheduled_at IS NOT NULL;
