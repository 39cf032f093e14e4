-- Passkeys (WebAuthn credentials; public keys only, as webauthn-rs serialises
-- them) and the WebAuthn ceremonies in progress (their server-side state: the
-- challenge each answer must sign, used once).

CREATE TABLE auth_passkeys (
    id            uuid PRIMARY KEY,
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    credential_id bytea NOT NULL UNIQUE,
    passkey       jsonb NOT NULL,
    name          text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz
);
CREATE INDEX auth_passkeys_user_idx ON auth_passkeys (user_id, created_at);

CREATE TABLE auth_webauthn_ceremonies (
    id               uuid PRIMARY KEY,
    kind             text NOT NULL CHECK (kind IN ('register', 'sign_in', 'discoverable', 'second_factor')),
    user_id          uuid REFERENCES users (id) ON DELETE CASCADE,
    mfa_challenge_id uuid REFERENCES auth_mfa_challenges (id) ON DELETE CASCADE,
    state            jsonb NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    used_at          timestamptz
);
