-- Limits and feature flags as data. Each tier has defaults; a tenant's own
-- `tenants.settings` ({"limits": {...}, "flags": {...}}) override them key by key.
-- null in a default means "no limit".
CREATE TABLE tier_settings (
    tier       text PRIMARY KEY CHECK (tier IN ('shared', 'dedicated')),
    settings   jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO tier_settings (tier, settings) VALUES
    ('shared', '{"limits": {"requests_per_second": 500, "burst": 1000, "max_concurrent_requests": 32, "statement_timeout_ms": 5000, "max_page_size": 500}, "flags": {}}'),
    ('dedicated', '{"limits": {"requests_per_second": null, "burst": null, "max_concurrent_requests": 128, "statement_timeout_ms": 30000, "max_page_size": 1000}, "flags": {}}');
GRANT SELECT ON tier_settings TO {app_role};

-- A tier's defaults changing affects every tenant of it: announce it.
CREATE OR REPLACE FUNCTION tenantry_notify_registry() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'placements' THEN
        PERFORM pg_notify('tenantry_registry', 'placement:' || NEW.tenant_id::text);
    ELSIF TG_TABLE_NAME = 'api_keys' THEN
        PERFORM pg_notify('tenantry_registry', 'key:' || encode(NEW.key_hash, 'hex'));
    ELSIF TG_TABLE_NAME = 'tenants' THEN
        PERFORM pg_notify('tenantry_registry', 'tenant:' || NEW.id::text);
    ELSIF TG_TABLE_NAME = 'tier_settings' THEN
        PERFORM pg_notify('tenantry_registry', 'tier:' || NEW.tier);
    ELSIF TG_TABLE_NAME = 'backends' THEN
        IF NEW.schema_version IS DISTINCT FROM OLD.schema_version OR NEW.status IS DISTINCT FROM OLD.status THEN
            PERFORM pg_notify('tenantry_registry', 'backend:' || NEW.id::text);
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER tier_settings_notify AFTER UPDATE ON tier_settings
    FOR EACH ROW EXECUTE FUNCTION tenantry_notify_registry();
