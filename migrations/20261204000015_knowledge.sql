-- The knowledge base (src/knowledge): folders as ltree paths of generated labels,
-- documents with immutable versions, chunks with full-text vectors and embeddings,
-- links between documents, BM25 term statistics, and ingestion of storage objects.

CREATE TABLE kb_folders (
    id         uuid PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- Labels are generated ('f' + 12 base-36 characters), never taken from names.
    path       ltree NOT NULL,
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, path)
);
CREATE INDEX kb_folders_path ON kb_folders USING gist (path gist_ltree_ops (siglen = 100));
-- Sibling folders have distinct names (case-insensitive).
CREATE UNIQUE INDEX kb_folders_sibling_name
    ON kb_folders (user_id, subpath(path, 0, nlevel(path) - 1), lower(name));

CREATE TABLE kb_documents (
    id              uuid PRIMARY KEY,
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    folder_id       uuid REFERENCES kb_folders (id) ON DELETE CASCADE,
    title           text NOT NULL,
    tags            text[] NOT NULL DEFAULT '{}',
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    source_kind     text NOT NULL CHECK (source_kind IN ('manual', 'url', 'upload')),
    source_url      text,
    -- For uploads: the storage object (bucket and name) and the file row watching it.
    source_bucket   text,
    source_object   text,
    current_version integer NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX kb_documents_user ON kb_documents (user_id, updated_at DESC, id);
CREATE INDEX kb_documents_folder ON kb_documents (folder_id);
CREATE INDEX kb_documents_title ON kb_documents (user_id, lower(title));
CREATE INDEX kb_documents_tags ON kb_documents USING gin (tags);

-- Versions are never changed once written; a replace adds one and moves
-- current_version in the same transaction.
CREATE TABLE kb_versions (
    document_id    uuid NOT NULL REFERENCES kb_documents (id) ON DELETE CASCADE,
    version        integer NOT NULL,
    title          text NOT NULL,
    body           text NOT NULL,
    content_hash   text NOT NULL,
    -- Character offsets where each page starts (PDFs); NULL when unpaged.
    page_starts    integer[],
    -- The storage object version (blob id) an upload was read from.
    source_version uuid,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (document_id, version)
);

CREATE TABLE kb_chunks (
    id              bigserial PRIMARY KEY,
    user_id         uuid NOT NULL,
    document_id     uuid NOT NULL,
    version         integer NOT NULL,
    ordinal         integer NOT NULL,
    headings        text[] NOT NULL DEFAULT '{}',
    page            integer,
    char_start      integer NOT NULL,
    char_end        integer NOT NULL,
    tokens          integer NOT NULL,
    hash            text NOT NULL,
    -- The document's title and the heading trail: indexed with weight A.
    context         text NOT NULL,
    text            text NOT NULL,
    tsv             tsvector GENERATED ALWAYS AS (
                        setweight(to_tsvector('english', context), 'A') ||
                        setweight(to_tsvector('english', text), 'B')) STORED,
    -- BM25 document length: the number of indexed positions (kb_tsv_length).
    len             integer NOT NULL DEFAULT 0,
    embedding       vector,
    embedding_model text,
    FOREIGN KEY (document_id, version) REFERENCES kb_versions (document_id, version) ON DELETE CASCADE,
    UNIQUE (document_id, version, ordinal)
);
CREATE INDEX kb_chunks_user ON kb_chunks (user_id, document_id, version);
CREATE INDEX kb_chunks_tsv ON kb_chunks USING gin (tsv);
CREATE INDEX kb_chunks_unembedded ON kb_chunks (id) WHERE embedding IS NULL;
-- Finds chunks of another model (or none) without a scan, at every start.
CREATE INDEX kb_chunks_model ON kb_chunks (embedding_model, id);

-- BM25 statistics over each user's current chunks: chunk count and total length,
-- and per lexeme the number of current chunks holding it.
CREATE TABLE kb_stats (
    user_id   uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    chunks    bigint NOT NULL DEFAULT 0,
    total_len bigint NOT NULL DEFAULT 0
);
CREATE TABLE kb_terms (
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    lexeme  text NOT NULL,
    df      integer NOT NULL,
    PRIMARY KEY (user_id, lexeme)
);

-- Adds (sign 1) or removes (sign -1) the current chunks of the given documents
-- to or from their owner's statistics. Callers hold the owner's advisory lock.
CREATE FUNCTION kb_stats_apply(owner uuid, docs uuid[], sign integer) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO kb_stats (user_id, chunks, total_len)
    SELECT owner, sign * count(*), sign * coalesce(sum(c.len), 0)
    FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id AND d.current_version = c.version
    WHERE d.id = ANY (docs) AND d.user_id = owner
    ON CONFLICT (user_id) DO UPDATE
        SET chunks = kb_stats.chunks + excluded.chunks, total_len = kb_stats.total_len + excluded.total_len;
    INSERT INTO kb_terms (user_id, lexeme, df)
    SELECT owner, u.lexeme, sign * count(*)
    FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id AND d.current_version = c.version,
         unnest(c.tsv) u
    WHERE d.id = ANY (docs) AND d.user_id = owner
    GROUP BY u.lexeme
    ORDER BY u.lexeme
    ON CONFLICT (user_id, lexeme) DO UPDATE SET df = kb_terms.df + excluded.df;
    DELETE FROM kb_terms WHERE user_id = owner AND df <= 0;
$$;

-- The number of positions in a tsvector (a BM25 length).
CREATE FUNCTION kb_tsv_length(v tsvector) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(sum(coalesce(array_length(u.positions, 1), 1)), 0)::integer FROM unnest(v) u
$$;

-- The OR of lexemes as a tsquery (each quoted, so no lexeme is read as syntax).
CREATE FUNCTION kb_or_query(lexemes text[]) RETURNS tsquery
LANGUAGE sql IMMUTABLE AS $$
    SELECT string_agg('''' || replace(replace(l, '\', '\\'), '''', '''''') || '''', ' | ')::tsquery
    FROM unnest(lexemes) l
$$;

CREATE TABLE kb_links (
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    source_id    uuid NOT NULL REFERENCES kb_documents (id) ON DELETE CASCADE,
    -- NULL while a [[Title]] names no document yet; resolved when one appears.
    target_id    uuid REFERENCES kb_documents (id) ON DELETE CASCADE,
    target_title text NOT NULL,
    -- 'wiki': written as [[Title]] in the current version; 'manual': by the link API.
    kind         text NOT NULL CHECK (kind IN ('wiki', 'manual')),
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX kb_links_unique ON kb_links (source_id, kind, lower(target_title), coalesce(target_id, source_id));
CREATE INDEX kb_links_target ON kb_links (target_id);
CREATE INDEX kb_links_unresolved ON kb_links (user_id, lower(target_title)) WHERE target_id IS NULL;

-- A storage object fed into the knowledge base, and where its ingestion stands.
CREATE TABLE kb_files (
    id               uuid PRIMARY KEY,
    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    bucket_id        text NOT NULL,
    object_name      text COLLATE "C" NOT NULL,
    folder_id        uuid REFERENCES kb_folders (id) ON DELETE SET NULL,
    document_id      uuid REFERENCES kb_documents (id) ON DELETE SET NULL,
    -- The object version (blob id) last ingested.
    ingested_version uuid,
    status           text NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'extracting', 'chunking', 'embedding', 'ready', 'failed', 'removed')),
    progress         real NOT NULL DEFAULT 0,
    error_code       text,
    error            text,
    format           text,
    pages            integer,
    chunks           integer,
    chunks_embedded  integer,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, bucket_id, object_name)
);
CREATE INDEX kb_files_object ON kb_files (bucket_id, object_name);

-- Any change to a watched object (upload, overwrite, TUS, move, copy, delete; by
-- any replica, any path) queues its re-ingestion in the same transaction.
CREATE FUNCTION kb_watch_objects() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    b text;
    n text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        b := OLD.bucket_id; n := OLD.name;
    ELSE
        b := NEW.bucket_id; n := NEW.name;
    END IF;
    INSERT INTO jobs (id, kind, payload, max_attempts, unique_key)
    SELECT gen_random_uuid(), 'knowledge.ingest', jsonb_build_object('file_id', f.id), 3, f.id::text
    FROM kb_files f WHERE f.bucket_id = b AND f.object_name = n
    ON CONFLICT (kind, unique_key) WHERE unique_key IS NOT NULL AND state = 'queued' DO NOTHING;
    IF TG_OP = 'UPDATE' AND (OLD.bucket_id, OLD.name) IS DISTINCT FROM (NEW.bucket_id, NEW.name) THEN
        INSERT INTO jobs (id, kind, payload, max_attempts, unique_key)
        SELECT gen_random_uuid(), 'knowledge.ingest', jsonb_build_object('file_id', f.id), 3, f.id::text
        FROM kb_files f WHERE f.bucket_id = OLD.bucket_id AND f.object_name = OLD.name
        ON CONFLICT (kind, unique_key) WHERE unique_key IS NOT NULL AND state = 'queued' DO NOTHING;
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER kb_watch_objects AFTER INSERT OR UPDATE OF version, bucket_id, name OR DELETE ON storage_objects
    FOR EACH ROW EXECUTE FUNCTION kb_watch_objects();
