-- Core: the extensions every area relies on and the audit log that records
-- privileged actions (service keys acting for users, admin operations).
CREATE EXTENSION IF NOT EXISTS ltree;
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,          -- e.g. 'service_key:<id>', 'admin:<id>', 'user:<id>'
    on_behalf_of uuid,                  -- the user acted for, if any
    action      text NOT NULL,          -- e.g. 'user.delete', 'key.create'
    target      text,                   -- the resource acted on
    request_id  text,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_at_idx ON audit_log (at DESC);
CREATE INDEX audit_log_on_behalf_of_idx ON audit_log (on_behalf_of, at DESC) WHERE on_behalf_of IS NOT NULL;
