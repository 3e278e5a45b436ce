-- keygate schema v1 (SQLite). Timestamps are UTC milliseconds since the epoch.

-- One row: the version of the last committed change. Every write transaction bumps it first,
-- which takes the write lock at once and gives changes a gap-free, commit-ordered version.
CREATE TABLE feed_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO feed_version (id, version) VALUES (1, 0);

CREATE TABLE clients (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    plan       TEXT NOT NULL,
    scopes     TEXT NOT NULL,          -- JSON array of scope tokens
    sports     TEXT NOT NULL,          -- JSON array of slugs
    bookmakers TEXT NOT NULL,          -- JSON array of slugs; empty = all
    limits     TEXT NOT NULL,          -- JSON object of per-contract overrides
    active     INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    version    INTEGER NOT NULL        -- feed version of the last change to this row
);
CREATE INDEX clients_version ON clients (version);

CREATE TABLE keys (
    id          TEXT PRIMARY KEY,
    client_id   TEXT NOT NULL REFERENCES clients (id),
    digest      BLOB NOT NULL UNIQUE,
    hint        TEXT NOT NULL,
    label       TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('active', 'disabled', 'revoked')),
    expires_at  INTEGER,
    created_at  INTEGER NOT NULL,
    rotated_at  INTEGER,
    replaced_by TEXT,
    version     INTEGER NOT NULL
);
CREATE INDEX keys_client ON keys (client_id);
CREATE INDEX keys_version ON keys (version);

-- The change feed: one row per committed change, in version order.
CREATE TABLE changes (
    version   INTEGER NOT NULL,
    entity    TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    action    TEXT NOT NULL,
    at        INTEGER NOT NULL,
    PRIMARY KEY (version, entity_id)
);

-- Every operator action. Never holds a plaintext key or token.
CREATE TABLE audit (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     INTEGER NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL               -- JSON object
);
