-- Blocked identities (PostgreSQL): who an admin removed or barred. A blocked identity cannot sign in, use
-- a bearer JWT or be given a token until the block is lifted. Only adds a table.
--
-- A row blocks one identity (upstream and subject, exactly as users are keyed; email '') or every
-- identity presenting an email (upstream and subject ''; email trimmed and lower-cased by the gateway).
-- Lengths mirror BLOCK_LIMITS. The primary key serves both lookups the sign-in path makes.
CREATE TABLE blocked_subjects (
    upstream   text        NOT NULL CHECK (char_length(upstream) <= 256),
    subject    text        NOT NULL CHECK (char_length(subject) <= 1024),
    email      text        NOT NULL CHECK (char_length(email) <= 512),
    created_at timestamptz NOT NULL,
    actor      text        NOT NULL DEFAULT '',
    reason     text        NOT NULL DEFAULT '' CHECK (char_length(reason) <= 512),
    PRIMARY KEY (upstream, subject, email),
    CHECK ((upstream <> '' AND subject <> '' AND email = '') OR (upstream = '' AND subject = '' AND email <> ''))
);
