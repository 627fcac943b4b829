-- Login devices (SQLite): browsers someone signed in with, keyed by SHA-256 hex of their device cookie
-- (the cookie value itself is never stored). A browser presenting a live device cookie is exempt from
-- its address's login lockout; its own failures count against the device. Only adds a table.
-- A device goes with its user (ON DELETE CASCADE); expired rows are deleted opportunistically.
CREATE TABLE login_devices (
    device_hash TEXT    NOT NULL PRIMARY KEY
                        CHECK (length(device_hash) = 64 AND device_hash NOT GLOB '*[^0-9a-f]*'),
    user_id     INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  REAL    NOT NULL,
    expires_at  REAL    NOT NULL
) WITHOUT ROWID;

CREATE INDEX login_devices_user_id ON login_devices (user_id);
CREATE INDEX login_devices_expires_at ON login_devices (expires_at);
