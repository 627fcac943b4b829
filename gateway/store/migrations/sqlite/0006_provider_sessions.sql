-- Provider sessions and logout token ids (SQLite), for OIDC Back-Channel Logout 1.0. Only adds tables, the
-- same as in PostgreSQL (where a table of its own spares the live `sessions` table an index build).
-- `provider_session` is SHA-256 hex of upstream || NUL || sid, never the sid itself; a row goes with its
-- session (ON DELETE CASCADE).
CREATE TABLE provider_sessions (
    token_hash       TEXT NOT NULL PRIMARY KEY REFERENCES sessions (token_hash) ON DELETE CASCADE,
    provider_session TEXT NOT NULL
                          CHECK (length(provider_session) = 64 AND provider_session NOT GLOB '*[^0-9a-f]*')
) WITHOUT ROWID;

CREATE INDEX provider_sessions_provider_session ON provider_sessions (provider_session);

-- Logout token ids (`jti`) already used, as SHA-256 hex of upstream || NUL || jti, until the token they
-- came with expires; expired rows are deleted opportunistically by the expires_at index.
CREATE TABLE logout_tokens (
    token_id_hash TEXT NOT NULL PRIMARY KEY
                       CHECK (length(token_id_hash) = 64 AND token_id_hash NOT GLOB '*[^0-9a-f]*'),
    expires_at    REAL NOT NULL
) WITHOUT ROWID;

CREATE INDEX logout_tokens_expires_at ON logout_tokens (expires_at);
