-- Client deletion: the row stays (its keys, feed and audit history refer to it) but is hidden
-- from every lookup and listing once `deleted_at` is set; its name stays taken, so a new client
-- can never be mistaken for the deleted one in the audit log or by a returning customer.
ALTER TABLE clients ADD COLUMN deleted_at INTEGER;

-- The node that acts on the broker for change-feed events (one row): taken when empty or
-- expired, renewed by its holder, so exactly one node makes each broker call and audit row.
CREATE TABLE amqp_lease (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    holder     TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
INSERT INTO amqp_lease (id, holder, expires_at) VALUES (1, '', 0);
