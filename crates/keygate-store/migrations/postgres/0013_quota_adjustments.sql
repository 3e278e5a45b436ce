-- Quota top-ups and resets (issue 22): an operator's change to one client's current quota
-- window. `topup` raises that window's allowance above the plan's; `resets` counts resets,
-- and every node counts the window in a fresh counter per reset (the limiters' epoch), so a
-- reset zeroes the count everywhere without deleting a counter a request may be writing.
-- A row matters until `window_end`; every node reads the live ones whenever the feed
-- version moves. Rows are kept as the record (the audit log has who and when).
CREATE TABLE quota_adjustments (
    client_id    TEXT NOT NULL REFERENCES clients (id),
    window_kind  TEXT NOT NULL CHECK (window_kind IN ('hour', 'day', 'month')),
    window_start BIGINT NOT NULL,
    window_end   BIGINT NOT NULL,
    topup        BIGINT NOT NULL DEFAULT 0,
    resets       BIGINT NOT NULL DEFAULT 0,
    updated_at   BIGINT NOT NULL,
    version      BIGINT NOT NULL,
    PRIMARY KEY (client_id, window_kind, window_start)
);
CREATE INDEX quota_adjustments_end ON quota_adjustments (window_end);
