-- Per-key restrictions (issue 22). `restrictions` is a JSON object (narrowed scopes, CIDR
-- allowlist, metadata), NULL for the many keys that have none, so the replica's load reads
-- nothing more for them. `external_id` is the operator's own id for a key, unique among one
-- client's keys that are not revoked (a revoked key gives its id back; another client may use
-- the same id), and indexed for `GET /v1/keys?external_id=`.
ALTER TABLE keys ADD COLUMN restrictions TEXT;
ALTER TABLE keys ADD COLUMN external_id TEXT;
CREATE UNIQUE INDEX keys_external_id ON keys (client_id, external_id)
    WHERE external_id IS NOT NULL AND state <> 'revoked';
CREATE INDEX keys_external_id_lookup ON keys (external_id) WHERE external_id IS NOT NULL;
