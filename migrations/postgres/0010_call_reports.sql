-- Issue 9: call facts from real connections (call reports, meeting.* and participant.* webhooks). The same schema as
-- migrations/sqlite/0010_call_reports.sql. Times ending in _ms are Unix milliseconds; the rest Unix seconds.
--
-- call_sessions: one row per booking whose room saw a join. first_join_ms: the first admission of anyone;
-- started_ms: the first `ready` (both participants connected; meeting.started was sent with it); ended_ms and
-- end_reason (window_closed | cancelled | all_left): meeting.ended was sent; all_left_ms: when the last connected
-- participant left (NULL while someone is connected): after [calls] end_grace the meeting ends at that instant.
CREATE TABLE call_sessions (
    booking_id TEXT PRIMARY KEY REFERENCES bookings (id) ON DELETE CASCADE,
    tenant_id TEXT NOT NULL,
    first_join_ms BIGINT NOT NULL,
    started_ms BIGINT,
    ended_ms BIGINT,
    end_reason TEXT,
    all_left_ms BIGINT,
    sessions BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX call_sessions_open ON call_sessions (all_left_ms) WHERE ended_ms IS NULL;

-- call_participants: per participant of a booking. joins counts admissions (reconnects = joins - 1); connected_ms the
-- time connected over finished connections, connected_since_ms the start of the current one (NULL when not
-- connected). relay_*: TURN allocations of the participant's credentials, with the payload bytes they relayed (each
-- allocation is added when it ends), and the client transport (udp | tcp | tls) of the last one that relayed bytes.
CREATE TABLE call_participants (
    booking_id TEXT NOT NULL REFERENCES bookings (id) ON DELETE CASCADE,
    participant_id TEXT NOT NULL,
    joins BIGINT NOT NULL DEFAULT 0,
    first_join_ms BIGINT,
    connected_since_ms BIGINT,
    connected_ms BIGINT NOT NULL DEFAULT 0,
    relay_allocations BIGINT NOT NULL DEFAULT 0,
    relay_bytes_to_peer BIGINT NOT NULL DEFAULT 0,
    relay_bytes_to_client BIGINT NOT NULL DEFAULT 0,
    relay_transport TEXT CHECK (relay_transport IN ('udp', 'tcp', 'tls')),
    PRIMARY KEY (booking_id, participant_id)
);

-- call_events: joins and leaves in order (n = 1, 2, … per booking), at most 1000 per booking (later ones are counted
-- in call_participants only). reason: the leave reason of the hub (closed, replaced, left, timeout, window_closed, …).
CREATE TABLE call_events (
    booking_id TEXT NOT NULL REFERENCES bookings (id) ON DELETE CASCADE,
    n BIGINT NOT NULL,
    participant_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('join', 'leave')),
    at_ms BIGINT NOT NULL,
    reason TEXT,
    PRIMARY KEY (booking_id, n)
);

-- call_client_reports: the latest browser summary of each participant (POST /v1/join/{link_token}/report), the
-- validated JSON document as the API shows it.
CREATE TABLE call_client_reports (
    booking_id TEXT NOT NULL REFERENCES bookings (id) ON DELETE CASCADE,
    participant_id TEXT NOT NULL,
    received_ms BIGINT NOT NULL,
    summary TEXT NOT NULL,
    PRIMARY KEY (booking_id, participant_id)
);

-- call_no_show_checks: the durable no-show timer. A row says participant.no_show events were decided for the booking's
-- join_cutoff_at (a reschedule moves the cutoff, and the new one is checked again); written in the transaction that
-- enqueues the events, so each is sent once, across restarts and nodes.
CREATE TABLE call_no_show_checks (
    booking_id TEXT NOT NULL REFERENCES bookings (id) ON DELETE CASCADE,
    join_cutoff_at BIGINT NOT NULL,
    checked_at BIGINT NOT NULL,
    PRIMARY KEY (booking_id, join_cutoff_at)
);
CREATE INDEX bookings_join_cutoff ON bookings (join_cutoff_at) WHERE status = 'confirmed';
