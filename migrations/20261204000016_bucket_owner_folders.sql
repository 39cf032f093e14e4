-- A bucket may give each user a folder of their own: a user writes only under
-- `<user id>/`, so no user can learn whether another user's key exists.
ALTER TABLE storage_buckets ADD COLUMN owner_folders boolean NOT NULL DEFAULT false;
