-- Customer portal: the people who sign in for a client, their single-use sign-in links and their
-- sessions. Links and sessions are kept as digests only; the plaintext is in the mail or the
-- cookie. Sessions live here, not in a node's memory, so any node serves any signed-in user.
CREATE TABLE portal_users (
    id         TEXT PRIMARY KEY,
    client_id  TEXT NOT NULL REFERENCES clients (id),
    email      TEXT NOT NULL UNIQUE,   -- lowercased
    disabled   INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE INDEX portal_users_client ON portal_users (client_id);

CREATE TABLE portal_links (
    digest     BLOB PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES portal_users (id),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
);
CREATE INDEX portal_links_expiry ON portal_links (expires_at);

CREATE TABLE portal_sessions (
    digest     BLOB PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES portal_users (id),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX portal_sessions_user ON portal_sessions (user_id);
