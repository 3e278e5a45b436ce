-- Operations: settings replicated to every node (emergency mode), usage counters per client,
-- day and status, and idempotency records of the admin API.
CREATE TABLE settings (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    updated_by TEXT NOT NULL,
    version    INTEGER NOT NULL
);

CREATE TABLE usage (
    client_id TEXT NOT NULL,
    day       TEXT NOT NULL,
    status    INTEGER NOT NULL,
    requests  INTEGER NOT NULL,
    PRIMARY KEY (client_id, day, status)
);

-- `sealed` is the first answer encrypted under a key derived from the caller's idempotency key,
-- which is never stored: the answer of a key creation holds a plaintext key.
CREATE TABLE idempotency (
    id          BLOB PRIMARY KEY,
    fingerprint BLOB NOT NULL,
    status      INTEGER NOT NULL,
    sealed      BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX idempotency_expiry ON idempotency (expires_at);
