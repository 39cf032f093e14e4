-- Organizations: members with roles (built-in owner/admin/member, or custom sets of
-- permission strings), invitations by email, and each session's active organization.

CREATE TABLE organizations (
    id          uuid PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    slug        text NOT NULL CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    image_url   text,
    created_by  uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX organizations_slug_key ON organizations (slug);

-- Custom roles of one organization; the built-in ones are in org_role_permissions.
CREATE TABLE org_roles (
    org_id      uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    key         text NOT NULL CHECK (key ~ '^org:[a-z0-9_]{1,40}$' AND key NOT IN ('org:owner', 'org:admin', 'org:member')),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    permissions text[] NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, key)
);

CREATE TABLE org_members (
    org_id      uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, user_id)
);
CREATE INDEX org_members_user_idx ON org_members (user_id);

-- What each role of each organization may do: one place for both kinds.
CREATE VIEW org_role_permissions AS
    SELECT o.id AS org_id, b.key, b.permissions
    FROM organizations o CROSS JOIN (VALUES
        ('org:owner', ARRAY['org:sys_profile:manage', 'org:sys_profile:delete', 'org:sys_memberships:read',
                            'org:sys_memberships:manage', 'org:sys_roles:manage', 'org:sys_invitations:manage',
                            'org:storage:read', 'org:storage:write', 'org:knowledge:read', 'org:knowledge:write',
                            'org:connections:read', 'org:connections:write']),
        ('org:admin', ARRAY['org:sys_profile:manage', 'org:sys_memberships:read', 'org:sys_memberships:manage',
                            'org:sys_roles:manage', 'org:sys_invitations:manage',
                            'org:storage:read', 'org:storage:write', 'org:knowledge:read', 'org:knowledge:write',
                            'org:connections:read', 'org:connections:write']),
        ('org:member', ARRAY['org:sys_memberships:read', 'org:storage:read', 'org:knowledge:read',
                             'org:connections:read'])
    ) AS b (key, permissions)
    UNION ALL
    SELECT org_id, key, permissions FROM org_roles;

CREATE TABLE org_invitations (
    id          uuid PRIMARY KEY,
    org_id      uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    email       text NOT NULL,
    role        text NOT NULL,
    token_hash  bytea NOT NULL UNIQUE,
    status      text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'accepted', 'declined', 'revoked')),
    invited_by  uuid REFERENCES users (id) ON DELETE SET NULL,
    expires_at  timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX org_invitations_org_idx ON org_invitations (org_id, created_at DESC);
CREATE UNIQUE INDEX org_invitations_pending_key ON org_invitations (org_id, lower(email)) WHERE status = 'pending';

ALTER TABLE sessions ADD COLUMN active_org_id uuid REFERENCES organizations (id) ON DELETE SET NULL;
