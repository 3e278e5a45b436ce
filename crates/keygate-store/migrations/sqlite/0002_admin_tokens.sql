-- Admin tokens: operators' credentials for the admin API. Stored as digests, shown once.
CREATE TABLE admin_tokens (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    digest     BLOB NOT NULL UNIQUE,
    hint       TEXT NOT NULL,
    read_only  INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
