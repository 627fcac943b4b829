-- Blocked identities (SQLite): who an admin removed or barred. A blocked identity cannot sign in, use a
-- bearer JWT or be given a token until the block is lifted. Only adds a table.
--
-- A row blocks one identity (upstream and subject, exactly as users are keyed; email '') or every
-- identity presenting an email (upstream and subject ''; email trimmed and lower-cased by the gateway).
-- Lengths mirror BLOCK_LIMITS. The primary key serves both lookups the sign-in path makes.
CREATE TABLE blocked_subjects (
    upstream   TEXT NOT NULL CHECK (length(upstream) <= 256),
    subject    TEXT NOT NULL CHECK (length(subject) <= 1024),
    email      TEXT NOT NULL CHECK (length(email) <= 512),
    created_at REAL NOT NULL,
    actor      TEXT NOT NULL DEFAULT '',
    reason     TEXT NOT NULL DEFAULT '' CHECK (length(reason) <= 512),
    PRIMARY KEY (upstream, subject, email),
    CHECK ((upstream <> '' AND subject <> '' AND email = '') OR (upstream = '' AND subject = '' AND email <> ''))
) WITHOUT ROWID;
