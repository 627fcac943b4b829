-- Sliding renewal with the upstream's refresh token (PostgreSQL). Adds two nullable columns and widens one
-- CHECK: no table rewrite, no index built on a live table.
--
-- `sessions.renewed_at`: when the upstream last vouched for the session again (a refresh), which moved its
-- `expires_at`; NULL for a session never renewed. The refresh comes due `session.refresh_interval` after it
-- (or after `created_at`).
-- `session_secrets` may now keep the upstream's refresh token (purpose `refresh_token`), sealed like the ID
-- token. `claimed_until` is the lease of the one process refreshing it: a refresh token is redeemed by
-- one replica at a time (a provider that rotates refresh tokens revokes the whole family when an old one
-- is replayed).
SET LOCAL lock_timeout = '5s';

ALTER TABLE sessions ADD COLUMN renewed_at timestamptz;

ALTER TABLE session_secrets ADD COLUMN claimed_until timestamptz;
ALTER TABLE session_secrets DROP CONSTRAINT session_secrets_purpose_check;
ALTER TABLE session_secrets ADD CONSTRAINT session_secrets_purpose_check
    CHECK (purpose IN ('id_token', 'refresh_token')) NOT VALID;
ALTER TABLE session_secrets VALIDATE CONSTRAINT session_secrets_purpose_check;

-- A revoked session's refresh token is of no further use and must not outlive it in the database: whatever
-- revokes the session (sign-out, an admin, a back-channel logout, a refusal at refresh) forgets it in the
-- same transaction. The ID token stays until sign-out takes it for the `id_token_hint`.
CREATE FUNCTION gateway_forget_refresh_token() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM session_secrets WHERE token_hash = NEW.token_hash AND purpose = 'refresh_token';
    RETURN NULL;
END
$$;

CREATE TRIGGER sessions_revoked_forget_refresh_token AFTER UPDATE OF revoked_at ON sessions
    FOR EACH ROW WHEN (OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL)
    EXECUTE FUNCTION gateway_forget_refresh_token();
