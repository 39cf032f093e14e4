-- Connections: connect sessions (short-lived, for one user), single-use OAuth
-- states, and connections with their credentials encrypted (AES-256-GCM, the
-- connection id as associated data). One user may connect several external
-- accounts of one integration.

CREATE TABLE connect_sessions (
    id                   uuid PRIMARY KEY,
    token_hash           bytea NOT NULL UNIQUE,
    owner_id             uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    allowed_integrations text[],
    return_url           text,
    expires_at           timestamptz NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE oauth_states (
    state_hash     bytea PRIMARY KEY,
    owner_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    integration_id uuid NOT NULL REFERENCES integrations (id) ON DELETE CASCADE,
    code_verifier  bytea,
    return_url     text,
    expires_at     timestamptz NOT NULL,
    used_at        timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE connections (
    id                  uuid PRIMARY KEY,
    owner_id            uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    integration_id      uuid NOT NULL REFERENCES integrations (id) ON DELETE CASCADE,
    external_account_id text NOT NULL,
    status              text NOT NULL DEFAULT 'connected' CHECK (status IN ('connected', 'needs_reauth')),
    credentials         bytea NOT NULL,
    scopes              text[] NOT NULL DEFAULT '{}',
    expires_at          timestamptz,
    last_refresh_at     timestamptz,
    last_error          text,
    metadata            jsonb NOT NULL DEFAULT '{}'::jsonb,
    connection_config   jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (owner_id, integration_id, external_account_id)
);
CREATE INDEX connections_owner_idx ON connections (owner_id, integration_id);
