-- Connection configuration (a subdomain, a region) travels with the OAuth state
-- from the start of a connect flow to its callback, where it is stored on the
-- connection and fills the provider's templated URLs for refresh and the proxy.
ALTER TABLE oauth_states ADD COLUMN connection_config jsonb NOT NULL DEFAULT '{}'::jsonb;
