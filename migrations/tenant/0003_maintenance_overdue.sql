-- The overdue-maintenance job's record: one row per schedule and due date for
-- which it opened an asset issue. The unique key makes the job exactly-once
-- per due date even when several processes visit the same tenant at once
-- (the marker is inserted first, ON CONFLICT DO NOTHING); marking a schedule
-- done moves its due date, so the next lapse opens a new issue. Deleting the
-- issue keeps the marker (issue_id becomes null) so it is not reopened.
CREATE TABLE maintenance_overdue (
    tenant_id   uuid NOT NULL,
    id          uuid NOT NULL,
    schedule_id uuid NOT NULL,
    due_at      timestamptz NOT NULL,
    issue_id    uuid,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, schedule_id, due_at),
    FOREIGN KEY (tenant_id, schedule_id) REFERENCES maintenance_schedules (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, issue_id) REFERENCES asset_issues (tenant_id, id) ON DELETE SET NULL (issue_id)
);
CREATE INDEX maintenance_overdue_issue_idx ON maintenance_overdue (tenant_id, issue_id);
ALTER TABLE maintenance_overdue ENABLE ROW LEVEL SECURITY;
ALTER TABLE maintenance_overdue FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON maintenance_overdue
    USING (tenant_id = tenantry_current_tenant()) WITH CHECK (tenant_id = tenantry_current_tenant());
GRANT SELECT, INSERT, UPDATE, DELETE ON maintenance_overdue TO {app_role};
