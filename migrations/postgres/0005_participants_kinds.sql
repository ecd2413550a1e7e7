-- Issue 8: participants' contact fields, link rotation and revocation, booking metadata, two kinds of booking.
-- The same schema as migrations/sqlite/0005_participants_kinds.sql.
--
-- participants.email / time_zone / locale: optional, validated by the API (email <= 254 characters, an IANA zone
-- name, a BCP 47 tag). link_epoch goes up with every rotation or revocation of the participant's link; session tokens
-- carry the epoch they were issued under (`pep`) and are refused on the WebSocket once it moved. link_revoked_at is
-- set by a revocation (the link hash is then replaced by a random one nobody holds) and cleared by a rotation.
ALTER TABLE participants ADD COLUMN email TEXT;
ALTER TABLE participants ADD COLUMN time_zone TEXT;
ALTER TABLE participants ADD COLUMN locale TEXT;
ALTER TABLE participants ADD COLUMN link_epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE participants ADD COLUMN link_revoked_at BIGINT;

-- bookings.kind: 'hosted' (a Duet room, the only kind before) or 'external_link' (no room, no TURN: the join answers
-- with external_url, an https URL <= 2048 characters, present exactly for that kind). metadata: the app's JSON
-- object as sent (<= 4 KiB), stored as text (not jsonb) so it is echoed back verbatim.
ALTER TABLE bookings ADD COLUMN kind TEXT NOT NULL DEFAULT 'hosted'
    CHECK (kind IN ('hosted', 'external_link'));
ALTER TABLE bookings ADD COLUMN external_url TEXT;
ALTER TABLE bookings ADD CONSTRAINT bookings_external_url_iff_kind
    CHECK ((kind = 'external_link') = (external_url IS NOT NULL));
ALTER TABLE bookings ADD COLUMN metadata TEXT;
