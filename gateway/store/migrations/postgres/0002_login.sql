-- Login state (PostgreSQL): second-factor flag on sessions, pending login attempts, failure counters.
-- Only adds: every row of 0001 is kept (existing sessions get mfa = false; no table rewrite).

ALTER TABLE sessions ADD COLUMN mfa boolean NOT NULL DEFAULT false;

-- A login between the redirect to the upstream and its callback; single use, deleted when consumed
-- or (opportunistically, by the expires_at index) once expired. Lengths mirror LOGIN_ATTEMPT_LIMITS.
CREATE TABLE login_attempts (
    attempt_hash  text        PRIMARY KEY CHECK (attempt_hash ~ '^[0-9a-f]{64}$'),
    upstream      text        NOT NULL CHECK (char_length(upstream) <= 128),
    state         text        NOT NULL CHECK (char_length(state) <= 512),
    nonce         text        NOT NULL CHECK (char_length(nonce) <= 512),
    code_verifier text        NOT NULL CHECK (char_length(code_verifier) <= 256),
    return_to     text        NOT NULL CHECK (char_length(return_to) <= 2048),
    client_addr   text        NOT NULL DEFAULT '' CHECK (char_length(client_addr) <= 256),
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL
);

CREATE INDEX login_attempts_expires_at ON login_attempts (expires_at);

-- Failed login callbacks per client address in the current window, and the lock they caused.
CREATE TABLE login_failures (
    client_addr       text        PRIMARY KEY CHECK (char_length(client_addr) BETWEEN 1 AND 256),
    failures          integer     NOT NULL CHECK (failures >= 1),
    window_started_at timestamptz NOT NULL,
    locked_until      timestamptz
);

CREATE INDEX login_failures_window_started_at ON login_failures (window_started_at);
