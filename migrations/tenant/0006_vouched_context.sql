-- Tenant schema 6: a tenant context that only the app process can vouch for.
--
-- Until schema 5 the row policies trusted app.tenant_id, which the app role
-- can set itself (set_config, SET, the read gate's own idiom) or have set by
-- calling tenantry_enter() with any tenant: one SQL injection read every
-- tenant. Now:
--
--  * The app holds a gate key that the database never shows it: the control
--    plane installs each key's HMAC pads in tenantry_gate_keys, readable by the
--    owner only. Every tenant transaction starts with tenantry_gate(), whose
--    proof is HMAC-SHA256 under that key of (tenant, epoch, binding); nothing
--    is set unless it verifies.
--  * The binding makes a proof good for one transaction on one connection. On
--    a direct connection: the backend's pid and the next value of this
--    session's gate counter, an unlogged sequence tenantry_gate.n<pid> that
--    tenantry_gate_open() starts at a random value and every gate advances
--    (a sequence is never rolled back, so no proof is good twice, and a
--    counter opened again voids every proof made for the old one). Behind a
--    transaction pooler, where the app cannot know the server backend, every
--    message claims its proof first, in a transaction of its own that
--    commits: tenantry_gate_claim() verifies a proof over a random nonce and
--    the app's clock (within tenantry_gate_window() of the backend's),
--    records the nonce as used (tenantry_gate_nonces) and marks it claimed by
--    this server session (sequence tenantry_gate.c<pid>); the gate in the
--    same message then accepts that nonce on this session only, once. Neither
--    record is undone by a rollback of what follows.
--  * The gate then sets app.tenant_id and writes a digest of (tenant, this
--    transaction's start) into the session's context sequence
--    tenantry_gate.t<pid>. The policies read the tenant through
--    tenantry_current_tenant(), which returns app.tenant_id only while that
--    sequence holds its digest for this transaction: a GUC set by hand, or a
--    context carried into another transaction or connection, yields NULL and
--    so no row. Only the owner can write either sequence (schema
--    tenantry_gate is the owner's; sequences are not temporary objects, so
--    DISCARD TEMP cannot drop them either).
--  * The owner's own sessions (migrations, moves, adoption, erasure, usage)
--    are trusted as before: RLS is forced on the owner too and it sets
--    app.tenant_id itself.
--
-- HMAC is computed from the built-in sha256() (no extension needed, RDS
-- included): sha256(opad || sha256(ipad || message)), the pads being the key
-- XOR 0x36 / 0x5c as RFC 2104 defines them.

CREATE SCHEMA tenantry_gate;
REVOKE ALL ON SCHEMA tenantry_gate FROM PUBLIC;
GRANT USAGE ON SCHEMA tenantry_gate TO {app_role};

CREATE TABLE tenantry_gate_keys (
    kid          integer PRIMARY KEY,
    ipad         bytea NOT NULL CHECK (length(ipad) = 64),
    opad         bytea NOT NULL CHECK (length(opad) = 64),
    installed_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON tenantry_gate_keys FROM PUBLIC;

-- Pooled proofs already claimed, kept for twice the window (purged by the
-- claims themselves). Unlogged: after a crash it is empty, and every proof
-- older than the window is refused anyway.
CREATE UNLOGGED TABLE tenantry_gate_nonces (
    nonce   uuid PRIMARY KEY,
    used_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON tenantry_gate_nonces FROM PUBLIC;

-- How far a pooled proof's clock may be from the backend's, in milliseconds.
CREATE FUNCTION tenantry_gate_window() RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 30000::bigint $$;

-- The context digest: 64 bits of (tenant, this transaction's start). The
-- sequences hold no secret; what makes the context unforgeable is that only
-- the gate, as the owner, writes them. So the digest need not be a MAC, only
-- a function whose collisions an attacker cannot steer: the policy accepts
-- tenant T in a transaction that started at t2 when digest(T, t2) equals the
-- value the gate wrote for (A, t1). T must be a real tenant's id to reach any
-- row and t2 is the server's clock at BEGIN, neither chosen freely; even one
-- who inverts the hash (PostgreSQL's hash_any, not cryptographic) for a
-- victim's id gets a start time spread over 2^64 microseconds, not one in the
-- next hours, so a hit costs on the order of 2^64 attempts. It is four
-- function calls and no text: the policies evaluate it once per statement,
-- and every node of it is compiled per statement.
CREATE FUNCTION tenantry_gate_digest(p_tenant uuid) RETURNS bigint
    LANGUAGE sql STABLE PARALLEL RESTRICTED
    AS $$ SELECT pg_catalog.uuid_hash_extended(p_tenant,
                 pg_catalog.timestamp_hash_extended(pg_catalog.timezone('UTC', pg_catalog.now()), 6)) $$;

-- 60 bits of sha256 of a claimed pooled proof's nonce and tenant.
CREATE FUNCTION tenantry_gate_claim_digest(p_nonce uuid, p_tenant uuid, p_epoch bigint) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT ('x' || pg_catalog.substr(pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(
                 p_nonce::pg_catalog.text || '|' || p_tenant::pg_catalog.text || '|' || p_epoch::pg_catalog.text,
                 'UTF8')), 'hex'), 1, 15))::pg_catalog.bit(60)::pg_catalog.int8 $$;

-- Drops the gate sequences of sessions of this database that have ended.
CREATE FUNCTION tenantry_gate_sweep() RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, public
AS $$
DECLARE
    stale record;
BEGIN
    FOR stale IN
        SELECT c.relname FROM pg_class c
         WHERE c.relnamespace = 'tenantry_gate'::regnamespace AND c.relkind = 'S'
           AND substr(c.relname, 2) <> pg_backend_pid()::text
           AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                            WHERE a.datname = current_database() AND substr(c.relname, 2) = a.pid::text)
    LOOP
        EXECUTE format('DROP SEQUENCE IF EXISTS tenantry_gate.%I', stale.relname);
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION tenantry_gate_sweep() FROM PUBLIC;

-- This session's context sequence (t<pid>, readable by the app role, which
-- the policies need) and, through a pooler, its claim sequence (c<pid>),
-- made on first use. A sequence left by an ended session whose pid comes
-- back holds a digest of a transaction long gone.
CREATE FUNCTION tenantry_gate_sequences(p_claims boolean) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, public
AS $$
BEGIN
    IF to_regclass('tenantry_gate.t' || pg_backend_pid()) IS NULL THEN
        PERFORM tenantry_gate_sweep();
        EXECUTE format('CREATE UNLOGGED SEQUENCE IF NOT EXISTS tenantry_gate.%I MINVALUE %s',
                       't' || pg_backend_pid(), -9223372036854775807 - 1);
        EXECUTE format('GRANT SELECT ON SEQUENCE tenantry_gate.%I TO {app_role}', 't' || pg_backend_pid());
    END IF;
    IF p_claims AND to_regclass('tenantry_gate.c' || pg_backend_pid()) IS NULL THEN
        EXECUTE format('CREATE UNLOGGED SEQUENCE IF NOT EXISTS tenantry_gate.%I MINVALUE 0',
                       'c' || pg_backend_pid());
    END IF;
END $$;
REVOKE ALL ON FUNCTION tenantry_gate_sequences(boolean) FROM PUBLIC;

-- Opens the gate on this connection: a fresh counter at a random start, which
-- the app's first proof on the connection uses. Opening again starts a new
-- counter, which voids every proof made for the old one.
CREATE FUNCTION tenantry_gate_open() RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, public
AS $$
DECLARE
    start bigint := ('x' || substr(md5(gen_random_uuid()::text), 1, 15))::bit(60)::bigint;
BEGIN
    PERFORM tenantry_gate_sweep();
    PERFORM tenantry_gate_sequences(false);
    IF to_regclass('tenantry_gate.n' || pg_backend_pid()) IS NOT NULL THEN
        EXECUTE format('DROP SEQUENCE tenantry_gate.%I', 'n' || pg_backend_pid());
    END IF;
    EXECUTE format('CREATE UNLOGGED SEQUENCE tenantry_gate.%I MINVALUE %s START %s',
                   'n' || pg_backend_pid(), start, start);
    RETURN start;
END $$;
REVOKE ALL ON FUNCTION tenantry_gate_open() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenantry_gate_open() TO {app_role};

-- A pooled message's first statement, in a transaction of its own: verifies
-- the proof, records its nonce as used and marks it claimed by this session.
-- TR003 when the proof is not the app's, outside its window or used before.
CREATE FUNCTION tenantry_gate_claim(p_tenant uuid, p_epoch bigint, p_kid integer, p_nonce uuid, p_at_ms bigint,
                                    p_proof bytea) RETURNS boolean
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, public
AS $$
DECLARE
    k record;
BEGIN
    SELECT ipad, opad INTO k FROM tenantry_gate_keys WHERE kid = p_kid;
    IF k.ipad IS NULL OR p_proof IS DISTINCT FROM sha256(k.opad || sha256(k.ipad || convert_to(
            concat_ws('|', 'pooled', p_tenant, p_epoch, p_nonce, p_at_ms), 'UTF8'))) THEN
        RAISE EXCEPTION 'the tenant context was not vouched for by the app' USING ERRCODE = 'TR003';
    END IF;
    IF abs((EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::int8 - p_at_ms) > tenantry_gate_window() THEN
        RAISE EXCEPTION 'the tenant gate''s proof is outside its time window' USING ERRCODE = 'TR003';
    END IF;
    -- Now and then, forget nonces too old to be accepted anyway.
    IF random() < 0.001 THEN
        DELETE FROM tenantry_gate_nonces WHERE used_at < now() - 2 * tenantry_gate_window() * interval '1 millisecond';
    END IF;
    INSERT INTO tenantry_gate_nonces (nonce) VALUES (p_nonce) ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the tenant gate''s proof was used before' USING ERRCODE = 'TR003';
    END IF;
    PERFORM tenantry_gate_sequences(true);
    PERFORM setval(('tenantry_gate.c' || pg_backend_pid())::regclass,
                   tenantry_gate_claim_digest(p_nonce, p_tenant, p_epoch));
    RETURN true;
END $$;
REVOKE ALL ON FUNCTION tenantry_gate_claim(uuid, bigint, integer, uuid, bigint, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenantry_gate_claim(uuid, bigint, integer, uuid, bigint, bytea) TO {app_role};

-- The gate: the first statement of every tenant transaction. It verifies the
-- proof, then checks residency as tenantry_enter did since schema 4, then sets
-- the context. p_admitted says who checks residency: NULL, a writing
-- transaction: the gate, after the fence's shared lock (in a new statement
-- and so a new snapshot); a one-statement read passes whether its own
-- statement found the tenant admitted over tenantry_admitted (an InitPlan in
-- the read's snapshot, no lock: a SELECT writes nothing a fence must wait
-- for); false makes the gate look itself, to say why not (or to admit a
-- tenant whose fence has just lapsed). The proof decides whether anything is
-- set; p_admitted only spares a lookup that the statement has made.
--
-- On a direct connection p_n is the proof's counter value and p_nonce is
-- NULL; through a pooler p_nonce names the proof this message claimed (and
-- p_n, p_at_ms, p_proof are not used). SQLSTATEs:
-- TR001 not resident at this epoch; TR002 moved (DETAIL '<backend>:<epoch>');
-- TR003 the proof is not the app's (forged, replayed, another key, outside
-- its time window); TR004 this connection's gate is not open or its counter
-- is elsewhere (the app opens it again).
--
-- No SET search_path (it costs a configuration push on every request), no
-- PERFORM (each is an executor run): every name is schema-qualified instead,
-- so a caller's search_path or temporary objects change nothing.
CREATE FUNCTION tenantry_gate(p_tenant uuid, p_epoch bigint, p_kid integer, p_n bigint, p_nonce uuid,
                              p_at_ms bigint, p_proof bytea, p_admitted boolean) RETURNS boolean
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
AS $$
DECLARE
    k record;
    r record;
    context pg_catalog.regclass;
    claim pg_catalog.regclass;
    message pg_catalog.text;
    done pg_catalog.text;
BEGIN
    -- The hot path, a direct read whose statement found the tenant admitted:
    -- one query, whose CASE orders the steps (proof, then counter, then the
    -- context). Per transaction plpgsql compiles every expression it meets
    -- and starts an executor for every query, so the whole of it is one.
    -- Anything amiss (a wrong proof, the counter elsewhere, no context
    -- sequence) falls through to the checks below, which say which: a wrong
    -- proof has advanced nothing; a counter found elsewhere has moved on, and
    -- moves on again below (TR004 either way). (CASE, not AND: NULL AND x
    -- evaluates x, and a writing transaction's p_admitted is NULL.)
    IF (CASE WHEN p_admitted IS TRUE AND p_nonce IS NULL THEN (
        SELECT CASE WHEN p_proof = pg_catalog.sha256(key.opad || pg_catalog.sha256(key.ipad || pg_catalog.convert_to(
                             pg_catalog.concat_ws('|', 'gate', p_tenant, p_epoch, pg_catalog.pg_backend_pid(), p_n),
                             'UTF8')))
                     AND pg_catalog.nextval(pg_catalog.to_regclass('tenantry_gate.n' || pg_catalog.pg_backend_pid()))
                         = p_n
                    THEN pg_catalog.setval(pg_catalog.to_regclass('tenantry_gate.t' || pg_catalog.pg_backend_pid()),
                                           public.tenantry_gate_digest(p_tenant)) IS NOT NULL
                         AND pg_catalog.set_config('app.tenant_id', p_tenant::pg_catalog.text, true) IS NOT NULL
               END
          FROM public.tenantry_gate_keys key WHERE key.kid = p_kid) ELSE false END) THEN
        RETURN true;
    END IF;
    IF p_nonce IS NULL THEN
        SELECT ipad, opad INTO k FROM public.tenantry_gate_keys WHERE kid = p_kid;
        message := pg_catalog.concat_ws('|', 'gate', p_tenant, p_epoch, pg_catalog.pg_backend_pid(), p_n);
        IF k.ipad IS NULL OR p_proof IS DISTINCT FROM pg_catalog.sha256(k.opad
                || pg_catalog.sha256(k.ipad || pg_catalog.convert_to(message, 'UTF8'))) THEN
            RAISE EXCEPTION 'the tenant context was not vouched for by the app' USING ERRCODE = 'TR003';
        END IF;
        context := pg_catalog.to_regclass('tenantry_gate.t' || pg_catalog.pg_backend_pid());
        IF context IS NULL OR pg_catalog.nextval(pg_catalog.to_regclass('tenantry_gate.n' || pg_catalog.pg_backend_pid()))
                IS DISTINCT FROM p_n THEN
            RAISE EXCEPTION 'the tenant gate is not open on this connection at this counter' USING ERRCODE = 'TR004';
        END IF;
    ELSE
        -- Claimed by this session in this message (tenantry_gate_claim
        -- verified the proof); a claim is good once.
        claim := pg_catalog.to_regclass('tenantry_gate.c' || pg_catalog.pg_backend_pid());
        IF claim IS NULL OR pg_catalog.pg_sequence_last_value(claim)
                IS DISTINCT FROM public.tenantry_gate_claim_digest(p_nonce, p_tenant, p_epoch) THEN
            RAISE EXCEPTION 'the tenant gate''s proof was not claimed on this connection' USING ERRCODE = 'TR003';
        END IF;
        done := pg_catalog.setval(claim, 0, false);
        context := pg_catalog.to_regclass('tenantry_gate.t' || pg_catalog.pg_backend_pid());
    END IF;
    IF p_admitted IS NOT TRUE THEN
        IF p_admitted IS NULL THEN
            done := pg_catalog.pg_advisory_xact_lock_shared(public.tenantry_lock_key(p_tenant));
        END IF;
        SELECT epoch, state, fenced_until, moved_to, moved_epoch INTO r
            FROM public.tenant_residency WHERE tenant_id = p_tenant;
        IF FOUND AND r.state = 'moved' THEN
            RAISE EXCEPTION 'tenant % has moved to another backend', p_tenant
                USING ERRCODE = 'TR002', DETAIL = r.moved_to::pg_catalog.text || ':' || r.moved_epoch::pg_catalog.text;
        END IF;
        IF NOT FOUND OR r.epoch <> p_epoch
            OR NOT (r.state = 'active'
                    OR (r.state = 'fenced' AND r.fenced_until IS NOT NULL
                        AND pg_catalog.clock_timestamp() >= r.fenced_until)) THEN
            RAISE EXCEPTION 'tenant % is not resident here at epoch %', p_tenant, p_epoch
                USING ERRCODE = 'TR001';
        END IF;
    END IF;
    done := pg_catalog.setval(context, public.tenantry_gate_digest(p_tenant));
    done := pg_catalog.set_config('app.tenant_id', p_tenant::pg_catalog.text, true);
    RETURN true;
END $$;
REVOKE ALL ON FUNCTION tenantry_gate(uuid, bigint, integer, bigint, uuid, bigint, bytea, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenantry_gate(uuid, bigint, integer, bigint, uuid, bigint, bytea, boolean) TO {app_role};

-- The tenant the policies see: app.tenant_id while this session's context
-- sequence holds its digest for this transaction (or in the owner's own
-- session), else NULL. Plain SQL, so it is inlined into the policies'
-- InitPlan: once per statement, no function call. (The owner's name is
-- written in when the migration runs, as the owner.)
DO $do$
BEGIN
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION tenantry_current_tenant() RETURNS uuid
            LANGUAGE sql VOLATILE PARALLEL RESTRICTED
            AS $$ SELECT CASE
                WHEN SESSION_USER = %L
                  OR pg_catalog.pg_sequence_last_value(
                         pg_catalog.to_regclass('tenantry_gate.t' || pg_catalog.pg_backend_pid()))
                     = public.tenantry_gate_digest(
                         NULLIF(pg_catalog.current_setting('app.tenant_id', true), '')::pg_catalog.uuid)
                THEN NULLIF(pg_catalog.current_setting('app.tenant_id', true), '')::pg_catalog.uuid END $$
    $f$, CURRENT_USER);
END $do$;
REVOKE ALL ON FUNCTION tenantry_current_tenant() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenantry_current_tenant() TO {app_role};

-- Every policy reads the tenant once per statement (an InitPlan).
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['assets', 'maintenance_schedules', 'asset_issues', 'maintenance_overdue',
                             'tenantry_move_sentinels'] LOOP
        EXECUTE format('ALTER POLICY tenant_isolation ON %I USING (tenant_id = (SELECT tenantry_current_tenant())) '
                       'WITH CHECK (tenant_id = (SELECT tenantry_current_tenant()))', t);
    END LOOP;
END $$;

-- The forgeable way in is gone: tenantry_enter(tenant, epoch) set
-- app.tenant_id for anyone who named a resident tenant. (tenantry_admitted
-- stays: it says which tenants are admitted here at which epoch, which the
-- app knows from the registry; setting app.tenant_id beside it, as schema 5's
-- read gate did, no longer shows a row.)
DROP FUNCTION tenantry_enter(uuid, bigint);
