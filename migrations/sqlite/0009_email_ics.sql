-- Issue 9: ICS invitations and email. The same schema as migrations/postgres/0009_email_ics.sql.
--
-- participants.link_token_enc: the participant's link token, encrypted at rest so invitations and emails can carry
-- the link (the API still finds participants by link_token_hash only). Format `v1.<kid>.<base64url(nonce || AEAD
-- ciphertext)>`: ChaCha20-Poly1305 under a key derived by HKDF-SHA256 from the session key `kid` of secrets.toml,
-- with the participant id as associated data. Written on create and on rotation, cleared on revocation; NULL for
-- participants created before this migration (their invitations say the link is not available).
ALTER TABLE participants ADD COLUMN link_token_enc TEXT;

-- email_outbox: the durable email outbox, one row per message and recipient, written in the transaction of the
-- change it reports. kind: confirmation | reschedule | cancellation | reminder. The message itself is rendered at send
-- time from the booking as it is then (so a rotated link is mailed as the new one). message_id is the Message-ID
-- (one per row, the same on every attempt, so a resend after a crash is recognisable). status: pending (due at
-- send_at_ms) | sending (claimed until lease_until_ms) | sent | failed | dropped (no longer relevant when its turn
-- came: a reminder of a cancelled booking, a revoked link, a start already passed). reminder_offset_s: for reminders,
-- the offset before the start. Times in milliseconds are Unix milliseconds, the others Unix seconds.
CREATE TABLE email_outbox (
    id TEXT PRIMARY KEY,
    message_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    booking_id TEXT NOT NULL REFERENCES bookings (id) ON DELETE CASCADE,
    participant_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('confirmation', 'reschedule', 'cancellation', 'reminder')),
    reminder_offset_s INTEGER,
    status TEXT NOT NULL CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'dropped')),
    attempts INTEGER NOT NULL DEFAULT 0,
    send_at_ms INTEGER NOT NULL,
    lease_until_ms INTEGER,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE INDEX email_outbox_due ON email_outbox (status, send_at_ms);
CREATE INDEX email_outbox_booking ON email_outbox (booking_id, kind, status);
