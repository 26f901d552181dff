-- Adoption of legacy estates runs as operations of kind `adopt`. Operations
-- of one `adopt-all` share `params->>'batch'`; the claim admits at most
-- `params->>'concurrency'` of a batch at once.
ALTER TABLE operations DROP CONSTRAINT operations_kind_check;
ALTER TABLE operations ADD CONSTRAINT operations_kind_check
    CHECK (kind IN ('provision', 'retire', 'promote', 'move', 'demote', 'erase', 'migrate', 'adopt'));
CREATE INDEX operations_batch_idx ON operations ((params->>'batch')) WHERE params ? 'batch';
CREATE INDEX estate_sources_tenant_idx ON estate_sources (tenant_id);
