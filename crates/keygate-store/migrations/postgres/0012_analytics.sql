-- Analytics (issue 23): hourly counts added by each gateway's usage flush, like `usage` but
-- finer. `hour` is whole hours since the Unix epoch (UTC). Ids only: a key appears as its id
-- (`''` for a request without one), never its plaintext or digest; `route` is the route's
-- configured name (`''` for a request that matched no route). Every count is added with
-- `ON CONFLICT ... DO UPDATE SET n = n + excluded.n`, so flushes from several nodes add up.
CREATE TABLE analytics_requests (
    hour      BIGINT NOT NULL,
    client_id TEXT NOT NULL,
    key_id    TEXT NOT NULL,
    route     TEXT NOT NULL,
    status    BIGINT NOT NULL,
    requests  BIGINT NOT NULL,
    PRIMARY KEY (hour, client_id, key_id, route, status)
);
CREATE INDEX analytics_requests_client ON analytics_requests (client_id, hour);

-- Upstream latency (request sent to response head) per hour, route and upstream: a histogram
-- with fixed bounds (keygate_store::LATENCY_BOUNDS_MS; b13 is +Inf), each bucket counted
-- alone (not cumulative), plus the count and the sum in microseconds.
CREATE TABLE analytics_latency (
    hour     BIGINT NOT NULL,
    route    TEXT NOT NULL,
    upstream TEXT NOT NULL,
    count    BIGINT NOT NULL,
    sum_us   BIGINT NOT NULL,
    b0 BIGINT NOT NULL, b1 BIGINT NOT NULL, b2 BIGINT NOT NULL, b3 BIGINT NOT NULL,
    b4 BIGINT NOT NULL, b5 BIGINT NOT NULL, b6 BIGINT NOT NULL, b7 BIGINT NOT NULL,
    b8 BIGINT NOT NULL, b9 BIGINT NOT NULL, b10 BIGINT NOT NULL, b11 BIGINT NOT NULL,
    b12 BIGINT NOT NULL, b13 BIGINT NOT NULL,
    PRIMARY KEY (hour, route, upstream)
);

-- WebSocket sessions opened, and messages and bytes delivered to the client, per hour and client.
CREATE TABLE analytics_ws (
    hour      BIGINT NOT NULL,
    client_id TEXT NOT NULL,
    sessions  BIGINT NOT NULL,
    messages  BIGINT NOT NULL,
    bytes     BIGINT NOT NULL,
    PRIMARY KEY (hour, client_id)
);

-- Who prunes next (one row): a node claims the prune with one conditional UPDATE
-- (`next_at <= now`), atomic on both backends, so one node deletes per period.
CREATE TABLE analytics_prune (
    id      BIGINT PRIMARY KEY CHECK (id = 1),
    holder  TEXT NOT NULL,
    next_at BIGINT NOT NULL
);
INSERT INTO analytics_prune (id, holder, next_at) VALUES (1, '', 0);
