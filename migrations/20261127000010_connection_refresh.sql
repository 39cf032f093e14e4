-- Connection refresh bookkeeping: consecutive transient failures and the cooldown
-- before the next attempt.

ALTER TABLE connections ADD COLUMN refresh_failures int NOT NULL DEFAULT 0;
ALTER TABLE connections ADD COLUMN next_refresh_at timestamptz;

CREATE TABLE connection_events (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    connection_id uuid NOT NULL,
    owner_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind          text NOT NULL,
    detail        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX connection_events_owner_idx ON connection_events (owner_id, id);
