-- Image transformation results (src/imaging/): one row per variant of an object
-- version, its bytes at variants/<id> in the object store. A version's bytes never
-- change, so a variant stays valid for as long as its version is the object's.
CREATE TABLE storage_variants (
    id             uuid PRIMARY KEY,
    source_version uuid NOT NULL,
    -- The normalised transformation (X-Transformations), output format included.
    params         text NOT NULL,
    content_type   text NOT NULL,
    size           bigint NOT NULL,
    width          integer NOT NULL,
    height         integer NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source_version, params)
);

-- An overwritten (new version) or deleted object drops its variants' rows; the
-- sweeper removes their bytes.
CREATE FUNCTION carmenta_object_version_gone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR NEW.version IS DISTINCT FROM OLD.version THEN
        DELETE FROM storage_variants WHERE source_version = OLD.version;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER storage_objects_variants AFTER UPDATE OF version OR DELETE ON storage_objects
    FOR EACH ROW EXECUTE FUNCTION carmenta_object_version_gone();
