-- Connections (OAuth broker), first part: the app's integrations with providers.
-- The client secret is an AES-256-GCM envelope bound to the integration id.

CREATE TABLE integrations (
    id                   uuid PRIMARY KEY,
    unique_key           text NOT NULL UNIQUE,
    provider             text NOT NULL,
    client_id            text,
    client_secret        bytea,
    scopes               text[] NOT NULL DEFAULT '{}',
    authorization_params jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
