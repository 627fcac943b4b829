-- Login state (SQLite): second-factor flag on sessions, pending login attempts, failure counters.
-- Only adds: every row of 0001 is kept (existing sessions get mfa = 0).

ALTER TABLE sessions ADD COLUMN mfa BOOLEAN NOT NULL DEFAULT 0 CHECK (mfa IN (0, 1));

-- A login between the redirect to the upstream and its callback; single use, deleted when consumed
-- or (opportunistically, by the expires_at index) once expired. Lengths mirror LOGIN_ATTEMPT_LIMITS.
CREATE TABLE login_attempts (
    attempt_hash  TEXT NOT NULL PRIMARY KEY
                       CHECK (length(attempt_hash) = 64 AND attempt_hash NOT GLOB '*[^0-9a-f]*'),
    upstream      TEXT NOT NULL CHECK (length(upstream) <= 128),
    state         TEXT NOT NULL CHECK (length(state) <= 512),
    nonce         TEXT NOT NULL CHECK (length(nonce) <= 512),
    code_verifier TEXT NOT NULL CHECK (length(code_verifier) <= 256),
    return_to     TEXT NOT NULL CHECK (length(return_to) <= 2048),
    client_addr   TEXT NOT NULL DEFAULT '' CHECK (length(client_addr) <= 256),
    created_at    REAL NOT NULL,
    expires_at    REAL NOT NULL
) WITHOUT ROWID;

CREATE INDEX login_attempts_expires_at ON login_attempts (expires_at);

-- Failed login callbacks per client address in the current window, and the lock they caused.
CREATE TABLE login_failures (
    client_addr       TEXT    NOT NULL PRIMARY KEY CHECK (length(client_addr) BETWEEN 1 AND 256),
    failures          INTEGER NOT NULL CHECK (failures >= 1),
    window_started_at REAL    NOT NULL,
    locked_until      REAL
) WITHOUT ROWID;

CREATE INDEX login_failures_window_started_at ON login_failures (window_started_at);
