-- Webhooks (issue 23): a durable outbox. An event is written in the same transaction as the
-- change that causes it (or by the node that notices it: a key about to expire, a quota
-- crossed), so no committed change goes unannounced and no rolled-back one is announced.
-- `dedupe` makes an event that several nodes may notice (one per key and expiry) exist once.
-- The body never holds a secret: ids, names, hints and labels only.
CREATE TABLE webhook_events (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    type       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    body       TEXT NOT NULL,  -- the exact JSON every delivery of it sends
    dedupe     TEXT UNIQUE,
    -- 0 until a node has made its deliveries (one per webhook whose filter takes it).
    fanned_out BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX webhook_events_unfanned ON webhook_events (fanned_out, seq);

-- One row per (event, webhook). A node claims due rows by setting `claimed_until` in one
-- conditional UPDATE, so two nodes never deliver the same row at once.
CREATE TABLE webhook_deliveries (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id      TEXT NOT NULL REFERENCES webhook_events (id),
    webhook       TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts      BIGINT NOT NULL DEFAULT 0,
    next_at       BIGINT NOT NULL,
    claimed_by    TEXT,
    claimed_until BIGINT NOT NULL DEFAULT 0,
    last_status   BIGINT,
    last_error    TEXT,
    created_at    BIGINT NOT NULL,
    delivered_at  BIGINT,
    UNIQUE (event_id, webhook)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_at);
