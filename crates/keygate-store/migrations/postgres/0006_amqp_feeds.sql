-- Messaging feed credentials (issue 21): one RabbitMQ vhost and user per client. The password is
-- never stored. `password_hash` is RabbitMQ's own salted SHA-256 form of it (what the broker
-- keeps anyway): with it a node can restore a user that drifted away and undo a broker change
-- whose store write failed, without ever holding the plaintext.
CREATE TABLE amqp_feeds (
    client_id     TEXT PRIMARY KEY REFERENCES clients (id),
    slug          TEXT NOT NULL UNIQUE,
    vhost         TEXT NOT NULL UNIQUE,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('active', 'revoked')),
    created_at    BIGINT NOT NULL,
    rotated_at    BIGINT,
    revoked_at    BIGINT,
    version       BIGINT NOT NULL  -- feed version of the last change to this row
);
CREATE INDEX amqp_feeds_version ON amqp_feeds (version);
