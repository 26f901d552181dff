-- The one-statement read gate (tenant schema 5).
--
-- A tenant read is one SELECT in its own implicit transaction. It needs the
-- residency check and app.tenant_id, but not the fence lock: the lock exists so
-- that a fence waits for every write in flight, and a SELECT writes nothing; a
-- read whose snapshot precedes the fence saw the tenant at home and reads rows
-- of that same snapshot. Writes keep tenantry_enter() and its lock.
--
-- The app admits a read with an InitPlan over this view instead of calling
-- tenantry_enter():
--   ... AND (SELECT set_config('app.tenant_id', g.tenant_id::text, true)
--              FROM tenantry_admitted g WHERE g.tenant_id = $t AND g.epoch = $e) IS NOT NULL
-- A plain sub-select costs PostgreSQL about a third of the plpgsql call's work
-- (no function call, no SPI, no per-transaction expression set-up). A refused
-- read returns no rows; the app then asks tenantry_enter(), which says why
-- (TR001/TR002) or admits the tenant, so an empty answer is never a refusal.
--
-- The view shows the app role which tenants are admitted here and at which
-- epoch, which it already knows from the registry; not their states, fences or
-- where a tenant went (that is tenantry_enter's TR002 detail). It runs with its
-- owner's rights; tenant_residency itself stays closed to the app role.
CREATE VIEW tenantry_admitted AS
    SELECT tenant_id, epoch
      FROM tenant_residency
     WHERE state = 'active'
        OR (state = 'fenced' AND fenced_until IS NOT NULL AND clock_timestamp() >= fenced_until);
REVOKE ALL ON tenantry_admitted FROM PUBLIC;
GRANT SELECT ON tenantry_admitted TO {app_role};
