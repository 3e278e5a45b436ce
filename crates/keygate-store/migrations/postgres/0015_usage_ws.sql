-- WebSocket egress per client and UTC day, kept with usage (issue 22): messages and bytes the
-- gateway delivered to the client's sessions. The same in-memory counts feed the hourly
-- analytics_ws rows (with [analytics] on); these daily rows are written whether analytics is
-- on or not and are not pruned with analytics.
CREATE TABLE usage_ws (
    client_id TEXT NOT NULL,
    day       TEXT NOT NULL,
    messages  BIGINT NOT NULL,
    bytes     BIGINT NOT NULL,
    PRIMARY KEY (client_id, day)
);
