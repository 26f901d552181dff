-- Usage metering. App processes count requests, errors and database time per
-- tenant in memory and append the deltas here every few seconds: the app role
-- may INSERT into this one table and nothing else (it cannot read it back, nor
-- change any other registry table). The control plane folds the samples into
-- hourly and daily rollups and deletes them, in one statement.
CREATE TABLE usage_samples (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     uuid NOT NULL,
    at            timestamptz NOT NULL,
    requests      bigint NOT NULL CHECK (requests >= 0),
    client_errors bigint NOT NULL CHECK (client_errors >= 0),
    server_errors bigint NOT NULL CHECK (server_errors >= 0),
    db_time_us    bigint NOT NULL CHECK (db_time_us >= 0)
);
GRANT INSERT ON usage_samples TO {app_role};

-- Per tenant and hour / day (UTC). Storage columns hold the latest measurement
-- taken in the period. No foreign key: an erased tenant's usage stays for billing.
CREATE TABLE usage_rollups (
    tenant_id     uuid NOT NULL,
    granularity   text NOT NULL CHECK (granularity IN ('hour', 'day')),
    period_start  timestamptz NOT NULL,
    requests      bigint NOT NULL DEFAULT 0,
    client_errors bigint NOT NULL DEFAULT 0,
    server_errors bigint NOT NULL DEFAULT 0,
    db_time_us    bigint NOT NULL DEFAULT 0,
    rows          bigint,
    storage_bytes bigint,
    PRIMARY KEY (tenant_id, granularity, period_start)
);
CREATE INDEX usage_rollups_period_idx ON usage_rollups (granularity, period_start);

-- The latest storage measurement per tenant: rows and bytes per table (on a
-- shared pool the tenant's share of each table, by rows), and in all.
CREATE TABLE usage_storage (
    tenant_id   uuid PRIMARY KEY,
    backend_id  uuid NOT NULL,
    rows        bigint NOT NULL,
    bytes       bigint NOT NULL,
    tables      jsonb NOT NULL,
    measured_at timestamptz NOT NULL
);
