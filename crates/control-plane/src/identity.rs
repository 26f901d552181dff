//! A tenant's identity providers, as registry data: put (create or replace),
//! list, remove, and a test that fetches the provider's discovery document
//! and keys. One issuer may serve many tenants, each by its organisation;
//! an (issuer, organisation) pair names at most one tenant, and an issuer
//! used without an organisation names only its own.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, FromQueryResult, TransactionTrait};
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use tenantry_core::db::{UNIQUE_VIOLATION, sqlstate};
use tenantry_core::identity::ProviderConfig;
use tenantry_core::registry::{PROVIDER_COLUMNS, ProviderColumns};

use crate::error::Error;
use crate::plane::ControlPlane;
use crate::registry::{audit, stmt};

/// An identity provider as the admin API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct IdentityProvider {
    pub tenant_id: Uuid,
    pub name: String,
    #[serde(flatten)]
    pub config: ProviderConfig,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(FromQueryResult)]
struct ProviderRow {
    tenant_id: Uuid,
    name: String,
    #[sea_orm(nested)]
    columns: ProviderColumns,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<ProviderRow> for IdentityProvider {
    type Error = Error;

    fn try_from(r: ProviderRow) -> Result<Self, Error> {
        Ok(IdentityProvider {
            tenant_id: r.tenant_id,
            name: r.name,
            config: r.columns.config()?,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

fn select() -> String {
    format!("SELECT tenant_id, name, {PROVIDER_COLUMNS}, created_at, updated_at FROM identity_providers")
}

/// A provider's name: what the path gives, checked like the registry does.
fn check_name(name: &str) -> Result<(), Error> {
    let ok = name.len() <= 63
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        return Ok(());
    }
    Err(Error::invalid(
        "invalid_name",
        "an identity provider's name is 1 to 63 of a-z, 0-9, `-` and `_`, starting with a letter or digit",
    ))
}

impl ControlPlane {
    /// Creates or replaces `tenant`'s provider `name`; `true` when created.
    pub async fn put_identity_provider(
        &self,
        actor: &str,
        tenant: Uuid,
        name: &str,
        mut config: ProviderConfig,
    ) -> Result<(IdentityProvider, bool), Error> {
        check_name(name)?;
        config.validate().map_err(|m| Error::invalid("invalid_identity_provider", m))?;
        config.issuer = config.issuer.trim_end_matches('/').to_string();
        config.email_domains = config.email_domains.iter().map(|d| d.to_ascii_lowercase()).collect();
        let txn = self.registry().begin().await?;
        let live = txn
            .query_one_raw(stmt(
                "SELECT 1 AS one FROM tenants WHERE id = $1 AND status NOT IN ('erasing', 'erased') FOR SHARE",
                vec![tenant.into()],
            ))
            .await?;
        if live.is_none() {
            return Err(Error::NotFound("tenant"));
        }
        // One issuer's providers are decided one at a time.
        txn.execute_raw(stmt(
            "SELECT pg_advisory_xact_lock(hashtext('tenantry.idp:' || $1))",
            vec![config.issuer.clone().into()],
        ))
        .await?;
        let others = ProviderRow::find_by_statement(stmt(
            &format!("{} WHERE issuer = $1 AND NOT (tenant_id = $2 AND name = $3)", select()),
            vec![config.issuer.clone().into(), tenant.into(), name.into()],
        ))
        .all(&txn)
        .await?
        .into_iter()
        .map(IdentityProvider::try_from)
        .collect::<Result<Vec<_>, _>>()?;
        // One provider per tenant and issuer; across tenants, an issuer is
        // shared only with an organisation on both sides, a different one.
        // (A `tenants_claim` is an organisation of its own: the tenant's slug.)
        let organised = |c: &ProviderConfig| c.org_value.is_some() || c.tenants_claim.is_some();
        let clash = others.iter().find(|o| {
            let theirs = &o.config.org_value;
            o.tenant_id == tenant
                || !organised(&o.config)
                || !organised(&config)
                || (theirs.is_some() && *theirs == config.org_value)
        });
        if let Some(clash) = clash {
            return Err(Error::Conflict {
                code: "issuer_taken",
                message: if clash.tenant_id == tenant {
                    format!("this tenant's provider `{}` already names issuer `{}`", clash.name, config.issuer)
                } else if let Some(org) =
                    clash.config.org_value.as_ref().filter(|o| config.org_value.as_ref() == Some(o))
                {
                    format!("issuer `{}` with organisation `{org}` already signs another tenant in", config.issuer)
                } else {
                    format!(
                        "issuer `{}` already signs another tenant in: one issuer serves several tenants only by \
                         organisation (`org_claim` and `org_value`, or `tenants_claim`, on each)",
                        config.issuer
                    )
                },
            });
        }
        let role_map = serde_json::to_value(&config.role_map).expect("roles serialize");
        let written = ProviderRow::find_by_statement(stmt(
            &format!(
                "INSERT INTO identity_providers AS p (tenant_id, name, {PROVIDER_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                 ON CONFLICT (tenant_id, name) DO UPDATE SET issuer = EXCLUDED.issuer, audience = EXCLUDED.audience, \
                     jwks_uri = EXCLUDED.jwks_uri, org_claim = EXCLUDED.org_claim, org_value = EXCLUDED.org_value, \
                     tenants_claim = EXCLUDED.tenants_claim, \
                     role_claim = EXCLUDED.role_claim, role_map = EXCLUDED.role_map, \
                     email_domains = EXCLUDED.email_domains, updated_at = now() \
                 RETURNING tenant_id, name, {PROVIDER_COLUMNS}, created_at, updated_at"
            ),
            vec![
                tenant.into(),
                name.into(),
                config.issuer.clone().into(),
                config.audience.clone().into(),
                config.jwks_uri.clone().into(),
                config.org_claim.clone().into(),
                config.org_value.clone().into(),
                config.tenants_claim.clone().into(),
                config.role_claim.clone().into(),
                role_map.into(),
                config.email_domains.clone().into(),
            ],
        ))
        .one(&txn)
        .await;
        let row = match written {
            Err(e) if sqlstate(&e).as_deref() == Some(UNIQUE_VIOLATION) => {
                return Err(Error::Conflict {
                    code: "issuer_taken",
                    message: format!("issuer `{}` with this organisation already signs a tenant in", config.issuer),
                });
            }
            other => other?.ok_or(Error::NotFound("identity provider"))?,
        };
        let created = row.created_at == row.updated_at;
        let view = IdentityProvider::try_from(row)?;
        audit(
            &txn,
            actor,
            if created { "identity_provider.create" } else { "identity_provider.update" },
            Some(tenant),
            json!({"name": name, "issuer": view.config.issuer, "org_value": view.config.org_value}),
        )
        .await?;
        txn.commit().await?;
        Ok((view, created))
    }

    /// `tenant`'s identity providers, by name.
    pub async fn identity_providers(&self, tenant: Uuid) -> Result<Vec<IdentityProvider>, Error> {
        ProviderRow::find_by_statement(stmt(
            &format!("{} WHERE tenant_id = $1 ORDER BY name", select()),
            vec![tenant.into()],
        ))
        .all(self.registry())
        .await?
        .into_iter()
        .map(IdentityProvider::try_from)
        .collect()
    }

    /// One of `tenant`'s identity providers.
    pub async fn identity_provider(&self, tenant: Uuid, name: &str) -> Result<IdentityProvider, Error> {
        ProviderRow::find_by_statement(stmt(
            &format!("{} WHERE tenant_id = $1 AND name = $2", select()),
            vec![tenant.into(), name.into()],
        ))
        .one(self.registry())
        .await?
        .ok_or(Error::NotFound("identity provider"))?
        .try_into()
    }

    /// Removes `tenant`'s provider `name`: its users can no longer sign in.
    pub async fn remove_identity_provider(&self, actor: &str, tenant: Uuid, name: &str) -> Result<(), Error> {
        let txn = self.registry().begin().await?;
        let res = txn
            .execute_raw(stmt(
                "DELETE FROM identity_providers WHERE tenant_id = $1 AND name = $2",
                vec![tenant.into(), name.into()],
            ))
            .await?;
        if res.rows_affected() == 0 {
            return Err(Error::NotFound("identity provider"));
        }
        audit(&txn, actor, "identity_provider.delete", Some(tenant), json!({"name": name})).await?;
        txn.commit().await?;
        Ok(())
    }
}

/// `POST .../identity-providers/{name}/test`: what the provider publishes.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProviderTest {
    /// Its tokens can be checked: discovery (when needed) and keys fetched,
    /// at least one key usable.
    pub ok: bool,
    pub discovery_url: String,
    /// The key set's address, configured or discovered.
    pub jwks_uri: Option<String>,
    pub keys: Vec<KeyInfo>,
    pub problems: Vec<String>,
}

/// One key of a provider's set.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KeyInfo {
    pub kid: Option<String>,
    /// The algorithm Tenantry accepts tokens signed by it with (RS256, ES256,
    /// EdDSA), or none: the key is not used.
    pub algorithm: Option<String>,
}

impl ControlPlane {
    /// Fetches the provider's discovery document (unless its key set is
    /// configured) and keys, and says what it found.
    pub async fn test_identity_provider(&self, config: &ProviderConfig) -> ProviderTest {
        use tenantry_core::identity::{discover, fetch_keys, http_client, signing_algorithm};
        let http = http_client();
        let mut problems = Vec::new();
        let discovered = match discover(&http, config).await {
            Ok(d) => Some(d.jwks_uri),
            Err(e) => {
                problems.push(format!("discovery: {e}"));
                None
            }
        };
        let jwks_uri = config.jwks_uri.clone().or(discovered);
        let mut keys = Vec::new();
        if let Some(uri) = &jwks_uri {
            match fetch_keys(&http, uri).await {
                Ok(set) => {
                    keys = set
                        .keys
                        .iter()
                        .map(|k| KeyInfo {
                            kid: k.common.key_id.clone(),
                            algorithm: signing_algorithm(k).map(|a| format!("{a:?}")),
                        })
                        .collect();
                    if !keys.iter().any(|k| k.algorithm.is_some()) {
                        problems.push("keys: no key with a `kid` for RS256, ES256 or EdDSA signatures".into());
                    }
                }
                Err(e) => problems.push(format!("keys: {e}")),
            }
        }
        let usable = keys.iter().any(|k| k.algorithm.is_some());
        // Discovery failing matters only when the key set comes from it.
        let ok = usable && (config.jwks_uri.is_some() || problems.is_empty());
        ProviderTest { ok, discovery_url: config.discovery_url(), jwks_uri, keys, problems }
    }
}
