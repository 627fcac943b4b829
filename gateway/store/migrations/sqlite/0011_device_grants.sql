-- Device codes (SQLite) for the OAuth 2.0 Device Authorization Grant (RFC 8628), as in PostgreSQL: only adds
-- a table, depending on nothing after 0009. Only SHA-256 hex hashes of the device and user codes are stored;
-- `user_id` is who approved or denied (the grant goes with them), `approver_hash` the hash of the browser
-- session that did, which must still be active when the CLI claims its token.
CREATE TABLE device_grants (
    device_hash    TEXT NOT NULL PRIMARY KEY
                        CHECK (length(device_hash) = 64 AND device_hash NOT GLOB '*[^0-9a-f]*'),
    user_code_hash TEXT NOT NULL UNIQUE
                        CHECK (length(user_code_hash) = 64 AND user_code_hash NOT GLOB '*[^0-9a-f]*'),
    client_id      TEXT NOT NULL CHECK (length(client_id) BETWEEN 1 AND 64 AND client_id NOT GLOB '*[^ -~]*'),
    client_addr    TEXT NOT NULL DEFAULT '' CHECK (length(client_addr) <= 256),
    created_at     REAL NOT NULL,
    expires_at     REAL NOT NULL CHECK (expires_at > created_at),
    interval_s     REAL NOT NULL CHECK (interval_s >= 1),
    last_polled_at REAL,
    status         TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'approved', 'denied', 'claimed')),
    user_id        INTEGER REFERENCES users (id) ON DELETE CASCADE,
    approver_hash  TEXT CHECK (length(approver_hash) = 64 AND approver_hash NOT GLOB '*[^0-9a-f]*'),
    decided_at     REAL,
    CHECK ((status = 'pending') = (user_id IS NULL AND decided_at IS NULL))
) WITHOUT ROWID;

CREATE INDEX device_grants_expires_at ON device_grants (expires_at);
CREATE INDEX device_grants_user_id ON device_grants (user_id) WHERE user_id IS NOT NULL;
