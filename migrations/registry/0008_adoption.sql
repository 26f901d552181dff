-- Adoption of legacy estates runs as operations of kind `adopt`, and its way
-- back as `revert`, after which the tenant is `reverted` (no longer served). Operations
-- of one `adopt-all` share `params->>'batch'`; the claim admits at most
-- `params->>'concurrency'` of a batch at once.
ALTER TABLE operations DROP CONSTRAINT operations_kind_check;
ALTER TABLE operations ADD CONSTRAINT operations_kind_check
    CHECK (kind IN ('provision', 'retire', 'promote', 'move', 'demote', 'erase', 'migrate', 'adopt', 'revert'));
ALTER TABLE tenants DROP CONSTRAINT tenants_status_check;
ALTER TABLE tenants ADD CONSTRAINT tenants_status_check
    CHECK (status IN ('provisioning', 'active', 'suspended', 'erasing', 'erased', 'failed', 'reverted'));
CREATE INDEX operations_batch_idx ON operations ((params->>'batch')) WHERE params ? 'batch';
CREATE INDEX estate_sources_tenant_idx ON estate_sources (tenant_id);
