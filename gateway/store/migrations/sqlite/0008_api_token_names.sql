-- Names of API tokens (SQLite), for tokens people mint for themselves at /tokens. Only adds a table, the
-- same as in PostgreSQL (where a table of its own spares the live `sessions` table a rewrite). A row goes
-- with its session (ON DELETE CASCADE); a token minted with `gateway tokens mint` has no row.
CREATE TABLE api_token_names (
    token_hash TEXT NOT NULL PRIMARY KEY REFERENCES sessions (token_hash) ON DELETE CASCADE,
    name       TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 100)
) WITHOUT ROWID;
