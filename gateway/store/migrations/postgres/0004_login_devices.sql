-- Login devices (PostgreSQL): browsers someone signed in with, keyed by SHA-256 hex of their device cookie
-- (the cookie value itself is never stored). A browser presenting a live device cookie is exempt from
-- its address's login lockout; its own failures count against the device. Only adds a table.
-- A device goes with its user (ON DELETE CASCADE); expired rows are deleted opportunistically.
CREATE TABLE login_devices (
    device_hash text        PRIMARY KEY CHECK (device_hash ~ '^[0-9a-f]{64}$'),
    user_id     bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);

CREATE INDEX login_devices_user_id ON login_devices (user_id);
CREATE INDEX login_devices_expires_at ON login_devices (expires_at);
