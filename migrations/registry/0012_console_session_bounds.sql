-- Console sessions end when the admin token changes (each records a
-- fingerprint of the token it signed in with: SHA-256 of a fixed prefix and
-- the token, never the token) and after an idle time (last_seen_at, moved
-- forward at most once a minute by the requests of the session). Sessions
-- from before this migration have no fingerprint, so they end now.
ALTER TABLE console_sessions
    ADD COLUMN token_fingerprint bytea,
    ADD COLUMN last_seen_at timestamptz NOT NULL DEFAULT now();
UPDATE console_sessions SET revoked_at = now() WHERE revoked_at IS NULL;
