-- Self-service: a client may belong to a parent account (its "portfolio bots"), and carries
-- profile fields its owner edits (JSON object of strings: wallet address, email, ...).
ALTER TABLE clients ADD COLUMN parent_id TEXT REFERENCES clients (id);
ALTER TABLE clients ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}';
CREATE INDEX clients_parent ON clients (parent_id);
