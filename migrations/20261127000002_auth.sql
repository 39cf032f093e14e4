-- Auth: users, sessions, signing keys, service keys, sign-in limits.

CREATE TABLE users (
    id               uuid PRIMARY KEY,
    email            text NOT NULL,
    email_verified_at timestamptz,
    password_hash    text,
    name             text,
    image_url        text,
    public_metadata  jsonb NOT NULL DEFAULT '{}'::jsonb,
    private_metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
    unsafe_metadata  jsonb NOT NULL DEFAULT '{}'::jsonb,
    external_id      text,               -- `sub` from an external issuer (Clerk)
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));
CREATE UNIQUE INDEX users_external_id_key ON users (external_id) WHERE external_id IS NOT NULL;

CREATE TABLE sessions (
    id             uuid PRIMARY KEY,
    user_id        uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash     bytea NOT NULL UNIQUE,
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_active_at timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    ip             text,
    user_agent     text,
    revoked_at     timestamptz
);
CREATE INDEX sessions_user_idx ON sessions (user_id, created_at DESC);

-- JWT signing keys; the private key is encrypted with the keyring (AAD = kid).
CREATE TABLE auth_signing_keys (
    kid          text PRIMARY KEY,
    alg          text NOT NULL,
    private_key  bytea NOT NULL,
    public_jwk   jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    retired_at   timestamptz
);

CREATE TABLE service_keys (
    id           uuid PRIMARY KEY,
    name         text NOT NULL,
    key_hash     bytea NOT NULL UNIQUE,
    prefix       text NOT NULL,
    scope        text NOT NULL CHECK (scope IN ('read', 'full')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);

-- Fixed-window counters shared by replicas (per-IP sign-in attempts and the like).
CREATE TABLE auth_rate_windows (
    bucket       text NOT NULL,
    window_start timestamptz NOT NULL,
    count        integer NOT NULL,
    PRIMARY KEY (bucket, window_start)
);

-- Failed sign-ins per account key (a hash of the normalised email, whether or not
-- a user has it, so lockout does not reveal which emails exist).
CREATE TABLE auth_lockouts (
    account_key   bytea PRIMARY KEY,
    failures      integer NOT NULL DEFAULT 0,
    locked_until  timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE audit_log ADD CONSTRAINT audit_log_on_behalf_of_fkey
    FOREIGN KEY (on_behalf_of) REFERENCES users (id) ON DELETE SET NULL;
