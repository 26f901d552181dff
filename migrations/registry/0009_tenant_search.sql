-- Searching tenants by slug or name at 100,000 tenants and more: trigram
-- indexes answer `ILIKE '%text%'` without a sequential scan. pg_trgm is a
-- trusted extension (PostgreSQL 13 and later, RDS included), so the registry
-- database's owner may create it; where it is not installed the search still
-- answers, by scanning.
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_trgm;
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'pg_trgm is not available (%): tenant search scans', SQLERRM;
END $$;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
        CREATE INDEX IF NOT EXISTS tenants_slug_trgm ON tenants USING gin (slug gin_trgm_ops);
        CREATE INDEX IF NOT EXISTS tenants_name_trgm ON tenants USING gin (name gin_trgm_ops);
    END IF;
END $$;
