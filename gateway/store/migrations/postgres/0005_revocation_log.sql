-- The revocation log (PostgreSQL): every revocation, appended in the transaction that makes it, with a
-- sequence number every replica reconciles its cache against (reading the rows past the last one it saw),
-- so a NOTIFY that never arrives cannot keep a revoked token alive. Writers append under an advisory lock
-- as their last statement, so sequence numbers become visible in order. Rows older than the longest time
-- a cache may serve a session are deleted by the writers. Only adds a table.
CREATE TABLE revocations (
    seq        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_hash text        CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    user_id    bigint,
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT revocations_one_subject CHECK ((token_hash IS NULL) <> (user_id IS NULL))
);

CREATE INDEX revocations_at ON revocations (at);
