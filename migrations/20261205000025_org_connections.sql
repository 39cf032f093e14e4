-- Connections an organization shares: made by a member with
-- org:connections:write (owner_id: who made it), read and used through the proxy
-- by members with org:connections:read, deleted with the organization. A user's
-- own connections have no org_id. An account is connected once per holder: per
-- user for their own connections, per organization for shared ones.
ALTER TABLE connections ADD COLUMN org_id uuid REFERENCES organizations (id) ON DELETE CASCADE;
ALTER TABLE connections DROP CONSTRAINT connections_owner_id_integration_id_external_account_id_key;
CREATE UNIQUE INDEX connections_user_account_key
    ON connections (owner_id, integration_id, external_account_id) WHERE org_id IS NULL;
CREATE UNIQUE INDEX connections_org_account_key
    ON connections (org_id, integration_id, external_account_id) WHERE org_id IS NOT NULL;
CREATE INDEX connections_org_idx ON connections (org_id, created_at, id) WHERE org_id IS NOT NULL;
ALTER TABLE connect_sessions ADD COLUMN org_id uuid REFERENCES organizations (id) ON DELETE CASCADE;
ALTER TABLE oauth_states ADD COLUMN org_id uuid REFERENCES organizations (id) ON DELETE CASCADE;

-- An organization's connections outlive the member who made them: when that
-- user is deleted, another member (owners first) becomes their maker.
CREATE FUNCTION connections_keep_org_holdings() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE connections c SET owner_id = (
        SELECT m.user_id FROM org_members m
        WHERE m.org_id = c.org_id AND m.user_id <> OLD.id
        ORDER BY (m.role = 'org:owner') DESC, m.created_at LIMIT 1)
    WHERE c.owner_id = OLD.id AND c.org_id IS NOT NULL
      AND EXISTS (SELECT 1 FROM org_members m WHERE m.org_id = c.org_id AND m.user_id <> OLD.id);
    RETURN OLD;
END $$;
CREATE TRIGGER users_keep_org_connections BEFORE DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION connections_keep_org_holdings();
