-- Initial schema (PostgreSQL). Times are timestamptz; groups, roles and detail are jsonb.

CREATE TABLE users (
    id            bigserial   PRIMARY KEY,
    upstream      text        NOT NULL,
    subject       text        NOT NULL,
    email         text        NOT NULL DEFAULT '',
    name          text        NOT NULL DEFAULT '',
    username      text        NOT NULL DEFAULT '',
    groups        jsonb       NOT NULL DEFAULT '[]',
    roles         jsonb       NOT NULL DEFAULT '[]',
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    last_login_at timestamptz,
    CONSTRAINT users_upstream_subject_key UNIQUE (upstream, subject)
);

CREATE INDEX users_email_lower ON users (lower(email));

CREATE TABLE sessions (
    token_hash      text             PRIMARY KEY CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    user_id         bigint           NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind            text             NOT NULL CHECK (kind IN ('browser', 'api')),
    created_at      timestamptz      NOT NULL,
    expires_at      timestamptz      NOT NULL,
    idle_timeout    double precision NOT NULL DEFAULT 0 CHECK (idle_timeout >= 0),
    last_seen_at    timestamptz      NOT NULL,
    idle_expires_at timestamptz,
    revoked_at      timestamptz,
    client_addr     text             NOT NULL DEFAULT '',
    user_agent      text             NOT NULL DEFAULT ''
);

CREATE INDEX sessions_user_id ON sessions (user_id);
CREATE INDEX sessions_unrevoked_expires_at ON sessions (expires_at) WHERE revoked_at IS NULL;

-- No foreign key on user_id: audit rows outlive the user they describe.
CREATE TABLE audit (
    id       bigserial   PRIMARY KEY,
    at       timestamptz NOT NULL,
    event    text        NOT NULL,
    user_id  bigint,
    user_key text        NOT NULL DEFAULT '',
    actor    text        NOT NULL DEFAULT '',
    detail   jsonb       NOT NULL DEFAULT '{}'
);

CREATE INDEX audit_user_id ON audit (user_id, id);
