-- When each key last authenticated, in milliseconds since the epoch (NULL: never). Telemetry,
-- written coarsely (about once a minute per key in use) by each gateway's usage flush; it
-- carries no feed version, because no node's decision depends on it.
ALTER TABLE keys ADD COLUMN last_used_at INTEGER;
