-- Storage: buckets, objects (metadata; the bytes live in the object store under
-- blobs/<version>), and resumable (TUS) uploads in progress.

CREATE TABLE storage_buckets (
    id                 text PRIMARY KEY,
    name               text NOT NULL UNIQUE,
    public             boolean NOT NULL DEFAULT false,
    file_size_limit    bigint CHECK (file_size_limit IS NULL OR file_size_limit >= 0),
    allowed_mime_types text[],
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE storage_objects (
    id               uuid PRIMARY KEY,
    bucket_id        text NOT NULL REFERENCES storage_buckets (id),
    -- "C" collation: byte order for listings, and LIKE 'prefix%' can use the index.
    name             text COLLATE "C" NOT NULL,
    owner_id         uuid REFERENCES users (id) ON DELETE CASCADE,
    -- The blob holding the bytes: blobs/<first two hex digits>/<version>.
    version          uuid NOT NULL UNIQUE,
    size             bigint NOT NULL,
    content_type     text NOT NULL,
    cache_control    text NOT NULL,
    etag             text NOT NULL,
    user_metadata    jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    last_accessed_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (bucket_id, name)
);
CREATE INDEX storage_objects_owner ON storage_objects (owner_id);

CREATE TABLE storage_uploads (
    id            uuid PRIMARY KEY,
    bucket_id     text NOT NULL REFERENCES storage_buckets (id) ON DELETE CASCADE,
    name          text COLLATE "C" NOT NULL,
    owner_id      uuid REFERENCES users (id) ON DELETE CASCADE,
    -- Who created it: a user id, or NULL for a service key; checked on every request.
    creator       text NOT NULL,
    upload_length bigint NOT NULL,
    upload_offset bigint NOT NULL DEFAULT 0,
    content_type  text NOT NULL,
    cache_control text NOT NULL,
    user_metadata jsonb,
    upsert        boolean NOT NULL DEFAULT false,
    -- A PATCH in progress holds the upload until this time.
    lease_until   timestamptz,
    expires_at    timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX storage_uploads_expires ON storage_uploads (expires_at);
