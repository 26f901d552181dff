-- Registry schema (control-plane database). Applied by the owner role.
-- The app role reads tenants, backends, placements and api_keys; it never writes.

CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    slug        text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{1,62}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    tier        text NOT NULL CHECK (tier IN ('shared', 'dedicated')),
    status      text NOT NULL CHECK (status IN ('provisioning', 'active', 'suspended', 'erasing', 'erased', 'failed')),
    region      text NOT NULL,
    settings    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Connection info only: host, port and database name. Credentials come from
-- configuration (per engine), never from this table.
CREATE TABLE backends (
    id             uuid PRIMARY KEY,
    name           text NOT NULL UNIQUE,
    kind           text NOT NULL CHECK (kind IN ('shared_pool', 'dedicated')),
    engine         text NOT NULL CHECK (engine IN ('logical', 'rds', 'external')),
    host           text NOT NULL,
    port           integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    database       text NOT NULL,
    region         text NOT NULL,
    status         text NOT NULL CHECK (status IN ('provisioning', 'ready', 'draining', 'retired', 'failed')),
    schema_version integer NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE placements (
    tenant_id  uuid PRIMARY KEY REFERENCES tenants (id),
    backend_id uuid NOT NULL REFERENCES backends (id),
    epoch      bigint NOT NULL CHECK (epoch > 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX placements_backend_idx ON placements (backend_id);

-- Only a SHA-256 of the key is stored; keys carry 160 bits of randomness, so a
-- fast hash is enough (no dictionary to attack).
CREATE TABLE api_keys (
    id         uuid PRIMARY KEY,
    tenant_id  uuid NOT NULL REFERENCES tenants (id),
    key_hash   bytea NOT NULL UNIQUE,
    prefix     text NOT NULL,
    name       text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id);

CREATE TABLE operations (
    id               uuid PRIMARY KEY,
    kind             text NOT NULL CHECK (kind IN ('provision', 'retire', 'promote', 'move', 'demote', 'erase', 'migrate')),
    tenant_id        uuid REFERENCES tenants (id),
    backend_id       uuid REFERENCES backends (id),
    state            text NOT NULL CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'cancelling', 'cancelled')),
    step             text NOT NULL DEFAULT '',
    progress         jsonb NOT NULL DEFAULT '{}'::jsonb,
    params           jsonb NOT NULL DEFAULT '{}'::jsonb,
    attempts         integer NOT NULL DEFAULT 0,
    error            text,
    actor            text NOT NULL,
    lease_owner      text,
    lease_expires_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);
CREATE INDEX operations_claim_idx ON operations (state, created_at) WHERE state IN ('pending', 'running', 'cancelling');
CREATE INDEX operations_tenant_idx ON operations (tenant_id, created_at);

CREATE TABLE audit_log (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    actor     text NOT NULL,
    action    text NOT NULL,
    tenant_id uuid,
    details   jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_tenant_idx ON audit_log (tenant_id, at);

-- Cache invalidation for every app process: placement moves, key revocations
-- and tenant status changes are announced on one channel.
CREATE FUNCTION tenantry_notify_registry() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'placements' THEN
        PERFORM pg_notify('tenantry_registry', 'placement:' || NEW.tenant_id::text);
    ELSIF TG_TABLE_NAME = 'api_keys' THEN
        PERFORM pg_notify('tenantry_registry', 'key:' || encode(NEW.key_hash, 'hex'));
    ELSIF TG_TABLE_NAME = 'tenants' THEN
        PERFORM pg_notify('tenantry_registry', 'tenant:' || NEW.id::text);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER placements_notify AFTER INSERT OR UPDATE ON placements
    FOR EACH ROW EXECUTE FUNCTION tenantry_notify_registry();
CREATE TRIGGER api_keys_notify AFTER UPDATE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION tenantry_notify_registry();
CREATE TRIGGER tenants_notify AFTER UPDATE ON tenants
    FOR EACH ROW EXECUTE FUNCTION tenantry_notify_registry();

-- The app role ({app_role}) reads the request path's tables and nothing else.
GRANT SELECT ON tenants, backends, placements, api_keys TO {app_role};
