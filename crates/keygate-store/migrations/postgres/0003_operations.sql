-- Operations: settings replicated to every node (emergency mode), usage counters per client,
-- day and status, and idempotency records of the admin API.
CREATE TABLE settings (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL,
    version    BIGINT NOT NULL
);

CREATE TABLE usage (
    client_id TEXT NOT NULL,
    day       TEXT NOT NULL,
    status    BIGINT NOT NULL,
    requests  BIGINT NOT NULL,
    PRIMARY KEY (client_id, day, status)
);

-- `sealed` is the first answer encrypted under a key derived from the caller's idempotency key,
-- which is never stored: the answer of a key creation holds a plaintext key.
CREATE TABLE idempotency (
    id          BYTEA PRIMARY KEY,
    fingerprint BYTEA NOT NULL,
    status      BIGINT NOT NULL,
    sealed      BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX idempotency_expiry ON idempotency (expires_at);
