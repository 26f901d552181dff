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

use serde_json::json;
use uuid::Uuid;

use crate::moves::Stop;
use crate::operations::{Claimed, Lease, OperationKind, OperationView, enqueue, failpoint, finish, stmt};
use crate::service::audit;
use crate::{ControlPlane, Error};
use sea_orm::{ConnectionTrait, TransactionTrait};
use tenantry_core::TenantStatus;

/// How long fencing waits for the tenant's in-flight transactions.
const FENCE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The steps of an erasure, in order.
pub const ERASE_STEPS: &[&str] = &["erase_data", "tombstone"];

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
        crate::operations::lock_idle_tenant(&txn, t.id).await?;
        txn.execute_raw(stmt(
            "UPDATE tenants SET status = 'erasing', updated_at = now() WHERE id = $1",
            vec![t.id.into()],
        ))
        .await?;
        let params = json!({
            "slug": t.slug,
            "backend_id": t.placement.as_ref().map(|p| p.backend_id),
            "final_snapshot": self.config().erase_final_snapshot,
        });
        let id = enqueue(&txn, OperationKind::Erase, Some(t.id), params, actor).await?;
        audit(&txn, actor, "tenant.erase.request", Some(t.id), json!({"operation_id": id})).await?;
        txn.commit().await?;
        // Best effort here (the backend may be down): the operation fences again,
        // mandatorily, before it deletes anything.
        if let Some(p) = &t.placement
            && let Err(e) = self.fence_for_erasure(t.id, p.backend_id).await
        {
            tracing::warn!(tenant = %t.id, error = %e, "could not fence the tenant yet; the operation will");
        }
        self.wake_workers();
        self.operation(id).await
    }

    /// Marks the tenant fenced on its backend, under its exclusive lock (so the
    /// app's in-flight transactions finish first): every later request is
    /// refused there (TR001). Idempotent; a tenant already gone from the
    /// backend is fine. Gives up after a few seconds (an unreachable backend).
    async fn fence_for_erasure(&self, tenant: Uuid, backend: Uuid) -> Result<(), Error> {
        tokio::time::timeout(FENCE_WAIT * 3, self.fence_tenant(tenant, backend)).await.unwrap_or_else(|_| {
            Err(Error::Backend(sea_orm::sqlx::Error::Protocol("the backend did not answer in time".into())))
        })
    }

    async fn fence_tenant(&self, tenant: Uuid, backend: Uuid) -> Result<(), Error> {
        use sea_orm::sqlx::{self, Connection};
        let side = self.side(backend).await?;
        let mut conn = self.tenant_conn(&side, tenant).await?;
        let mut tx = conn.begin().await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET LOCAL lock_timeout = {}", FENCE_WAIT.as_millis())))
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_advisory_xact_lock(tenantry_lock_key($1))").bind(tenant).execute(&mut *tx).await?;
        sqlx::query("UPDATE tenant_residency SET state = 'fenced', updated_at = now() WHERE tenant_id = $1")
            .bind(tenant)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        conn.close().await?;
        Ok(())
    }

    pub(crate) async fn drive_erase(&self, owner: &str, op: Claimed) {
        let Some(tenant) = op.tenant_id else {
            let _ = finish(self.registry(), op.id, owner, "failed", Some("the tenant no longer exists".into())).await;
            return;
        };
        let start = ERASE_STEPS.iter().position(|s| *s == op.step).unwrap_or(0);
        for (i, step) in ERASE_STEPS.iter().enumerate().skip(start) {
            match self.advance(op.id, owner, step, i).await {
                Ok(Lease::Held | Lease::Cancelling) => {}
                Ok(Lease::Lost) | Err(_) => return,
            }
            let result = match *step {
                "erase_data" => self.erase_data(owner, op.id, tenant, &op.params).await,
                _ => self.tombstone(owner, op.id, tenant).await.map_err(Stop::Failed),
            };
            match result {
                Ok(()) => {}
                Err(Stop::Lost) => return,
                Err(Stop::Cancelled) => {}
                Err(Stop::Failed(e)) => {
                    let error = format!("{step}: {e}");
                    tracing::warn!(operation = %op.id, attempt = op.attempts, %error, "erase step failed");
                    if op.attempts >= crate::operations::MAX_ATTEMPTS {
                        // The tenant stays `erasing` (its requests get 404); asking
                        // again resumes from the recorded step.
                        let _ = finish(self.registry(), op.id, owner, "failed", Some(error)).await;
                        return;
                    }
                    self.retry_later(&op, owner, error).await;
                    return;
                }
            }
            failpoint(&format!("erase.after.{step}"));
        }
    }

    async fn erase_data(&self, owner: &str, op: Uuid, tenant: Uuid, params: &serde_json::Value) -> Result<(), Stop> {
        let backend = self
            .registry()
            .query_one_raw(stmt("SELECT backend_id FROM placements WHERE tenant_id = $1", vec![tenant.into()]))
            .await?;
        let Some(row) = backend else {
            return Ok(()); // already erased by an earlier attempt, or never placed
        };
        let backend_id = row.try_get::<Uuid>("", "backend_id")?;
        let side = self.side(backend_id).await?;
        let b = &side.backend;
        if b.kind == "dedicated" {
            // The database goes as a whole; fencing first is a courtesy (the
            // instance may no longer answer, and deleting it must still work).
            if let Err(e) = self.fence_for_erasure(tenant, backend_id).await {
                tracing::warn!(%tenant, error = %e, "could not fence the dedicated database; erasing it anyway");
            }
            let keep = params["final_snapshot"].as_bool().unwrap_or(false);
            let snapshot = self.destroy_storage(&b.engine, &b.name, &b.database, keep).await?;
            self.set_params(op, json!({"dropped": b.name, "final_snapshot": snapshot})).await?;
            self.registry()
                .execute_raw(stmt(
                    "UPDATE backends SET status = 'retired', updated_at = now() WHERE id = $1",
                    vec![b.id.into()],
                ))
                .await?;
            return Ok(());
        }
        // Nobody reads a half-erased tenant: fenced before the first delete.
        self.fence_for_erasure(tenant, backend_id).await?;
        let mut conn = self.tenant_conn(&side, tenant).await?;
        let tables = crate::moves::tenant_tables(&mut conn).await?;
        sea_orm::sqlx::raw_sql(sea_orm::sqlx::AssertSqlSafe(format!("ANALYZE {}", crate::moves::table_list(&tables))))
            .execute(&mut conn)
            .await?;
        let deleted =
            self.purge(&mut conn, tenant, &tables, self.config().moves.purge_batch.max(1), Some((op, owner))).await?;
        sea_orm::sqlx::query("DELETE FROM tenant_residency WHERE tenant_id = $1")
            .bind(tenant)
            .execute(&mut conn)
            .await?;
        sea_orm::sqlx::Connection::close(conn).await?;
        self.set_params(op, json!({"tables": tables, "rows_deleted_total": deleted})).await?;
        Ok(())
    }

    async fn tombstone(&self, owner: &str, op: Uuid, tenant: Uuid) -> Result<(), Error> {
        let txn = self.registry().begin().await?;
        txn.execute_raw(stmt("DELETE FROM placements WHERE tenant_id = $1", vec![tenant.into()])).await?;
        txn.execute_raw(stmt(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE tenant_id = $1",
            vec![tenant.into()],
        ))
        .await?;
        txn.execute_raw(stmt(
            "UPDATE tenants SET status = 'erased', name = '(erased)', settings = '{}'::jsonb, updated_at = now() \
             WHERE id = $1",
            vec![tenant.into()],
        ))
        .await?;
        audit(&txn, "operation", "tenant.erase", Some(tenant), json!({"operation_id": op})).await?;
        finish(&txn, op, owner, "succeeded", None).await?;
        txn.commit().await?;
        Ok(())
    }
}
