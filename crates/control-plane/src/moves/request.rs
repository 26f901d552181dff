//! Asking for a move: promote (a new dedicated database), move (any ready
//! backend) and demote (a shared pool). What can be checked without touching
//! a database is checked here; the rest is the preflight's (`plan.rs`).

use sea_orm::{ConnectionTrait, TransactionTrait};
use uuid::Uuid;

use tenantry_core::{BackendKind, Engine, new_id};

use crate::backends::BackendView;
use crate::error::Error;
use crate::kind::enqueue;
use crate::moves::Move;
use crate::moves::facts::MoveParams;
use crate::moves::plan::target_problem;
use crate::operation::OperationKind;
use crate::plane::ControlPlane;
use crate::provision::NewDatabase;
use crate::registry::{OperationView, stmt};
use crate::tenants::TenantView;

impl ControlPlane {
    /// Promote a shared tenant: provision a dedicated backend, then move there.
    pub async fn promote_tenant(
        &self,
        actor: &str,
        tenant: &str,
        engine: Option<Engine>,
        region: Option<String>,
    ) -> Result<OperationView, Error> {
        let t = self.tenant(tenant).await?;
        if t.tier == tenantry_core::Tier::Dedicated {
            return Err(Error::Conflict {
                code: "already_dedicated",
                message: format!("tenant `{}` is already on the dedicated tier", t.slug),
            });
        }
        let engine = self.dedicated_engine(engine)?;
        self.check_region(engine, region.as_deref())?;
        // A fresh name per promotion: a tenant demoted and promoted again never
        // meets its retired database or instance (or its final snapshot).
        let suffix = &new_id().simple().to_string()[24..];
        let new = NewDatabase {
            slug: t.slug.clone(),
            engine,
            database: format!("tenant_{}_{suffix}", t.id.simple()),
            instance: tenantry_provisioner::rds::instance_id(&format!("{}{suffix}", t.id.simple())),
        };
        self.enqueue_move(actor, &t, OperationKind::Promote, None, Some(new)).await
    }

    /// Move a tenant to any ready backend: another shared pool, or an empty
    /// dedicated database.
    pub async fn move_tenant(&self, actor: &str, tenant: &str, target: Uuid) -> Result<OperationView, Error> {
        let t = self.tenant(tenant).await?;
        let target =
            self.backend(target).await.map_err(|_| Error::invalid("unknown_backend", "no such target backend"))?;
        self.enqueue_move(actor, &t, OperationKind::Move, Some(target), None).await
    }

    /// Demote a dedicated tenant to a shared pool (the given one, or the least
    /// loaded of its region), then retire its dedicated backend.
    pub async fn demote_tenant(&self, actor: &str, tenant: &str, pool: Option<Uuid>) -> Result<OperationView, Error> {
        let t = self.tenant(tenant).await?;
        if t.tier == tenantry_core::Tier::Shared {
            return Err(Error::Conflict {
                code: "already_shared",
                message: format!("tenant `{}` is already on the shared tier", t.slug),
            });
        }
        let target = match pool {
            Some(id) => {
                let b = self.backend(id).await.map_err(|_| Error::invalid("unknown_backend", "no such shared pool"))?;
                if b.kind != BackendKind::SharedPool {
                    return Err(Error::invalid(
                        "not_a_shared_pool",
                        format!("backend `{}` is not a shared pool", b.name),
                    ));
                }
                b
            }
            None => self.pick_shared_pool(&t.region).await?,
        };
        self.enqueue_move(actor, &t, OperationKind::Demote, Some(target), None).await
    }

    /// Checks what can be checked without touching a database, then queues the
    /// operation with the source placement it starts from.
    async fn enqueue_move(
        &self,
        actor: &str,
        t: &TenantView,
        kind: OperationKind,
        target: Option<BackendView>,
        new: Option<NewDatabase>,
    ) -> Result<OperationView, Error> {
        if t.status != tenantry_core::TenantStatus::Active {
            return Err(Error::Conflict {
                code: "tenant_not_active",
                message: format!("tenant `{}` is {} and cannot be moved", t.slug, t.status.as_str()),
            });
        }
        let placement = t
            .placement
            .clone()
            .ok_or(Error::Conflict { code: "tenant_not_placed", message: "the tenant has no backend yet".into() })?;
        let source = self.backend(placement.backend_id).await?;
        if let Some(target) = &target
            && let Some(problem) = target_problem(&source, target)
        {
            return Err(problem);
        }
        let params = MoveParams {
            slug: t.slug.clone(),
            source_backend_id: source.id,
            epoch: placement.epoch,
            backend_id: target.as_ref().map(|b| b.id),
            engine: new.as_ref().map(|n| n.engine),
            database: new.as_ref().map(|n| n.database.clone()),
            instance: new.map(|n| n.instance),
        };
        let txn = self.registry().begin().await?;
        self.lock_idle_tenant(&txn, t.id).await?;
        let still = txn
            .query_one_raw(stmt(
                "SELECT 1 AS here FROM placements WHERE tenant_id = $1 AND backend_id = $2 AND epoch = $3",
                vec![t.id.into(), source.id.into(), placement.epoch.into()],
            ))
            .await?;
        if still.is_none() {
            return Err(Error::Conflict {
                code: "placement_changed",
                message: "the tenant moved meanwhile; retry".into(),
            });
        }
        let id = enqueue::<Move>(&txn, kind, Some(t.id), &params, actor).await?;
        txn.commit().await?;
        self.wake_workers();
        self.operation(id).await
    }
}
