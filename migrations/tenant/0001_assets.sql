-- Tenant-data schema, identical on every backend (shared pools and dedicated
-- databases). Applied by the owner role; the app role ({app_role}) gets DML only.
--
-- Rules kept by every table here:
--   * tenant_id leads the primary key and every index; foreign keys are composite;
--   * ROW LEVEL SECURITY is enabled and FORCED, with a policy on app.tenant_id.
--     nullif(...) because pooled connections carry '' after a transaction.

-- Which tenants live here, at which placement epoch. Written by the control plane
-- only; read through tenantry_enter().
CREATE TABLE tenant_residency (
    tenant_id  uuid PRIMARY KEY,
    epoch      bigint NOT NULL CHECK (epoch > 0),
    state      text NOT NULL CHECK (state IN ('active', 'fenced')),
    updated_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON tenant_residency FROM PUBLIC;

CREATE FUNCTION tenantry_lock_key(p_tenant uuid) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT hashtextextended(p_tenant::text, 7370) $$;

-- First statement of every tenant transaction. Takes the tenant's shared
-- advisory lock (a fence takes it exclusively), then, in a new statement and
-- so a new snapshot, checks residency at the caller's epoch and sets the
-- transaction-local tenant. SQLSTATE TR001 = "not resident here": the caller
-- re-resolves its placement and retries.
CREATE FUNCTION tenantry_enter(p_tenant uuid, p_epoch bigint) RETURNS boolean
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = public, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(tenantry_lock_key(p_tenant));
    SELECT epoch, state INTO r FROM tenant_residency WHERE tenant_id = p_tenant;
    IF NOT FOUND OR r.epoch <> p_epoch OR r.state <> 'active' THEN
        RAISE EXCEPTION 'tenant % is not resident here at epoch %', p_tenant, p_epoch
            USING ERRCODE = 'TR001';
    END IF;
    PERFORM set_config('app.tenant_id', p_tenant::text, true);
    RETURN true;
END $$;
REVOKE ALL ON FUNCTION tenantry_enter(uuid, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenantry_enter(uuid, bigint) TO {app_role};

CREATE FUNCTION tenantry_current_tenant() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT nullif(current_setting('app.tenant_id', true), '')::uuid $$;

CREATE TABLE assets (
    tenant_id  uuid NOT NULL,
    id         uuid NOT NULL,
    name       text NOT NULL,
    tag        text NOT NULL,
    category   text NOT NULL DEFAULT '',
    location   text NOT NULL DEFAULT '',
    status     text NOT NULL CHECK (status IN ('active', 'in_repair', 'retired')),
    attributes jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, tag)
);
CREATE INDEX assets_status_idx ON assets (tenant_id, status, id);

CREATE TABLE maintenance_schedules (
    tenant_id     uuid NOT NULL,
    id            uuid NOT NULL,
    asset_id      uuid NOT NULL,
    title         text NOT NULL,
    interval_days integer NOT NULL CHECK (interval_days > 0),
    next_due_at   timestamptz NOT NULL,
    last_done_at  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, asset_id) REFERENCES assets (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX maintenance_schedules_asset_idx ON maintenance_schedules (tenant_id, asset_id);
CREATE INDEX maintenance_schedules_due_idx ON maintenance_schedules (tenant_id, next_due_at);

CREATE TABLE asset_issues (
    tenant_id   uuid NOT NULL,
    id          uuid NOT NULL,
    asset_id    uuid NOT NULL,
    title       text NOT NULL,
    description text NOT NULL DEFAULT '',
    status      text NOT NULL CHECK (status IN ('open', 'in_progress', 'resolved')),
    priority    text NOT NULL CHECK (priority IN ('low', 'medium', 'high', 'critical')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, asset_id) REFERENCES assets (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX asset_issues_asset_idx ON asset_issues (tenant_id, asset_id);
CREATE INDEX asset_issues_status_idx ON asset_issues (tenant_id, status, id);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['assets', 'maintenance_schedules', 'asset_issues'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = tenantry_current_tenant()) WITH CHECK (tenant_id = tenantry_current_tenant())', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO {app_role}', t);
    END LOOP;
END $$;
