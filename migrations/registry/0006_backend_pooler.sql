-- A backend may be reached by the app through a connection pooler (PgBouncer
-- in transaction mode). Only the app's request path uses it: moves,
-- migrations, residency writes and every owner or replication connection go
-- straight to PostgreSQL (host, port above).
ALTER TABLE backends
    ADD COLUMN pooler_host text,
    ADD COLUMN pooler_port integer CHECK (pooler_port BETWEEN 1 AND 65535),
    ADD COLUMN pooler_mode text CHECK (pooler_mode IN ('transaction', 'session'));
ALTER TABLE backends ADD CONSTRAINT backends_pooler_whole CHECK (
    (pooler_host IS NULL) = (pooler_port IS NULL) AND (pooler_host IS NULL) = (pooler_mode IS NULL));

-- A change of pooler changes how apps reach the backend: announce it.
CREATE OR REPLACE FUNCTION tenantry_notify_registry() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'placements' THEN
        PERFORM pg_notify('tenantry_registry', 'placement:' || NEW.tenant_id::text);
    ELSIF TG_TABLE_NAME = 'api_keys' THEN
        PERFORM pg_notify('tenantry_registry', 'key:' || encode(NEW.key_hash, 'hex'));
    ELSIF TG_TABLE_NAME = 'tenants' THEN
        PERFORM pg_notify('tenantry_registry', 'tenant:' || NEW.id::text);
    ELSIF TG_TABLE_NAME = 'backends' THEN
        IF NEW.schema_version IS DISTINCT FROM OLD.schema_version OR NEW.status IS DISTINCT FROM OLD.status
           OR NEW.pooler_host IS DISTINCT FROM OLD.pooler_host OR NEW.pooler_port IS DISTINCT FROM OLD.pooler_port
           OR NEW.pooler_mode IS DISTINCT FROM OLD.pooler_mode THEN
            PERFORM pg_notify('tenantry_registry', 'backend:' || NEW.id::text);
        END IF;
    END IF;
    RETURN NULL;
END $$;
