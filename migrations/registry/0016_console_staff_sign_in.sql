-- Staff sign in to the console through the operator's identity provider
-- (issue 25): an authorization code flow with PKCE. Each started sign-in is
-- kept here until its callback (once) or ten minutes: the hash of its
-- `state`, the hash of the browser cookie it is bound to, its PKCE verifier
-- and nonce, and where the user was going.
CREATE TABLE console_sign_ins (
    state_hash   bytea PRIMARY KEY,
    browser_hash bytea NOT NULL,
    verifier     text NOT NULL,
    nonce        text NOT NULL,
    next         text NOT NULL,
    expires_at   timestamptz NOT NULL
);

-- A session of a member of staff holds their staff roles; a session opened
-- with the admin token holds none here (NULL: every role, while the token is
-- today's and switched on).
ALTER TABLE console_sessions ADD COLUMN roles text[];
