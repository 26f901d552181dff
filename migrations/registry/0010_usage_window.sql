-- The recommendations' database time per tenant over their window, kept up to
-- date as samples are folded instead of summed from the rollups on every pass:
-- each fold adds its samples (those inside the window), and when the window's
-- first hour moves on, the hours that left it are subtracted. `since` is the
-- first hour inside the window; one row, locked by every fold.
CREATE TABLE usage_window (
    tenant_id  uuid PRIMARY KEY,
    db_time_us bigint NOT NULL DEFAULT 0
);
CREATE TABLE usage_window_state (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    hours    integer NOT NULL CHECK (hours > 0),
    since    timestamptz NOT NULL
);
