-- Sliding renewal with the upstream's refresh token (SQLite): the same schema as PostgreSQL's 0010.
--
-- `sessions.renewed_at`: when the upstream last vouched for the session again (NULL: never renewed).
-- `session_secrets` may now keep the refresh token (purpose `refresh_token`), with `claimed_until`, the
-- lease of the one refresh in progress. SQLite cannot change a CHECK in place, so the (small) table is
-- copied into its new shape.
ALTER TABLE sessions ADD COLUMN renewed_at REAL;

CREATE TABLE session_secrets_0010 (
    token_hash    TEXT NOT NULL REFERENCES sessions (token_hash) ON DELETE CASCADE,
    purpose       TEXT NOT NULL CHECK (purpose IN ('id_token', 'refresh_token')),
    sealed        TEXT NOT NULL CHECK (length(sealed) BETWEEN 1 AND 32768),
    claimed_until REAL,
    PRIMARY KEY (token_hash, purpose)
) WITHOUT ROWID;
INSERT INTO session_secrets_0010 (token_hash, purpose, sealed) SELECT token_hash, purpose, sealed FROM session_secrets;
DROP TABLE session_secrets;
ALTER TABLE session_secrets_0010 RENAME TO session_secrets;

-- A revoked session's refresh token must not outlive it in the file: whatever revokes the session forgets
-- it in the same transaction (as in PostgreSQL). The ID token stays until sign-out takes it.
CREATE TRIGGER sessions_revoked_forget_refresh_token AFTER UPDATE OF revoked_at ON sessions
    FOR EACH ROW WHEN OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL
BEGIN
    DELETE FROM session_secrets WHERE token_hash = NEW.token_hash AND purpose = 'refresh_token';
END;
