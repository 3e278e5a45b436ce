-- Analytics (issue 23): hourly counts added by each gateway's usage flush, like `usage` but
-- finer. `hour` is whole hours since the Unix epoch (UTC). Ids only: a key appears as its id
-- (`''` for a request without one), never its plaintext or digest; `route` is the route's
-- configured name (`''` for a request that matched no route). Every count is added with
-- `ON CONFLICT ... DO UPDATE SET n = n + excluded.n`, so flushes from several nodes add up.
CREATE TABLE analytics_requests (
    hour      INTEGER NOT NULL,
    client_id TEXT NOT NULL,
    key_id    TEXT NOT NULL,
    route     TEXT NOT NULL,
    status    INTEGER NOT NULL,
    requests  INTEGER NOT NULL,
    PRIMARY KEY (hour, client_id, key_id, route, status)
);
CREATE INDEX analytics_requests_client ON analytics_requests (client_id, hour);

-- Upstream latency (request sent to response head) per hour, route and upstream: a histogram
-- with fixed bounds (keygate_store::LATENCY_BOUNDS_MS; b13 is +Inf), each bucket counted
-- alone (not cumulative), plus the count and the sum in microseconds.
CREATE TABLE analytics_latency (
    hour     INTEGER NOT NULL,
    route    TEXT NOT NULL,
    upstream TEXT NOT NULL,
    count    INTEGER NOT NULL,
    sum_us   INTEGER NOT NULL,
    b0 INTEGER NOT NULL, b1 INTEGER NOT NULL, b2 INTEGER NOT NULL, b3 INTEGER NOT NULL,
    b4 INTEGER NOT NULL, b5 INTEGER NOT NULL, b6 INTEGER NOT NULL, b7 INTEGER NOT NULL,
    b8 INTEGER NOT NULL, b9 INTEGER NOT NULL, b10 INTEGER NOT NULL, b11 INTEGER NOT NULL,
    b12 INTEGER NOT NULL, b13 INTEGER NOT NULL,
    PRIMARY KEY (hour, route, upstream)
);

-- WebSocket sessions opened, and messages and bytes delivered to the client, per hour and client.
CREATE TABLE analytics_ws (
    hour      INTEGER NOT NULL,
    client_id TEXT NOT NULL,
    sessions  INTEGER NOT NULL,
    messages  INTEGER NOT NULL,
    bytes     INTEGER NOT NULL,
    PRIMARY KEY (hour, client_id)
);

-- Who prunes next (one row): a node claims the prune with one conditional UPDATE
-- (`next_at <= now`), atomic on both backends, so one node deletes per period.
CREATE TABLE analytics_prune (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    holder  TEXT NOT NULL,
    next_at INTEGER NOT NULL
);
INSERT INTO analytics_prune (id, holder, next_at) VALUES (1, '', 0);
