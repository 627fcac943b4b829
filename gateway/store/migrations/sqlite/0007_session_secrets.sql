-- Sealed secrets a session keeps for later calls to its upstream (SQLite). Only adds a table, as in
-- PostgreSQL.
--
-- Today one purpose: the ID token, sent back as `id_token_hint` when the user signs out (RP-initiated
-- logout). `sealed` is AES-256-GCM under a key that lives only in the configuration (gateway/sealing.py),
-- bound to its session's token hash and purpose, so a copy of this file yields nothing usable. A row goes
-- with its session (ON DELETE CASCADE, found through the primary key's leading column).
CREATE TABLE session_secrets (
    token_hash TEXT NOT NULL REFERENCES sessions (token_hash) ON DELETE CASCADE,
    purpose    TEXT NOT NULL CHECK (purpose IN ('id_token')),
    sealed     TEXT NOT NULL CHECK (length(sealed) BETWEEN 1 AND 32768),
    PRIMARY KEY (token_hash, purpose)
) WITHOUT ROWID;
