-- A crash-safe cutover: the backend, not the control plane, bounds a move's
-- fence. The fence records its operation and a deadline; tenantry_enter()
-- lets the tenant in again once the deadline has passed (nobody finished the
-- move, so this is still its home). Before the registry flip the control plane
-- seals the fence (state 'moved', with the tenant's new backend and epoch),
-- only while the deadline holds; a sealed source refuses the tenant with
-- SQLSTATE TR002 and names where it went, so a stale app follows it without
-- waiting for the registry.
ALTER TABLE tenant_residency
    ADD COLUMN fenced_by    uuid,
    ADD COLUMN fenced_until timestamptz,
    ADD COLUMN moved_to     uuid,
    ADD COLUMN moved_epoch  bigint;
ALTER TABLE tenant_residency DROP CONSTRAINT tenant_residency_state_check;
ALTER TABLE tenant_residency ADD CONSTRAINT tenant_residency_state_check
    CHECK (state IN ('active', 'fenced', 'moved'));
ALTER TABLE tenant_residency ADD CONSTRAINT tenant_residency_moved_check
    CHECK ((state = 'moved') = (moved_to IS NOT NULL AND moved_epoch IS NOT NULL));

-- A fence without a deadline (an erasure's) holds until lifted; a move's
-- fence holds until fenced_until. TR001 = "not resident here at this epoch":
-- re-resolve. TR002 = "moved": DETAIL is '<backend id>:<epoch>' of its new home.
CREATE OR REPLACE FUNCTION tenantry_enter(p_tenant uuid, p_epoch bigint) RETURNS boolean
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = public, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(tenantry_lock_key(p_tenant));
    SELECT epoch, state, fenced_until, moved_to, moved_epoch INTO r
        FROM tenant_residency WHERE tenant_id = p_tenant;
    IF FOUND AND r.state = 'moved' THEN
        RAISE EXCEPTION 'tenant % has moved to another backend', p_tenant
            USING ERRCODE = 'TR002', DETAIL = r.moved_to::text || ':' || r.moved_epoch::text;
    END IF;
    IF NOT FOUND OR r.epoch <> p_epoch
        OR NOT (r.state = 'active'
                OR (r.state = 'fenced' AND r.fenced_until IS NOT NULL AND clock_timestamp() >= r.fenced_until)) THEN
        RAISE EXCEPTION 'tenant % is not resident here at epoch %', p_tenant, p_epoch
            USING ERRCODE = 'TR001';
    END IF;
    PERFORM set_config('app.tenant_id', p_tenant::text, true);
    RETURN true;
END $$;
REVOKE ALL ON FUNCTION tenantry_enter(uuid, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenantry_enter(uuid, bigint) TO {app_role};
