-- Admin tokens: operators' credentials for the admin API. Stored as digests, shown once.
CREATE TABLE admin_tokens (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    digest     BYTEA NOT NULL UNIQUE,
    hint       TEXT NOT NULL,
    read_only  BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
