-- Tenants and scoped, expiring API keys (issue 8): migrations/sqlite/0002_tenants.sql in PostgreSQL types. All
-- instants are Unix seconds, UTC (BIGINT).
CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
-- The default tenant of the embedded setup, and a row for every tenant an existing key or booking names.
INSERT INTO tenants (id, name, created_at) VALUES ('ten_default', 'default', EXTRACT(EPOCH FROM now())::BIGINT);
INSERT INTO tenants (id, name, created_at)
    SELECT DISTINCT tenant_id, tenant_id, EXTRACT(EPOCH FROM now())::BIGINT FROM api_keys
    WHERE tenant_id NOT IN (SELECT id FROM tenants);
INSERT INTO tenants (id, name, created_at)
    SELECT DISTINCT tenant_id, tenant_id, EXTRACT(EPOCH FROM now())::BIGINT FROM bookings
    WHERE tenant_id NOT IN (SELECT id FROM tenants);

-- Scopes: space-separated, from `bookings:read`, `bookings:write`, `admin`. Existing keys (the admin key) get all.
ALTER TABLE api_keys ADD COLUMN scopes TEXT NOT NULL DEFAULT 'bookings:read bookings:write admin';
ALTER TABLE api_keys ADD COLUMN name TEXT;
ALTER TABLE api_keys ADD COLUMN expires_at BIGINT;
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);
