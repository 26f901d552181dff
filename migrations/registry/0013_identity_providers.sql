-- A tenant's identity providers: OIDC issuers whose tokens sign the
-- tenant's users in to the app API. One issuer may serve many tenants, each
-- by its organisation (`org_value` of the `org_claim`); an issuer and
-- organisation name at most one tenant (the control plane also refuses an
-- issuer without an organisation beside any other tenant's use of it).
CREATE TABLE identity_providers (
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name          text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    issuer        text NOT NULL,
    audience      text NOT NULL,
    jwks_uri      text,
    org_claim     text,
    org_value     text,
    role_claim    text,
    role_map      jsonb NOT NULL DEFAULT '{}',
    email_domains text[] NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name),
    CHECK ((org_claim IS NULL) = (org_value IS NULL))
);
CREATE UNIQUE INDEX identity_providers_issuer_org ON identity_providers (issuer, coalesce(org_value, ''));
GRANT SELECT ON identity_providers TO {app_role};
