-- External issuer mode: users provisioned from an external `sub` may have no email
-- yet, and webhook deliveries are remembered to process each once.
ALTER TABLE users ALTER COLUMN email DROP NOT NULL;

CREATE TABLE webhook_deliveries (
    id           text PRIMARY KEY,          -- svix-id
    source       text NOT NULL,             -- 'clerk'
    event_type   text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);
