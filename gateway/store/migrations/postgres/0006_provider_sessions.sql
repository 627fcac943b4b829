-- Provider sessions and logout token ids (PostgreSQL), for OIDC Back-Channel Logout 1.0. Only adds tables.
--
-- Which provider session (the ID token's `sid`) each browser session began in lives in a table of its own
-- rather than in a new `sessions` column: the migration runner applies a script in one transaction, where
-- CREATE INDEX CONCURRENTLY is impossible, and a plain CREATE INDEX on `sessions` would hold writes to the
-- live table (and, after an ADD COLUMN in the same transaction, reads too) for as long as the index
-- takes to build. Here the only lock on `sessions` is the brief one the foreign key takes on an empty table.
-- `provider_session` is SHA-256 hex of upstream || NUL || sid, never the sid itself. A row goes with its
-- session (ON DELETE CASCADE).
SET LOCAL lock_timeout = '5s';

CREATE TABLE provider_sessions (
    token_hash       text PRIMARY KEY REFERENCES sessions (token_hash) ON DELETE CASCADE,
    provider_session text NOT NULL CHECK (provider_session ~ '^[0-9a-f]{64}$')
);

CREATE INDEX provider_sessions_provider_session ON provider_sessions (provider_session);

-- Logout token ids (`jti`) already used, as SHA-256 hex of upstream || NUL || jti, until the token they
-- came with expires; expired rows are deleted opportunistically by the expires_at index.
CREATE TABLE logout_tokens (
    token_id_hash text        PRIMARY KEY CHECK (token_id_hash ~ '^[0-9a-f]{64}$'),
    expires_at    timestamptz NOT NULL
);

CREATE INDEX logout_tokens_expires_at ON logout_tokens (expires_at);
