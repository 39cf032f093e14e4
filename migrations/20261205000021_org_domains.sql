-- Verified domains of an organization: users whose verified email is at one may
-- join without an invitation, with the role the organization sets.
CREATE TABLE org_domains (
    org_id      uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    domain      text NOT NULL CHECK (domain ~ '^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$'),
    role        text NOT NULL DEFAULT 'org:member',
    verified_by uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, domain)
);
-- One organization per domain.
CREATE UNIQUE INDEX org_domains_domain_key ON org_domains (domain);
