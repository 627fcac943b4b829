-- Device codes (PostgreSQL) for the OAuth 2.0 Device Authorization Grant (RFC 8628): a CLI asks for one at
-- /auth/device/code, its person approves it at /device, the CLI polls /auth/device/token for its API token.
-- Only adds a table; it depends on nothing after 0009, so it applies whether or not 0010 came first.
--
-- Only SHA-256 hex hashes of the device code and of the user code are stored. `user_id` is who approved or
-- denied (the grant goes with them: ON DELETE CASCADE); `approver_hash` is the hash of the browser session
-- that did, which must still be active when the CLI claims its token. The foreign key to `users` takes a
-- brief lock on it; `sessions` (the hot table) is not referenced, so it is not locked at all.
SET LOCAL lock_timeout = '5s';

CREATE TABLE device_grants (
    device_hash    text PRIMARY KEY CHECK (device_hash ~ '^[0-9a-f]{64}$'),
    user_code_hash text NOT NULL UNIQUE CHECK (user_code_hash ~ '^[0-9a-f]{64}$'),
    client_id      text NOT NULL CHECK (client_id ~ '^[\x20-\x7e]{1,64}$'),
    client_addr    text NOT NULL DEFAULT '' CHECK (char_length(client_addr) <= 256),
    created_at     timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL CHECK (expires_at > created_at),
    interval_s     double precision NOT NULL CHECK (interval_s >= 1),
    last_polled_at timestamptz,
    status         text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'approved', 'denied', 'claimed')),
    user_id        bigint REFERENCES users (id) ON DELETE CASCADE,
    approver_hash  text CHECK (approver_hash ~ '^[0-9a-f]{64}$'),
    decided_at     timestamptz,
    CHECK ((status = 'pending') = (user_id IS NULL AND decided_at IS NULL))
);

CREATE INDEX device_grants_expires_at ON device_grants (expires_at);
CREATE INDEX device_grants_user_id ON device_grants (user_id) WHERE user_id IS NOT NULL;
