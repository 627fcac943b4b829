-- Initial schema (SQLite). Times are REAL Unix epoch seconds; groups, roles and detail are JSON text.

-- AUTOINCREMENT: a deleted user's id is never handed to someone else (audit rows keep user ids).
CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    upstream      TEXT    NOT NULL,
    subject       TEXT    NOT NULL,
    email         TEXT    NOT NULL DEFAULT '',
    name          TEXT    NOT NULL DEFAULT '',
    username      TEXT    NOT NULL DEFAULT '',
    groups        TEXT    NOT NULL DEFAULT '[]',
    roles         TEXT    NOT NULL DEFAULT '[]',
    created_at    REAL    NOT NULL,
    updated_at    REAL    NOT NULL,
    last_login_at REAL,
    UNIQUE (upstream, subject)
);

CREATE INDEX users_email_lower ON users (lower(email));

CREATE TABLE sessions (
    token_hash      TEXT    NOT NULL PRIMARY KEY
                            CHECK (length(token_hash) = 64 AND token_hash NOT GLOB '*[^0-9a-f]*'),
    user_id         INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind            TEXT    NOT NULL CHECK (kind IN ('browser', 'api')),
    created_at      REAL    NOT NULL,
    expires_at      REAL    NOT NULL,
    idle_timeout    REAL    NOT NULL DEFAULT 0 CHECK (idle_timeout >= 0),
    last_seen_at    REAL    NOT NULL,
    idle_expires_at REAL,
    revoked_at      REAL,
    client_addr     TEXT    NOT NULL DEFAULT '',
    user_agent      TEXT    NOT NULL DEFAULT ''
) WITHOUT ROWID;

CREATE INDEX sessions_user_id ON sessions (user_id);
CREATE INDEX sessions_unrevoked_expires_at ON sessions (expires_at) WHERE revoked_at IS NULL;

-- No foreign key on user_id: audit rows outlive the user they describe.
CREATE TABLE audit (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       REAL    NOT NULL,
    event    TEXT    NOT NULL,
    user_id  INTEGER,
    user_key TEXT    NOT NULL DEFAULT '',
    actor    TEXT    NOT NULL DEFAULT '',
    detail   TEXT    NOT NULL DEFAULT '{}'
);

CREATE INDEX audit_user_id ON audit (user_id, id);

-- The cross-process revocation feed: written in the revoking transaction, polled by every watcher,
-- pruned after a few minutes. AUTOINCREMENT keeps ids increasing even after pruning.
CREATE TABLE revocations (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash TEXT,
    user_id    INTEGER,
    at         REAL    NOT NULL
);

CREATE INDEX revocations_at ON revocations (at);
