-- A social provider's own server (GitHub Enterprise Server's base URL, for the
-- built-in `github` provider).
ALTER TABLE auth_social_providers ADD COLUMN base_url text;
