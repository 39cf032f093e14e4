-- The admin console: who is an admin, their own short-lived sessions, one-time
-- sign-in links, saved SQL queries with every version kept, bans and impersonation.

CREATE TABLE admins (
    user_id     uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text NOT NULL            -- 'cli' or 'admin:<id>'
);

-- Admin sessions are separate from user sessions: their own cookie, an idle
-- timeout, an absolute lifetime, and a CSRF token per session.
CREATE TABLE admin_sessions (
    id             uuid PRIMARY KEY,
    user_id        uuid NOT NULL REFERENCES admins (user_id) ON DELETE CASCADE,
    token_hash     bytea NOT NULL UNIQUE,
    csrf_token     text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_active_at timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    ip             text,
    revoked_at     timestamptz
);
CREATE INDEX admin_sessions_user_idx ON admin_sessions (user_id);

-- One-time sign-in links printed by `carmenta admin create`.
CREATE TABLE admin_sign_in_tokens (
    token_hash  bytea PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES admins (user_id) ON DELETE CASCADE,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);

-- Saved SQL queries: a save names the version it edits; a stale version is a
-- conflict, never a silent overwrite; every version is kept.
CREATE TABLE admin_queries (
    id          uuid PRIMARY KEY,
    admin_id    uuid NOT NULL REFERENCES admins (user_id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    sql         text NOT NULL,
    version     integer NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE UNIQUE INDEX admin_queries_name_key ON admin_queries (admin_id, lower(name)) WHERE deleted_at IS NULL;

CREATE TABLE admin_query_versions (
    query_id    uuid NOT NULL REFERENCES admin_queries (id) ON DELETE CASCADE,
    version     integer NOT NULL,
    sql         text NOT NULL,
    saved_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (query_id, version)
);

ALTER TABLE users ADD COLUMN banned_at timestamptz;
-- A session an admin opened as the user (impersonation): the admin's user id.
ALTER TABLE sessions ADD COLUMN impersonator_id uuid REFERENCES users (id) ON DELETE CASCADE;

CREATE INDEX audit_log_actor_idx ON audit_log (actor, at DESC);

-- Memories corrected by an operator in the console say so in their history and provenance.
ALTER TABLE memory_history DROP CONSTRAINT memory_history_actor_check;
ALTER TABLE memory_history ADD CONSTRAINT memory_history_actor_check
    CHECK (actor IN ('user', 'app', 'extractor', 'admin'));
ALTER TABLE memories DROP CONSTRAINT memories_source_check;
ALTER TABLE memories ADD CONSTRAINT memories_source_check CHECK (source IN ('conversation', 'api', 'user', 'admin'));

-- The console lists users newest first (and the table browser sorts by creation).
CREATE INDEX users_created_idx ON users (created_at, id);
