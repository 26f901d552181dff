//! Tenants in the registry: created on either tier, read, listed; their API
//! keys, settings and the audit log. Every change is audited with its actor.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbErr, FromQueryResult, TransactionTrait};
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use tenantry_core::db::{UNIQUE_VIOLATION, sqlstate};
use tenantry_core::{Engine, TenantSlug, TenantStatus, Tier, api_key, new_id};

use crate::backends::dedicated_db_name;
use crate::error::Error;
use crate::kind::enqueue;
use crate::operation::OperationKind;
use crate::plane::ControlPlane;
use crate::provision::{NewDatabase, Provision};
use crate::registry::{OperationView, audit, stmt};

/// Longest tenant page an admin list returns.
pub const MAX_PAGE: u64 = 1000;

/// A tenant as the admin API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TenantView {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub tier: Tier,
    pub status: TenantStatus,
    pub region: String,
    #[schema(value_type = Object)]
    pub settings: serde_json::Value,
    pub placement: Option<PlacementView>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PlacementView {
    pub backend_id: Uuid,
    pub backend_name: String,
    pub epoch: i64,
}

#[derive(FromQueryResult)]
struct TenantRow {
    id: Uuid,
    slug: String,
    name: String,
    tier: String,
    status: String,
    region: String,
    settings: serde_json::Value,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    backend_id: Option<Uuid>,
    backend_name: Option<String>,
    epoch: Option<i64>,
}

const TENANT_SELECT: &str = "SELECT t.id, t.slug, t.name, t.tier, t.status, t.region, t.settings, \
    t.created_at, t.updated_at, p.backend_id, b.name AS backend_name, p.epoch \
    FROM tenants t LEFT JOIN placements p ON p.tenant_id = t.id LEFT JOIN backends b ON b.id = p.backend_id";

impl TryFrom<TenantRow> for TenantView {
    type Error = Error;
    fn try_from(r: TenantRow) -> Result<Self, Error> {
        let corrupt = |e: tenantry_core::ParseError| Error::Db(DbErr::Custom(e.0));
        Ok(TenantView {
            id: r.id,
            slug: r.slug,
            name: r.name,
            tier: r.tier.parse().map_err(corrupt)?,
            status: r.status.parse().map_err(corrupt)?,
            region: r.region,
            settings: r.settings,
            placement: match (r.backend_id, r.backend_name, r.epoch) {
                (Some(backend_id), Some(backend_name), Some(epoch)) => {
                    Some(PlacementView { backend_id, backend_name, epoch })
                }
                _ => None,
            },
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

/// An API key as listed (never the secret).
#[derive(Debug, Clone, Serialize, FromQueryResult, utoipa::ToSchema)]
pub struct KeyView {
    pub id: Uuid,
    pub prefix: String,
    pub name: String,
    /// What its holder may do on the app API.
    pub role: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A new API key: the secret is shown here once and never again.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct IssuedKey {
    pub id: Uuid,
    pub key: String,
    pub prefix: String,
    pub role: tenantry_core::identity::Role,
}

/// A created tenant, and the operation provisioning it (dedicated tier).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Created {
    pub tenant: TenantView,
    pub operation: Option<OperationView>,
}

/// A request to create a tenant, already parsed.
pub struct NewTenant {
    /// Dedicated tier only: `logical` (default) or `rds`.
    pub engine: Option<Engine>,
    pub slug: TenantSlug,
    pub name: String,
    pub tier: Tier,
    pub region: Option<String>,
}

impl ControlPlane {
    /// Creates a tenant. Shared: placed at once on the least-loaded ready
    /// shared pool of its region. Dedicated: a `provision` operation is queued
    /// and returned; the tenant serves once it succeeds.
    pub async fn create_tenant(&self, actor: &str, req: NewTenant) -> Result<Created, Error> {
        let name = req.name.trim().to_string();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(Error::invalid("invalid_name", "name must be 1-200 characters"));
        }
        let region = req.region.unwrap_or_else(|| self.config().default_region.clone());
        if region.is_empty() || region.len() > 64 || !region.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(Error::invalid("invalid_region", format!("invalid region `{region}`")));
        }
        let pool = match req.tier {
            Tier::Shared => Some(self.pick_shared_pool(&region).await?),
            Tier::Dedicated if region != self.config().cluster.region => {
                return Err(Error::invalid(
                    "region_unavailable",
                    format!("no cluster for dedicated databases in region `{region}`"),
                ));
            }
            Tier::Dedicated => None,
        };
        let engine = match (req.tier, req.engine) {
            (Tier::Shared, None) => None,
            (Tier::Shared, Some(_)) => {
                return Err(Error::invalid("engine_not_applicable", "`engine` applies to the dedicated tier only"));
            }
            (Tier::Dedicated, engine) => Some(self.dedicated_engine(engine)?),
        };
        let id = new_id();
        let txn = self.registry().begin().await?;
        let inserted = txn
            .execute_raw(stmt(
                "INSERT INTO tenants (id, slug, name, tier, status, region) VALUES ($1, $2, $3, $4, 'provisioning', $5)",
                vec![id.into(), req.slug.as_str().into(), name.clone().into(), req.tier.as_str().into(), region.clone().into()],
            ))
            .await;
        match inserted {
            Err(e) if sqlstate(&e).as_deref() == Some(UNIQUE_VIOLATION) => {
                return Err(Error::Conflict {
                    code: "slug_taken",
                    message: format!("a tenant with slug `{}` already exists", req.slug),
                });
            }
            other => other?,
        };
        audit(&txn, actor, "tenant.create", Some(id), json!({"slug": req.slug, "tier": req.tier, "region": region}))
            .await?;
        let operation = match pool {
            Some(_) => None,
            None => Some(
                enqueue::<Provision>(
                    &txn,
                    OperationKind::Provision,
                    Some(id),
                    &NewDatabase {
                        database: dedicated_db_name(id),
                        slug: req.slug.to_string(),
                        engine: engine.unwrap_or(Engine::Logical),
                        instance: tenantry_provisioner::rds::instance_id(&id.simple().to_string()),
                    },
                    actor,
                )
                .await?,
            ),
        };
        txn.commit().await?;
        if let Some(pool) = pool {
            if let Err(e) = self.place_tenant(actor, id, &pool, None).await {
                tracing::warn!(tenant_id = %id, error = %e, "placing a shared tenant failed; removing it");
                let _ = self.registry().execute_raw(stmt("DELETE FROM tenants WHERE id = $1", vec![id.into()])).await;
                return Err(e);
            }
        } else {
            self.wake_workers();
        }
        let tenant = self.tenant(&id.to_string()).await?;
        let operation = match operation {
            Some(op) => Some(self.operation(op).await?),
            None => None,
        };
        Ok(Created { tenant, operation })
    }

    /// A tenant by id or slug.
    pub async fn tenant(&self, id_or_slug: &str) -> Result<TenantView, Error> {
        let (clause, value): (&str, sea_orm::Value) = match Uuid::parse_str(id_or_slug) {
            Ok(id) => ("t.id = $1", id.into()),
            Err(_) => ("t.slug = $1", id_or_slug.into()),
        };
        TenantRow::find_by_statement(stmt(&format!("{TENANT_SELECT} WHERE {clause}"), vec![value]))
            .one(self.registry())
            .await?
            .ok_or(Error::NotFound("tenant"))?
            .try_into()
    }

    /// Tenants in id (creation) order, after `after`.
    pub async fn tenants(&self, after: Option<Uuid>, limit: u64) -> Result<Vec<TenantView>, Error> {
        self.tenants_matching("", after, limit).await
    }

    /// A page of the tenants whose slug or name contains `text` (any case;
    /// empty: all), in id order after the cursor `after`. The registry's
    /// trigram indexes answer the match without a scan.
    pub async fn tenants_matching(
        &self,
        text: &str,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<TenantView>, Error> {
        let limit = limit.clamp(1, MAX_PAGE) as i64;
        let pattern = like_pattern(text);
        // The match only when asked for: `$3 = '' OR ...` would keep the
        // planner from the trigram indexes.
        let (matching, mut values) = match pattern.is_empty() {
            true => (String::new(), vec![]),
            false => (
                "AND (t.slug ILIKE '%' || $3 || '%' OR t.name ILIKE '%' || $3 || '%')".to_string(),
                vec![sea_orm::Value::from(pattern)],
            ),
        };
        values.splice(0..0, [after.into(), limit.into()]);
        TenantRow::find_by_statement(stmt(
            &format!("{TENANT_SELECT} WHERE ($1::uuid IS NULL OR t.id > $1) {matching} ORDER BY t.id LIMIT $2"),
            values,
        ))
        .all(self.registry())
        .await?
        .into_iter()
        .map(TenantView::try_from)
        .collect()
    }

    /// Issues an API key for an existing tenant.
    pub async fn create_api_key(&self, actor: &str, tenant_id: Uuid, name: &str) -> Result<IssuedKey, Error> {
        self.create_api_key_for(actor, tenant_id, name, tenantry_core::identity::Role::Admin).await
    }

    /// Issues an API key holding `role` on the app API.
    pub async fn create_api_key_for(
        &self,
        actor: &str,
        tenant_id: Uuid,
        name: &str,
        role: tenantry_core::identity::Role,
    ) -> Result<IssuedKey, Error> {
        if name.chars().count() > 100 {
            return Err(Error::invalid("invalid_name", "key name must be at most 100 characters"));
        }
        let key = api_key::generate();
        let id = new_id();
        let txn = self.registry().begin().await?;
        let res = txn
            .execute_raw(stmt(
                "INSERT INTO api_keys (id, tenant_id, key_hash, prefix, name, role) \
                 SELECT $1, t.id, $3, $4, $5, $6 FROM tenants t WHERE t.id = $2 AND t.status NOT IN ('erasing', 'erased')",
                vec![
                    id.into(),
                    tenant_id.into(),
                    key.hash.clone().into(),
                    key.display_prefix.clone().into(),
                    name.into(),
                    role.as_str().into(),
                ],
            ))
            .await?;
        if res.rows_affected() == 0 {
            return Err(Error::NotFound("tenant"));
        }
        audit(
            &txn,
            actor,
            "api_key.create",
            Some(tenant_id),
            json!({"key_id": id, "prefix": key.display_prefix, "role": role}),
        )
        .await?;
        txn.commit().await?;
        Ok(IssuedKey { id, key: key.secret, prefix: key.display_prefix, role })
    }

    /// Revokes a key; every app process drops it from its cache at once.
    /// A tenant's API keys, newest first.
    pub async fn api_keys(&self, tenant_id: Uuid) -> Result<Vec<KeyView>, Error> {
        Ok(KeyView::find_by_statement(stmt(
            "SELECT id, prefix, name, role, created_at, revoked_at FROM api_keys WHERE tenant_id = $1 ORDER BY created_at DESC",
            vec![tenant_id.into()],
        ))
        .all(self.registry())
        .await?)
    }

    pub async fn revoke_api_key(&self, actor: &str, tenant_id: Uuid, key_id: Uuid) -> Result<(), Error> {
        let txn = self.registry().begin().await?;
        let res = txn
            .execute_raw(stmt(
                "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND tenant_id = $2 AND revoked_at IS NULL",
                vec![key_id.into(), tenant_id.into()],
            ))
            .await?;
        if res.rows_affected() == 0 {
            return Err(Error::NotFound("api key"));
        }
        audit(&txn, actor, "api_key.revoke", Some(tenant_id), json!({"key_id": key_id})).await?;
        txn.commit().await?;
        Ok(())
    }
}

/// A tenant's own settings (overrides) and what is in effect with its tier's
/// defaults.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SettingsView {
    #[schema(value_type = Object)]
    pub settings: serde_json::Value,
    #[schema(value_type = Object)]
    pub effective: serde_json::Value,
    pub limits: tenantry_core::settings::Limits,
}

impl ControlPlane {
    async fn tier_defaults(&self, tier: &str) -> Result<serde_json::Value, Error> {
        let row = self
            .registry()
            .query_one_raw(stmt("SELECT settings FROM tier_settings WHERE tier = $1", vec![tier.into()]))
            .await?;
        Ok(match row {
            Some(r) => r.try_get("", "settings")?,
            None => serde_json::json!({}),
        })
    }

    /// A tenant's settings and the limits in effect.
    pub async fn tenant_settings(&self, tenant: &str) -> Result<SettingsView, Error> {
        let t = self.tenant(tenant).await?;
        let tier = self.tier_defaults(t.tier.as_str()).await?;
        let effective = tenantry_core::settings::effective(&tier, &t.settings);
        Ok(SettingsView { limits: tenantry_core::settings::limits_of(&effective), settings: t.settings, effective })
    }

    /// Changes a tenant's limits or flags (`null` restores the tier default).
    /// Audited; every app process picks it up through the registry's NOTIFY.
    pub async fn update_settings(
        &self,
        actor: &str,
        tenant: &str,
        patch: &serde_json::Value,
    ) -> Result<SettingsView, Error> {
        tenantry_core::settings::validate_patch(patch).map_err(|m| Error::invalid("invalid_settings", m))?;
        let t = self.tenant(tenant).await?;
        let txn = self.registry().begin().await?;
        let row = txn
            .query_one_raw(stmt("SELECT settings FROM tenants WHERE id = $1 FOR UPDATE", vec![t.id.into()]))
            .await?
            .ok_or(Error::NotFound("tenant"))?;
        let before: serde_json::Value = row.try_get("", "settings")?;
        let after = tenantry_core::settings::apply_patch(&before, patch);
        txn.execute_raw(stmt(
            "UPDATE tenants SET settings = $2, updated_at = now() WHERE id = $1",
            vec![t.id.into(), after.clone().into()],
        ))
        .await?;
        audit(&txn, actor, "tenant.settings", Some(t.id), serde_json::json!({"before": before, "after": after}))
            .await?;
        txn.commit().await?;
        self.tenant_settings(&t.id.to_string()).await
    }

    /// Changes a tier's defaults (same patch shape as a tenant's).
    pub async fn update_tier_settings(
        &self,
        actor: &str,
        tier: tenantry_core::Tier,
        patch: &serde_json::Value,
    ) -> Result<serde_json::Value, Error> {
        tenantry_core::settings::validate_patch(patch).map_err(|m| Error::invalid("invalid_settings", m))?;
        let txn = self.registry().begin().await?;
        let before = self.tier_defaults(tier.as_str()).await?;
        // Unlike a tenant's override, `null` in a default means "no limit": keep it.
        let mut after = before.clone();
        for section in ["limits", "flags"] {
            if let Some(changes) = patch.get(section).and_then(serde_json::Value::as_object) {
                for (k, v) in changes {
                    after[section][k] = v.clone();
                }
            }
        }
        txn.execute_raw(stmt(
            "UPDATE tier_settings SET settings = $2, updated_at = now() WHERE tier = $1",
            vec![tier.as_str().into(), after.clone().into()],
        ))
        .await?;
        audit(&txn, actor, "tier.settings", None, serde_json::json!({"tier": tier, "before": before, "after": after}))
            .await?;
        txn.commit().await?;
        Ok(after)
    }
}

/// One audit-log entry.
#[derive(Debug, Clone, Serialize, FromQueryResult, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub tenant_id: Option<Uuid>,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

/// What to select from the audit log.
#[derive(Debug, Default)]
pub struct AuditQuery {
    pub tenant: Option<Uuid>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub since: Option<DateTime<Utc>>,
    /// Entries older than this id (the previous page's `next_cursor`).
    pub before: Option<i64>,
    pub limit: u64,
}

impl ControlPlane {
    /// Audit entries, newest first.
    pub async fn audit_log(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, Error> {
        Ok(AuditEntry::find_by_statement(stmt(
            "SELECT id, at, actor, action, tenant_id, details FROM audit_log \
             WHERE ($1::uuid IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR actor = $2) \
               AND ($3::text IS NULL OR action = $3 OR action LIKE $3 || '.%') \
               AND ($4::timestamptz IS NULL OR at >= $4) AND ($5::bigint IS NULL OR id < $5) \
             ORDER BY id DESC LIMIT $6",
            vec![
                q.tenant.into(),
                q.actor.clone().into(),
                q.action.clone().into(),
                q.since.into(),
                q.before.into(),
                (q.limit.clamp(1, MAX_PAGE) as i64).into(),
            ],
        ))
        .all(self.registry())
        .await?)
    }
}

/// `text` for `ILIKE '%' || text || '%'`: its own `%`, `_` and `\\` matched literally.
pub(crate) fn like_pattern(text: &str) -> String {
    text.trim().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}
