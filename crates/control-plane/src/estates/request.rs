//! Asking for adoptions: one source (`adopt`), every source not adopted yet
//! (`adopt-all`, at most `concurrency` at once), and the end of the way back
//! (`release`, optionally dropping the legacy schema or database). What can
//! be checked before anything moves is checked here: the source exists and
//! maps without problems, the estate still grants what adoption needs, the
//! target, the slug.

use sea_orm::sqlx::{self, AssertSqlSafe};
use sea_orm::{ConnectionTrait, TransactionTrait};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use tenantry_core::{BackendKind, BackendStatus, Engine, TenantSlug, Tier, new_id};
use tenantry_provisioner::quote_ident;

use super::Layout;
use super::adopt::{Adopt, AdoptParams, target_conn};
use super::legacy::Source;
use super::revert::{Revert, RevertParams, Unwritable, adoption_for, trial_write_back, unwritable, unwritable_error};
use super::sources::{SourceState, parse_state, source_names};
use crate::error::Error;
use crate::kind::enqueue;
use crate::operation::OperationKind;
use crate::plane::ControlPlane;
use crate::provision::NewDatabase;
use crate::registry::{OperationView, audit, stmt};

/// `POST /v1/estates/{id}/adopt`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdoptRequest {
    /// The schema (or database) to adopt.
    pub source: String,
    /// The new tenant's slug (`^[a-z0-9][a-z0-9-]{1,62}$`).
    pub slug: String,
    /// The new tenant's name (default: the source's).
    pub name: Option<String>,
    pub tier: Tier,
    /// Shared tier: the pool to land on (default: the emptiest of the region).
    pub target_backend_id: Option<Uuid>,
    /// Dedicated tier: `logical` (default) or `rds`.
    pub engine: Option<Engine>,
    pub region: Option<String>,
}

/// `POST /v1/estates/{id}/adopt-all`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdoptAllRequest {
    pub tier: Tier,
    /// Adoptions running at once, 1-32.
    pub concurrency: i32,
}

/// One source `adopt-all` queued, or why not.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Queued {
    pub source: String,
    pub slug: Option<String>,
    pub operation: Option<OperationView>,
    /// Why this source was not queued.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AdoptAll {
    pub batch: Uuid,
    pub queued: Vec<Queued>,
}

/// `POST /v1/estates/{id}/revert`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevertRequest {
    pub source: String,
}

/// `GET /v1/estates/{id}/revert-plan`: the revert's dry run.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RevertPlan {
    pub source: String,
    pub tenant_id: Uuid,
    /// Every row can be written back; a revert would be accepted.
    pub writable: bool,
    /// Per legacy table and column, the rows that could not.
    pub unwritable: Vec<Unwritable>,
    /// When every row has its values: what a write-back tried and rolled
    /// back met instead (a `CHECK`, unique or foreign-key refusal), in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// `POST /v1/estates/{id}/release`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    pub source: String,
    /// Drop the legacy schema (or database) too.
    #[serde(default)]
    pub drop: bool,
}

/// A source's slug from its name: the pattern's literal prefix dropped,
/// lower case, anything else a dash (`tenant_acme` -> `acme`).
pub(crate) fn slug_of(pattern: &str, source: &str) -> String {
    let mut prefix = String::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => prefix.extend(chars.next()),
            '%' | '_' => break,
            c => prefix.push(c),
        }
    }
    let rest = source.strip_prefix(&prefix).filter(|r| !r.is_empty()).unwrap_or(source);
    let slug: String = rest.to_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    slug.trim_matches('-').chars().take(63).collect()
}

impl ControlPlane {
    /// Queues the adoption of one source; the tenant exists from now on
    /// (`provisioning` until the cutover; keys can be issued at once).
    pub async fn adopt(&self, actor: &str, estate: Uuid, req: AdoptRequest) -> Result<OperationView, Error> {
        self.adopt_in(actor, estate, req, None).await
    }

    async fn adopt_in(
        &self,
        actor: &str,
        estate_id: Uuid,
        req: AdoptRequest,
        batch: Option<(Uuid, i32)>,
    ) -> Result<OperationView, Error> {
        let slug = TenantSlug::parse(&req.slug).map_err(|e| Error::invalid("invalid_slug", e.0))?;
        let estate = self.estate(estate_id).await?;
        if !source_names(&estate).await?.contains(&req.source) {
            return Err(Error::NotFound("source"));
        }
        let plan = self.adoption_plan(estate_id, &req.source, req.tier, req.target_backend_id).await?;
        if let Some(bad) = plan.checks.iter().find(|c| !c.ok) {
            return Err(Error::invalid("source_not_adoptable", format!("{}: {}", bad.name, bad.detail)));
        }
        let name = req.name.clone().unwrap_or_else(|| req.source.clone());
        if name.trim().is_empty() || name.chars().count() > 200 {
            return Err(Error::invalid("invalid_name", "name must be 1-200 characters"));
        }
        let region = req.region.clone().unwrap_or_else(|| self.config().default_region.clone());
        let tenant = new_id();
        let (backend_id, new_database) = match req.tier {
            Tier::Shared => {
                if req.engine.is_some() {
                    return Err(Error::invalid("engine_not_applicable", "`engine` applies to the dedicated tier only"));
                }
                let pool = match req.target_backend_id {
                    Some(id) => {
                        self.backend(id).await.map_err(|_| Error::invalid("unknown_backend", "no such shared pool"))?
                    }
                    None => self.pick_shared_pool(&region).await?,
                };
                if pool.kind != BackendKind::SharedPool || pool.status != BackendStatus::Ready {
                    return Err(Error::invalid(
                        "not_a_shared_pool",
                        format!("backend `{}` is not a ready shared pool", pool.name),
                    ));
                }
                (Some(pool.id), None)
            }
            Tier::Dedicated => {
                if req.target_backend_id.is_some() {
                    return Err(Error::invalid("target_not_applicable", "a dedicated adoption makes its own database"));
                }
                let engine = self.dedicated_engine(req.engine)?;
                self.check_region(engine, Some(&region))?;
                let suffix = &new_id().simple().to_string()[24..];
                let new = NewDatabase {
                    slug: slug.to_string(),
                    engine,
                    database: format!("tenant_{}_{suffix}", tenant.simple()),
                    instance: tenantry_provisioner::rds::instance_id(&format!("{}{suffix}", tenant.simple())),
                };
                (None, Some(new))
            }
        };
        let params = AdoptParams {
            estate_id,
            source: req.source.clone(),
            slug: slug.to_string(),
            backend_id,
            new_database,
            batch: batch.map(|b| b.0),
            concurrency: batch.map(|b| b.1),
        };
        let txn = self.registry().begin().await?;
        let op = new_id();
        let claimed = txn
            .execute_raw(stmt(
                "INSERT INTO estate_sources (estate_id, name, state, tenant_id, operation_id) \
                 VALUES ($1, $2, 'adopting', $3, $4) \
                 ON CONFLICT (estate_id, name) DO UPDATE SET state = 'adopting', tenant_id = $3, operation_id = $4, \
                     updated_at = now() WHERE estate_sources.state IN ('failed', 'reverted')",
                vec![estate_id.into(), req.source.clone().into(), tenant.into(), op.into()],
            ))
            .await?
            .rows_affected();
        if claimed == 0 {
            return Err(Error::Conflict {
                code: "source_taken",
                message: format!("`{}` is being adopted or was adopted already", req.source),
            });
        }
        let inserted = txn
            .execute_raw(stmt(
                "INSERT INTO tenants (id, slug, name, tier, status, region) VALUES ($1, $2, $3, $4, 'provisioning', $5) \
                 ON CONFLICT (slug) DO NOTHING",
                vec![tenant.into(), slug.as_str().into(), name.trim().into(), req.tier.as_str().into(), region.into()],
            ))
            .await?
            .rows_affected();
        if inserted == 0 {
            return Err(Error::Conflict {
                code: "slug_taken",
                message: format!("a tenant with slug `{slug}` already exists"),
            });
        }
        let id = enqueue::<Adopt>(&txn, OperationKind::Adopt, Some(tenant), &params, actor).await?;
        txn.execute_raw(stmt(
            "UPDATE estate_sources SET operation_id = $3 WHERE estate_id = $1 AND name = $2",
            vec![estate_id.into(), req.source.clone().into(), id.into()],
        ))
        .await?;
        audit(
            &txn,
            actor,
            "estate.adopt",
            Some(tenant),
            json!({"estate_id": estate_id, "source": req.source, "operation_id": id, "tier": req.tier}),
        )
        .await?;
        txn.commit().await?;
        self.wake_workers();
        self.operation(id).await
    }

    /// Queues an adoption per source not adopted yet, at most `concurrency`
    /// running at once; a source that cannot be queued is reported, the
    /// others are queued.
    pub async fn adopt_all(&self, actor: &str, estate: Uuid, req: AdoptAllRequest) -> Result<AdoptAll, Error> {
        if !(1..=32).contains(&req.concurrency) {
            return Err(Error::invalid("invalid_concurrency", "concurrency must be 1-32"));
        }
        let (tier, concurrency) = (req.tier, req.concurrency);
        let e = self.estate(estate).await?;
        let states: Vec<(String, String)> = self
            .registry()
            .query_all_raw(stmt("SELECT name, state FROM estate_sources WHERE estate_id = $1", vec![estate.into()]))
            .await?
            .into_iter()
            .map(|r| Ok((r.try_get("", "name")?, r.try_get("", "state")?)))
            .collect::<Result<_, sea_orm::DbErr>>()?;
        let batch = new_id();
        let mut queued = Vec::new();
        for source in source_names(&e).await? {
            let state = states.iter().find(|(n, _)| *n == source).map(|(_, s)| parse_state(s));
            if !matches!(state, None | Some(SourceState::Failed) | Some(SourceState::Reverted)) {
                continue;
            }
            let slug = slug_of(&e.view.pattern, &source);
            let req = AdoptRequest {
                source: source.clone(),
                slug: slug.clone(),
                name: None,
                tier,
                target_backend_id: None,
                engine: None,
                region: None,
            };
            let (operation, error) = match self.adopt_in(actor, estate, req, Some((batch, concurrency))).await {
                Ok(op) => (Some(op), None),
                Err(e) => (None, Some(e.to_string())),
            };
            queued.push(Queued { source, slug: Some(slug), operation, error });
        }
        Ok(AdoptAll { batch, queued })
    }

    /// An adopted source's estate and tenant: 404 for a source the estate does
    /// not have, 409 for one not (or no longer) adopted.
    async fn adopted_source(&self, estate: Uuid, source: &str) -> Result<(super::Estate, Uuid), Error> {
        let e = self.estate(estate).await?;
        let row = self
            .registry()
            .query_one_raw(stmt(
                "SELECT state, tenant_id FROM estate_sources WHERE estate_id = $1 AND name = $2",
                vec![estate.into(), source.into()],
            ))
            .await?;
        let (state, tenant): (String, Option<Uuid>) = match row {
            Some(r) => (r.try_get("", "state")?, r.try_get("", "tenant_id")?),
            None if source_names(&e).await?.iter().any(|n| n == source) => ("not adopted".into(), None),
            None => return Err(Error::NotFound("source")),
        };
        match tenant.filter(|_| state == "adopted") {
            Some(t) => Ok((e, t)),
            None => Err(Error::Conflict {
                code: "source_not_adopted",
                message: format!("`{source}` is {state}; only an adopted source (not yet released) can be"),
            }),
        }
    }

    /// Whether the tenant's rows can all be written back to the legacy
    /// source (the revert's dry run).
    pub async fn revert_plan(&self, estate: Uuid, source: &str) -> Result<RevertPlan, Error> {
        let (e, tenant) = self.adopted_source(estate, source).await?;
        let (unwritable, refused) = self.write_back_check(&e, source, tenant).await?;
        Ok(RevertPlan {
            source: source.to_string(),
            tenant_id: tenant,
            writable: unwritable.is_empty() && refused.is_none(),
            unwritable,
            refused,
        })
    }

    /// Rows a revert could not write back (a legacy `NOT NULL` column they
    /// have no value for), and, when there are none, what the legacy side's
    /// other constraints say of a write-back tried and rolled back.
    async fn write_back_check(
        &self,
        e: &super::Estate,
        source: &str,
        tenant: Uuid,
    ) -> Result<(Vec<Unwritable>, Option<String>), Error> {
        let t = self.tenant(&tenant.to_string()).await?;
        let placement = t.placement.ok_or(Error::Conflict {
            code: "tenant_not_placed",
            message: "the adopted tenant has no backend".into(),
        })?;
        let legacy_source = Source::read(e, source).await?;
        let mut legacy = legacy_source.connect(e).await?;
        let side = self.side(placement.backend_id).await?;
        let mut target = target_conn(&side, tenant).await?;
        let found = async {
            let rows = unwritable(&legacy_source, &mut legacy, &mut target, tenant).await?;
            if !rows.is_empty() {
                return Ok((rows, None));
            }
            let adoption = adoption_for(self, tenant).await?;
            match trial_write_back(&legacy_source, &mut legacy, &mut target, tenant, adoption).await {
                Ok(()) => Ok((rows, None)),
                Err(Error::Invalid { code: "unwritable_rows", message }) => Ok((rows, Some(message))),
                Err(e) => Err(e),
            }
        }
        .await;
        let _ = sqlx::Connection::close(legacy).await;
        let _ = sqlx::Connection::close(target).await;
        found
    }

    /// Queues the way back for an adopted source not yet released: the
    /// tenant's changes since the cutover go back to the legacy source, which
    /// takes writes again, and the tenant stops serving.
    pub async fn revert_source(&self, actor: &str, estate: Uuid, req: RevertRequest) -> Result<OperationView, Error> {
        let (e, tenant) = self.adopted_source(estate, &req.source).await?;
        // Refused before anything moves when a row could not be written back
        // (checked again inside the revert, once the tenant is fenced).
        let (problems, refused) = self.write_back_check(&e, &req.source, tenant).await?;
        if !problems.is_empty() {
            return Err(unwritable_error(&problems));
        }
        if let Some(message) = refused {
            return Err(Error::invalid("unwritable_rows", message));
        }
        let t = self.tenant(&tenant.to_string()).await?;
        let placement = t.placement.ok_or(Error::Conflict {
            code: "tenant_not_placed",
            message: "the adopted tenant has no backend".into(),
        })?;
        let params = RevertParams { estate_id: estate, source: req.source.clone(), backend_id: placement.backend_id };
        let txn = self.registry().begin().await?;
        self.lock_idle_tenant(&txn, tenant).await?;
        let id = enqueue::<Revert>(&txn, OperationKind::Revert, Some(tenant), &params, actor).await?;
        audit(
            &txn,
            actor,
            "estate.revert",
            Some(tenant),
            json!({"estate_id": estate, "source": req.source, "operation_id": id}),
        )
        .await?;
        txn.commit().await?;
        self.wake_workers();
        self.operation(id).await
    }

    /// Ends the way back for an adopted source; with `drop`, its legacy
    /// schema (or database) is dropped. Audited.
    pub async fn release_source(&self, actor: &str, estate: Uuid, req: ReleaseRequest) -> Result<(), Error> {
        let (e, tenant) = self.adopted_source(estate, &req.source).await?;
        // No revert may be running while the way back closes.
        let txn = self.registry().begin().await?;
        self.lock_idle_tenant(&txn, tenant).await?;
        if req.drop {
            let mut conn = e.connect(None).await?;
            let sql = match e.view.layout {
                Layout::SchemaPerTenant => format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(&req.source)),
                Layout::DatabasePerTenant => {
                    format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(&req.source))
                }
            };
            sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await?;
            let _ = sqlx::Connection::close(conn).await;
        } else {
            // The copy stays, frozen for good: its fence says so.
            let legacy_source = Source::read(&e, &req.source).await?;
            let mut legacy = legacy_source.connect(&e).await?;
            let adoption = adoption_for(self, tenant).await?;
            super::fence::restate(&mut legacy, &legacy_source.schema, adoption, super::fence::Stage::Released).await?;
            let _ = sqlx::Connection::close(legacy).await;
        }
        txn.execute_raw(stmt(
            "UPDATE estate_sources SET state = 'released', updated_at = now() WHERE estate_id = $1 AND name = $2",
            vec![estate.into(), req.source.clone().into()],
        ))
        .await?;
        audit(
            &txn,
            actor,
            "estate.release",
            Some(tenant),
            json!({"estate_id": estate, "source": req.source, "drop": req.drop}),
        )
        .await?;
        txn.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::slug_of;

    #[test]
    fn a_sources_slug_drops_the_patterns_prefix() {
        assert_eq!(slug_of("tenant\\_%", "tenant_acme"), "acme");
        assert_eq!(slug_of("tenant\\_%", "tenant_Big_Co"), "big-co");
        assert_eq!(slug_of("legacy%", "legacy_x"), "x");
        assert_eq!(slug_of("%", "shop_1"), "shop-1");
    }
}
