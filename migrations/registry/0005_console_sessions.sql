-- Admin console sign-ins. The browser holds a random session id in an
-- HttpOnly, SameSite=Strict cookie; only its SHA-256 is stored. Each session
-- has its own CSRF token, required on every change the console makes.
CREATE TABLE console_sessions (
    id_hash    bytea PRIMARY KEY,
    actor      text NOT NULL,
    csrf       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz
);
CREATE INDEX console_sessions_expiry_idx ON console_sessions (expires_at);
