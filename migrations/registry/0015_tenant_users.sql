-- People (issue 25), part two.
--
-- A `tenants` claim: a provider that names its tenant by the tenant's slug in
-- a list claim of the token (a consultant's token naming every tenant they
-- serve). It is an organisation of its own: one per tenant at an issuer.
ALTER TABLE identity_providers
    ADD COLUMN tenants_claim text,
    ADD CONSTRAINT identity_providers_one_tenant_claim CHECK (tenants_claim IS NULL OR org_claim IS NULL);
DROP INDEX identity_providers_issuer_org;
CREATE UNIQUE INDEX identity_providers_issuer_org ON identity_providers
    (issuer, coalesce(org_value, CASE WHEN tenants_claim IS NULL THEN '' ELSE 'tenant:' || tenant_id::text END));

-- Sign-ins, as the app saw them: appended like usage samples (the app role
-- may INSERT and not read back), folded into `tenant_users` by the control
-- plane and deleted, in one statement.
CREATE TABLE sign_in_samples (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id uuid NOT NULL,
    issuer    text NOT NULL,
    subject   text NOT NULL,
    email     text,
    name      text,
    role      text NOT NULL,
    first_at  timestamptz NOT NULL,
    last_at   timestamptz NOT NULL
);
GRANT INSERT ON sign_in_samples TO {app_role};

-- Every person who signed in to a tenant. The app reads it (`GET /v1/users`);
-- only the control plane writes it.
CREATE TABLE tenant_users (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    issuer     text NOT NULL,
    subject    text NOT NULL,
    email      text,
    name       text,
    role       text NOT NULL,
    first_seen timestamptz NOT NULL,
    last_seen  timestamptz NOT NULL,
    UNIQUE (tenant_id, issuer, subject)
);
GRANT SELECT ON tenant_users TO {app_role};

-- A person erased: their sign-ins seen before the erasure (a sample not yet
-- folded) do not bring them back. Keyed by a pseudonym (sha-256 of the
-- issuer and subject), kept a day.
CREATE TABLE user_erasures (
    tenant_id uuid NOT NULL,
    pseudonym text NOT NULL,
    erased_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, pseudonym)
);
