-- One revocation for everything (PostgreSQL): `gateway sessions revoke-all` logs a single row with neither a
-- token hash nor a user, which every replica reads as "forget every cached session". 0005's CHECK demanded
-- exactly one of the two; now it is at most one.
--
-- Safe on a live table: `revocations` holds only the last minutes of revocations (writers prune it), so
-- the brief ACCESS EXCLUSIVE lock and the validating scan take milliseconds; lock_timeout keeps the
-- migration from queueing writers behind it for long if a long transaction holds the table. Every
-- existing row already satisfies the looser check. A replica still on the old code reads the new row as a
-- revocation of nothing (and ignores its NOTIFY as malformed): its cache then lives out its TTL, while the
-- sessions themselves are revoked in the database for every replica.
SET LOCAL lock_timeout = '5s';

ALTER TABLE revocations
    DROP CONSTRAINT revocations_one_subject,
    ADD CONSTRAINT revocations_at_most_one_subject CHECK (token_hash IS NULL OR user_id IS NULL) NOT VALID;

ALTER TABLE revocations VALIDATE CONSTRAINT revocations_at_most_one_subject;
