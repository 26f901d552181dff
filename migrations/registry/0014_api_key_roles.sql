-- An API key carries a role, like a tenant user's token (issue 25): what its
-- holder may do on the app API. Keys issued before hold `admin`, as they
-- always could do everything.
ALTER TABLE api_keys
    ADD COLUMN role text NOT NULL DEFAULT 'admin' CHECK (role IN ('viewer', 'technician', 'manager', 'admin'));
