-- Legacy estates Tenantry adopts tenants from: a schema-per-tenant or a
-- database-per-tenant PostgreSQL it did not build. The password is kept
-- encrypted (AES-256-GCM under control_plane.secrets_key), never returned,
-- never logged. Only the control plane reads these tables.
CREATE TABLE estates (
    id            uuid PRIMARY KEY,
    name          text NOT NULL UNIQUE,
    host          text NOT NULL,
    port          integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    database      text NOT NULL,
    username      text NOT NULL,
    password_enc  bytea NOT NULL,
    layout        text NOT NULL CHECK (layout IN ('schema_per_tenant', 'database_per_tenant')),
    pattern       text NOT NULL,
    mapping       jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- One row per legacy source (schema or database) once something happened to
-- it; a source never touched is `not_adopted` and has no row.
CREATE TABLE estate_sources (
    estate_id    uuid NOT NULL REFERENCES estates (id) ON DELETE CASCADE,
    name         text NOT NULL,
    state        text NOT NULL CHECK (state IN ('adopting', 'adopted', 'released', 'reverted', 'failed')),
    tenant_id    uuid,
    operation_id uuid,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (estate_id, name)
);
