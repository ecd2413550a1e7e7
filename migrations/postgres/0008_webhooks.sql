-- Issue 9: webhooks. The same schema as migrations/sqlite/0008_webhooks.sql.
--
-- webhook_endpoints: a tenant's receivers. event_types is a space-separated list of event types (NULL: every event).
-- secret is the current signing secret `whsec_<base64>` (kept so the daemon can sign; the API shows it only on
-- create and rotation); previous_secret still signs, beside it, until previous_secret_expires_at (Unix seconds).
CREATE TABLE webhook_endpoints (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    url TEXT NOT NULL,
    description TEXT,
    event_types TEXT,
    enabled BIGINT NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    secret TEXT NOT NULL,
    previous_secret TEXT,
    previous_secret_expires_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant_id, created_at, id);

-- webhook_deliveries: the durable outbox, one row per event and endpoint, written in the transaction of the change it
-- reports. message_id is the `webhook-id` (one per event, the same on every attempt). status: pending (due at
-- next_attempt_ms) | sending (claimed by a worker until lease_until_ms) | delivered | failed. attempts counts logged
-- attempts; failures the consecutive failures since the last success or redeliver (the index into the retry
-- schedule). Times in milliseconds are Unix milliseconds.
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    message_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'sending', 'delivered', 'failed')),
    attempts BIGINT NOT NULL DEFAULT 0,
    failures BIGINT NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT NOT NULL,
    lease_until_ms BIGINT,
    created_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_ms);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at, id);

-- webhook_attempts: the delivery log. status_code is the receiver's HTTP status (NULL when none came: error says why);
-- duration_ms from the connect to the end of the answer.
CREATE TABLE webhook_attempts (
    delivery_id TEXT NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt BIGINT NOT NULL,
    attempted_at_ms BIGINT NOT NULL,
    status_code BIGINT,
    error TEXT,
    duration_ms BIGINT NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);
