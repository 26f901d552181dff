-- Per-backend state of the tenant-schema fan-out, and the template database
-- that dedicated logical backends are copied from.

ALTER TABLE backends DROP CONSTRAINT backends_kind_check;
ALTER TABLE backends ADD CONSTRAINT backends_kind_check CHECK (kind IN ('shared_pool', 'dedicated', 'template'));

ALTER TABLE backends
    ADD COLUMN migration_state text NOT NULL DEFAULT 'idle'
        CHECK (migration_state IN ('idle', 'running', 'failed')),
    ADD COLUMN migration_error text,
    ADD COLUMN migration_ms integer,
    ADD COLUMN migrated_at timestamptz;

-- A backend's schema version or status changing affects routing (the app
-- refuses versions it does not support): announce it.
CREATE OR REPLACE FUNCTION tenantry_notify_registry() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'placements' THEN
        PERFORM pg_notify('tenantry_registry', 'placement:' || NEW.tenant_id::text);
    ELSIF TG_TABLE_NAME = 'api_keys' THEN
        PERFORM pg_notify('tenantry_registry', 'key:' || encode(NEW.key_hash, 'hex'));
    ELSIF TG_TABLE_NAME = 'tenants' THEN
        PERFORM pg_notify('tenantry_registry', 'tenant:' || NEW.id::text);
    ELSIF TG_TABLE_NAME = 'backends' THEN
        IF NEW.schema_version IS DISTINCT FROM OLD.schema_version OR NEW.status IS DISTINCT FROM OLD.status THEN
            PERFORM pg_notify('tenantry_registry', 'backend:' || NEW.id::text);
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER backends_notify AFTER UPDATE ON backends
    FOR EACH ROW EXECUTE FUNCTION tenantry_notify_registry();

-- A provisioning that is cancelled removes its tenant; the operation (and its
-- audit trail) stays.
ALTER TABLE operations DROP CONSTRAINT operations_tenant_id_fkey;
ALTER TABLE operations ADD CONSTRAINT operations_tenant_id_fkey
    FOREIGN KEY (tenant_id) REFERENCES tenants (id) ON DELETE SET NULL;
ALTER TABLE operations DROP CONSTRAINT operations_backend_id_fkey;
ALTER TABLE operations ADD CONSTRAINT operations_backend_id_fkey
    FOREIGN KEY (backend_id) REFERENCES backends (id) ON DELETE SET NULL;
