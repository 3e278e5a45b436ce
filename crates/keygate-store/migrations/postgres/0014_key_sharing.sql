-- Key-sharing detection: one row per key and UTC hour in which the key was seen from
-- `[plans.NAME.sharing] networks_per_hour` source networks or more. The primary key makes the
-- record idempotent: nodes crossing the threshold together insert one row, one audit entry.
CREATE TABLE key_sharing (
    key_id     TEXT NOT NULL REFERENCES keys (id),
    hour       BIGINT NOT NULL,
    client_id  TEXT NOT NULL,
    networks   BIGINT NOT NULL,
    action     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (key_id, hour)
);
CREATE INDEX key_sharing_created ON key_sharing (created_at);
