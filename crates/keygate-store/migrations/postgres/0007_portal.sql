-- Customer portal: the people who sign in for a client, their single-use sign-in links and their
-- sessions. Links and sessions are kept as digests only; the plaintext is in the mail or the
-- cookie. Sessions live here, not in a node's memory, so any node serves any signed-in user.
CREATE TABLE portal_users (
    id         TEXT PRIMARY KEY,
    client_id  TEXT NOT NULL REFERENCES clients (id),
    email      TEXT NOT NULL UNIQUE,   -- lowercased
    disabled   BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);
CREATE INDEX portal_users_client ON portal_users (client_id);

CREATE TABLE portal_links (
    digest     BYTEA PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES portal_users (id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX portal_links_expiry ON portal_links (expires_at);

CREATE TABLE portal_sessions (
    digest     BYTEA PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES portal_users (id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX portal_sessions_user ON portal_sessions (user_id);
