-- Sealed secrets a session keeps for later calls to its upstream (PostgreSQL). Only adds a table.
--
-- Today one purpose: the ID token, sent back as `id_token_hint` when the user signs out (RP-initiated
-- logout). `sealed` is AES-256-GCM under a key that lives only in the configuration (gateway/sealing.py),
-- bound to its session's token hash and purpose, so a dump of this table yields nothing usable. A row goes
-- with its session (ON DELETE CASCADE, found through the primary key's leading column). The only lock on
-- `sessions` is the brief one the foreign key takes; no index is built on a live table.
SET LOCAL lock_timeout = '5s';

CREATE TABLE session_secrets (
    token_hash text NOT NULL REFERENCES sessions (token_hash) ON DELETE CASCADE,
    purpose    text NOT NULL CHECK (purpose IN ('id_token')),
    sealed     text NOT NULL CHECK (length(sealed) BETWEEN 1 AND 32768),
    PRIMARY KEY (token_hash, purpose)
);
