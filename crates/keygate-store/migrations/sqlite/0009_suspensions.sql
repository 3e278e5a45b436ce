-- Scoped suspensions (`keygate suspend`): a hold on one scope, sport, bookmaker or route, for
-- everyone or one client, until lifted (`lifted_at`) or until `until` passes. Rows are never
-- deleted: they are the record of what was held, when and by whom. Every node reads the
-- unlifted ones whenever the feed version moves.
CREATE TABLE suspensions (
    id         TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    value      TEXT NOT NULL,
    client_id  TEXT REFERENCES clients (id),
    message    TEXT,
    until      INTEGER,
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    lifted_at  INTEGER,
    lifted_by  TEXT,
    version    INTEGER NOT NULL
);
CREATE INDEX suspensions_lifted ON suspensions (lifted_at);
