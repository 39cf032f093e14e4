-- Storage buckets and knowledge an organization shares (the rest of #27's
-- shared data; connections got theirs in 25).

-- A bucket may belong to an organization: members with org:storage:read read
-- every object in it, those with org:storage:write write and manage it. It is
-- deleted with the organization, objects and all (their blobs are then orphans
-- the sweeper removes), so objects now follow their bucket; the bucket route
-- still refuses to delete a bucket that is not empty, as Supabase does.
ALTER TABLE storage_buckets ADD COLUMN org_id uuid REFERENCES organizations (id) ON DELETE CASCADE;
CREATE INDEX storage_buckets_org ON storage_buckets (org_id) WHERE org_id IS NOT NULL;
ALTER TABLE storage_objects DROP CONSTRAINT storage_objects_bucket_id_fkey,
    ADD FOREIGN KEY (bucket_id) REFERENCES storage_buckets (id) ON DELETE CASCADE;

-- Every replica evicts cached public rows of a bucket that goes, however it goes.
CREATE FUNCTION storage_bucket_gone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('carmenta_storage', 'b:' || OLD.id);
    RETURN NULL;
END $$;
CREATE TRIGGER storage_bucket_gone AFTER DELETE ON storage_buckets
    FOR EACH ROW EXECUTE FUNCTION storage_bucket_gone();

-- Knowledge lives in spaces: each user has one (its id is the user's), each
-- organization has one (its id is the organization's). Every knowledge row
-- names its space; a space goes with its user or organization, and its
-- folders, documents, links, files and statistics with it.
CREATE TABLE kb_spaces (
    id      uuid PRIMARY KEY,
    user_id uuid UNIQUE REFERENCES users (id) ON DELETE CASCADE,
    org_id  uuid UNIQUE REFERENCES organizations (id) ON DELETE CASCADE,
    CHECK ((user_id IS NULL) <> (org_id IS NULL))
);
INSERT INTO kb_spaces (id, user_id) SELECT id, id FROM users;
INSERT INTO kb_spaces (id, org_id) SELECT id, id FROM organizations;

CREATE FUNCTION kb_space_for_user() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO kb_spaces (id, user_id) VALUES (NEW.id, NEW.id) ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER users_kb_space AFTER INSERT ON users FOR EACH ROW EXECUTE FUNCTION kb_space_for_user();
CREATE FUNCTION kb_space_for_org() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO kb_spaces (id, org_id) VALUES (NEW.id, NEW.id) ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER organizations_kb_space AFTER INSERT ON organizations
    FOR EACH ROW EXECUTE FUNCTION kb_space_for_org();

ALTER TABLE kb_folders RENAME COLUMN user_id TO space_id;
ALTER TABLE kb_folders DROP CONSTRAINT kb_folders_user_id_fkey,
    ADD FOREIGN KEY (space_id) REFERENCES kb_spaces (id) ON DELETE CASCADE;
ALTER TABLE kb_documents RENAME COLUMN user_id TO space_id;
ALTER TABLE kb_documents DROP CONSTRAINT kb_documents_user_id_fkey,
    ADD FOREIGN KEY (space_id) REFERENCES kb_spaces (id) ON DELETE CASCADE;
ALTER TABLE kb_chunks RENAME COLUMN user_id TO space_id;
ALTER TABLE kb_stats RENAME COLUMN user_id TO space_id;
ALTER TABLE kb_stats DROP CONSTRAINT kb_stats_user_id_fkey,
    ADD FOREIGN KEY (space_id) REFERENCES kb_spaces (id) ON DELETE CASCADE;
ALTER TABLE kb_terms RENAME COLUMN user_id TO space_id;
ALTER TABLE kb_terms DROP CONSTRAINT kb_terms_user_id_fkey,
    ADD FOREIGN KEY (space_id) REFERENCES kb_spaces (id) ON DELETE CASCADE;
ALTER TABLE kb_links RENAME COLUMN user_id TO space_id;
ALTER TABLE kb_links DROP CONSTRAINT kb_links_user_id_fkey,
    ADD FOREIGN KEY (space_id) REFERENCES kb_spaces (id) ON DELETE CASCADE;
ALTER TABLE kb_files RENAME COLUMN user_id TO space_id;
ALTER TABLE kb_files DROP CONSTRAINT kb_files_user_id_fkey,
    ADD FOREIGN KEY (space_id) REFERENCES kb_spaces (id) ON DELETE CASCADE;

-- The statistics function names the renamed columns.
CREATE OR REPLACE FUNCTION kb_stats_apply(owner uuid, docs uuid[], sign integer) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO kb_stats (space_id, chunks, total_len)
    SELECT owner, sign * count(*), sign * coalesce(sum(c.len), 0)
    FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id AND d.current_version = c.version
    WHERE d.id = ANY (docs) AND d.space_id = owner
    ON CONFLICT (space_id) DO UPDATE
        SET chunks = kb_stats.chunks + excluded.chunks, total_len = kb_stats.total_len + excluded.total_len;
    INSERT INTO kb_terms (space_id, lexeme, df)
    SELECT owner, u.lexeme, sign * count(*)
    FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id AND d.current_version = c.version,
         unnest(c.tsv) u
    WHERE d.id = ANY (docs) AND d.space_id = owner
    GROUP BY u.lexeme
    ORDER BY u.lexeme
    ON CONFLICT (space_id, lexeme) DO UPDATE SET df = kb_terms.df + excluded.df;
    DELETE FROM kb_terms WHERE space_id = owner AND df <= 0;
$$;
