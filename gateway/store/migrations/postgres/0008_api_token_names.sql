-- Names of API tokens (PostgreSQL), for tokens people mint for themselves at /tokens. Only adds a table.
--
-- A table of its own rather than a `sessions` column, as for 0006: the migration runs in one transaction,
-- where no index can be built concurrently, and `sessions` is the hot table. The only lock taken on
-- `sessions` is the brief one the foreign key needs. A row goes with its session (ON DELETE CASCADE); a
-- token minted with `gateway tokens mint` has no row and is shown unnamed.
SET LOCAL lock_timeout = '5s';

CREATE TABLE api_token_names (
    token_hash text PRIMARY KEY REFERENCES sessions (token_hash) ON DELETE CASCADE,
    name       text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100)
);
