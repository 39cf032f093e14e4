-- Second factors (TOTP, backup codes), the pending second-factor step of a
-- sign-in, social identities and their sign-in flows, and how each session
-- was authenticated.

-- RFC 8176 method references of the session's sign-in (`pwd`, `otp`, …), its
-- assurance level (1: one factor; 2: two), and when the user last proved who
-- they are in it (sign-in or re-authentication; disabling a factor needs it recent).
ALTER TABLE sessions
    ADD COLUMN amr text[] NOT NULL DEFAULT '{}',
    ADD COLUMN aal smallint NOT NULL DEFAULT 1 CHECK (aal IN (1, 2)),
    ADD COLUMN authenticated_at timestamptz NOT NULL DEFAULT now();

-- One TOTP authenticator per user; the secret sealed with the keyring (the
-- user id as associated data); a code's time step is accepted once.
CREATE TABLE auth_totp (
    user_id      uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    secret       bytea NOT NULL,
    confirmed_at timestamptz,
    last_step    bigint NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Ten single-use backup codes per user, stored as SHA-256 of user id and code.
CREATE TABLE auth_backup_codes (
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash  bytea NOT NULL,
    used_at    timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, code_hash)
);

-- A first factor passed by a user with a second one: no session yet, only this.
CREATE TABLE auth_mfa_challenges (
    id          uuid PRIMARY KEY,
    token_hash  bytea NOT NULL UNIQUE,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    amr         text[] NOT NULL,
    ip          text,
    user_agent  text,
    attempts    integer NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX auth_mfa_challenges_user_idx ON auth_mfa_challenges (user_id);

-- Social sign-in providers configured through the API (those in the
-- configuration are not stored); the client secret sealed (provider id as AAD).
CREATE TABLE auth_social_providers (
    id             text PRIMARY KEY,
    kind           text NOT NULL,
    client_id      text NOT NULL,
    client_secret  bytea,
    discovery_url  text,
    scopes         text[],
    name           text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Identities at social providers linked to users.
CREATE TABLE auth_identities (
    id             uuid PRIMARY KEY,
    user_id        uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    provider       text NOT NULL,
    subject        text NOT NULL,
    email          text,
    email_verified boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_sign_in_at timestamptz,
    UNIQUE (provider, subject)
);
CREATE INDEX auth_identities_user_idx ON auth_identities (user_id);

-- One social sign-in or link flow: bound to the browser that started it (a
-- cookie's hash) or, for apps with their own UI, to their PKCE challenge; the
-- provider-side PKCE verifier and nonce; after the callback of an app flow, the
-- provider's answer waits here for the app's exchange.
CREATE TABLE auth_social_flows (
    id              uuid PRIMARY KEY,
    state_hash      bytea NOT NULL UNIQUE,
    provider        text NOT NULL,
    browser_hash    bytea,
    app_challenge   text,
    code_verifier   text NOT NULL,
    nonce           text NOT NULL,
    redirect_url    text,
    link_user_id    uuid REFERENCES users (id) ON DELETE CASCADE,
    exchange_hash   bytea UNIQUE,
    result          jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz,
    CHECK (browser_hash IS NOT NULL OR app_challenge IS NOT NULL)
);

