//! Erasure (GDPR offboarding): `DELETE /v1/tenants/{id}` queues an `erase`
//! operation. From that moment the tenant is `erasing` and its requests get
//! 404: the registry says so (apps drop their cached key at its NOTIFY), and
//! the tenant is fenced on its backend before the request returns (and again
//! before a row is deleted), so an app still holding the cached key is refused
//! there and, re-resolving, finds the tenant erasing. Shared tier: the tenant's rows are deleted in batches from every table
//! that has a `tenant_id` column, found from the catalog (a table added later
//! cannot be forgotten). Dedicated tier: the logical database is dropped, or
//! the RDS instance deleted (a final snapshot only if
//! `control_plane.erase_final_snapshot`). Then the registry keeps a tombstone
//! (id, slug, status `erased`; name and settings cleared), the keys are
//! revoked, the placement removed, and the audit trail stays. Erasure only goes
//! forward: it is not cancellable, and a failed one is resumed by asking again.

use sea_orm::{ConnectionTrait, TransactionTrait};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use tenantry_core::{BackendKind, TenantStatus};

use crate::backend::{table_list, tenant_tables};
use crate::error::Error;
use crate::kind::{Kind, Policy, Run, Stop, enqueue};
use crate::moves::release::purge;
use crate::operation::{OperationKind, OperationState, Step};
use crate::plane::ControlPlane;
use crate::registry::{OperationView, audit, stmt};

/// How long fencing waits for the tenant's in-flight transactions.
const FENCE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The steps of an erasure, in order.
pub const ERASE_STEPS: &[Step] = &[Step::EraseData, Step::Tombstone];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct EraseParams {
    slug: String,
    /// The backend the tenant lived on when the erasure was asked for.
    backend_id: Option<Uuid>,
    /// Keep a final snapshot of a deleted RDS instance.
    #[serde(default)]
    final_snapshot: bool,
}

/// The `erase` kind.
pub(crate) struct Erase;

impl Kind for Erase {
    type Params = EraseParams;
    type State = ();
    const FAILPOINTS: &'static str = "erase";
    const POLICY: Policy = Policy::ForwardOnly;

    fn steps(_: OperationKind, _: &EraseParams) -> &'static [Step] {
        ERASE_STEPS
    }

    async fn step(run: &Run<'_, EraseParams>, _: &mut (), step: Step) -> Result<(), Stop> {
        match step {
            Step::EraseData => erase_data(run).await,
            Step::Tombstone => Ok(tombstone(run).await?),
            other => Err(Stop::Failed(Error::invalid("unknown_step", format!("`{other}` erases nothing")))),
        }
    }

    /// Never called: an erasure only goes forward.
    async fn roll_back(
        run: &Run<'_, EraseParams>,
        outcome: OperationState,
        error: Option<String>,
    ) -> Result<(), Error> {
        Ok(run.finish(run.cp.registry(), outcome, error).await?)
    }
}

impl ControlPlane {
    /// Queues the erasure of a tenant (or resumes one that failed).
    pub async fn erase_tenant(&self, actor: &str, tenant: &str) -> Result<OperationView, Error> {
        let t = self.tenant(tenant).await?;
        match t.status {
            TenantStatus::Erased => {
                return Err(Error::Conflict { code: "already_erased", message: "the tenant is already erased".into() });
            }
            TenantStatus::Provisioning => {
                return Err(Error::Conflict {
                    code: "tenant_provisioning",
                    message: "the tenant is being provisioned; cancel its provision operation instead".into(),
                });
            }
            _ => {}
        }
        let txn = self.registry().begin().await?;
        self.lock_idle_tenant(&txn, t.id).await?;
        txn.execute_raw(stmt(
            "UPDATE tenants SET status = 'erasing', updated_at = now() WHERE id = $1",
            vec![t.id.into()],
        ))
        .await?;
        let params = EraseParams {
            slug: t.slug.clone(),
            backend_id: t.placement.as_ref().map(|p| p.backend_id),
            final_snapshot: self.config().erase_final_snapshot,
        };
        let id = enqueue::<Erase>(&txn, OperationKind::Erase, Some(t.id), &params, actor).await?;
        audit(&txn, actor, "tenant.erase.request", Some(t.id), json!({"operation_id": id})).await?;
        txn.commit().await?;
        // Best effort here (the backend may be down): the operation fences again,
        // mandatorily, before it deletes anything.
        if let Some(p) = &t.placement
            && let Err(e) = self.fence_residency(t.id, p.backend_id, FENCE_WAIT).await
        {
            tracing::warn!(tenant = %t.id, error = %e, "could not fence the tenant yet; the operation will");
        }
        self.wake_workers();
        self.operation(id).await
    }
}

async fn erase_data(run: &Run<'_, EraseParams>) -> Result<(), Stop> {
    let (cp, tenant) = (run.cp, run.tenant()?);
    let backend = cp
        .registry()
        .query_one_raw(stmt("SELECT backend_id FROM placements WHERE tenant_id = $1", vec![tenant.into()]))
        .await?;
    let Some(row) = backend else {
        return Ok(()); // already erased by an earlier attempt, or never placed
    };
    let backend_id = row.try_get::<Uuid>("", "backend_id")?;
    let side = cp.side(backend_id).await?;
    let b = &side.backend;
    if b.kind == BackendKind::Dedicated {
        // The database goes as a whole; fencing first is a courtesy (the
        // instance may no longer answer, and deleting it must still work).
        if let Err(e) = cp.fence_residency(tenant, backend_id, FENCE_WAIT).await {
            tracing::warn!(%tenant, error = %e, "could not fence the dedicated database; erasing it anyway");
        }
        let snapshot = cp.destroy_storage(b.engine, &b.name, &b.database, run.params.final_snapshot).await?;
        run.set_params(json!({"dropped": b.name, "final_snapshot": snapshot})).await?;
        cp.mark_retired(cp.registry(), b.id).await?;
        return Ok(());
    }
    // Nobody reads a half-erased tenant: fenced before the first delete.
    cp.fence_residency(tenant, backend_id, FENCE_WAIT).await?;
    let mut conn = cp.tenant_conn(&side, tenant).await?;
    let tables = tenant_tables(&mut conn).await?;
    sea_orm::sqlx::raw_sql(sea_orm::sqlx::AssertSqlSafe(format!("ANALYZE {}", table_list(&tables))))
        .execute(&mut conn)
        .await?;
    let deleted = purge(&mut conn, tenant, &tables, cp.config().moves.purge_batch.max(1), Some(run)).await?;
    sea_orm::sqlx::query("DELETE FROM tenant_residency WHERE tenant_id = $1").bind(tenant).execute(&mut conn).await?;
    sea_orm::sqlx::Connection::close(conn).await?;
    run.set_params(json!({"tables": tables, "rows_deleted_total": deleted})).await?;
    Ok(())
}

async fn tombstone(run: &Run<'_, EraseParams>) -> Result<(), Error> {
    let tenant = run.tenant()?;
    let txn = run.cp.registry().begin().await?;
    txn.execute_raw(stmt("DELETE FROM placements WHERE tenant_id = $1", vec![tenant.into()])).await?;
    txn.execute_raw(stmt(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE tenant_id = $1",
        vec![tenant.into()],
    ))
    .await?;
    for table in ["identity_providers", "tenant_users", "sign_in_samples"] {
        txn.execute_raw(stmt(&format!("DELETE FROM {table} WHERE tenant_id = $1"), vec![tenant.into()])).await?;
    }
    txn.execute_raw(stmt(
        "UPDATE tenants SET status = 'erased', name = '(erased)', settings = '{}'::jsonb, updated_at = now() \
         WHERE id = $1",
        vec![tenant.into()],
    ))
    .await?;
    audit(&txn, "operation", "tenant.erase", Some(tenant), json!({"operation_id": run.id})).await?;
    run.finish(&txn, OperationState::Succeeded, None).await?;
    txn.commit().await?;
    Ok(())
}
