-- Invalidation for the proxy's in-memory connection cache (src/connections/cache.rs):
-- every update or delete of a connection (cascades included) notifies its id at
-- commit; any change to an integration clears the whole cache ('*').
CREATE FUNCTION carmenta_connection_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('carmenta_connections', OLD.id::text);
    RETURN NULL;
END $$;

CREATE TRIGGER connections_notify AFTER UPDATE OR DELETE ON connections
    FOR EACH ROW EXECUTE FUNCTION carmenta_connection_changed();

CREATE FUNCTION carmenta_integration_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('carmenta_connections', '*');
    RETURN NULL;
END $$;

CREATE TRIGGER integrations_notify AFTER UPDATE OR DELETE ON integrations
    FOR EACH STATEMENT EXECUTE FUNCTION carmenta_integration_changed();
