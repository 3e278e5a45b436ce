-- keygate schema v1 (PostgreSQL). Timestamps are UTC milliseconds since the epoch.

CREATE TABLE feed_version (
    id      BIGINT PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO feed_version (id, version) VALUES (1, 0);

CREATE TABLE clients (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    plan       TEXT NOT NULL,
    scopes     TEXT NOT NULL,
    sports     TEXT NOT NULL,
    bookmakers TEXT NOT NULL,
    limits     TEXT NOT NULL,
    active     BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    version    BIGINT NOT NULL
);
CREATE INDEX clients_version ON clients (version);

CREATE TABLE keys (
    id          TEXT PRIMARY KEY,
    client_id   TEXT NOT NULL REFERENCES clients (id),
    digest      BYTEA NOT NULL UNIQUE,
    hint        TEXT NOT NULL,
    label       TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('active', 'disabled', 'revoked')),
    expires_at  BIGINT,
    created_at  BIGINT NOT NULL,
    rotated_at  BIGINT,
    replaced_by TEXT,
    version     BIGINT NOT NULL
);
CREATE INDEX keys_client ON keys (client_id);
CREATE INDEX keys_version ON keys (version);

CREATE TABLE changes (
    version   BIGINT NOT NULL,
    entity    TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    action    TEXT NOT NULL,
    at        BIGINT NOT NULL,
    PRIMARY KEY (version, entity_id)
);

CREATE TABLE audit (
    id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at     BIGINT NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
