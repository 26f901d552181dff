-- Online moves. During a cutover the control plane writes one sentinel row on
-- the source inside the fence; it is published with the tenant's other rows, and
-- because a subscription applies transactions in commit order, its arrival on
-- the target proves every earlier write of the tenant has landed there.
-- Not tenant data and never granted to the app role; RLS is forced like on every
-- table that carries tenant_id.
CREATE TABLE tenantry_move_sentinels (
    tenant_id  uuid NOT NULL,
    id         uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
ALTER TABLE tenantry_move_sentinels ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenantry_move_sentinels FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenantry_move_sentinels
    USING (tenant_id = tenantry_current_tenant()) WITH CHECK (tenant_id = tenantry_current_tenant());
