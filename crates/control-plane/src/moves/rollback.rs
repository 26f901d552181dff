//! Undoing a move that has not flipped: the subscription, slot and
//! publication go, rows copied to the target are deleted (or the target
//! provisioned for it is destroyed), the fence is lifted. After the flip a
//! move is never rolled back.

use sea_orm::TransactionTrait;
use sea_orm::sqlx::{self, Connection};
use serde_json::json;

use crate::backend::tenant_tables;
use crate::error::Error;
use crate::kind::{Run, Stop};
use crate::moves::facts::{MoveParams, replication_name};
use crate::moves::release::purge;
use crate::moves::replication::{drop_publication, drop_role, drop_slots, drop_subscription};
use crate::operation::{OperationKind, OperationState};
use crate::registry::{audit, past_seal};

pub(crate) async fn roll_back(
    run: &Run<'_, MoveParams>,
    outcome: OperationState,
    error: Option<String>,
) -> Result<(), Error> {
    let cp = run.cp;
    let view = run.view().await?;
    if past_seal(&view.progress) {
        let error = error.or(Some("failed after the cutover's seal".into()));
        run.finish(cp.registry(), OperationState::Failed, error).await?;
        return Ok(());
    }
    let tenant = run.tenant()?;
    let name = replication_name(run.id);
    let epoch = run.params.epoch;
    let provisioned = run.kind == OperationKind::Promote;
    let mut sub_oid = None;
    if let Some(target_id) = view.backend_id {
        let target = cp.side(target_id).await?;
        let mut admin = target.admin().await?;
        sub_oid = drop_subscription(&mut admin, &name).await?;
        admin.close().await?;
        if !provisioned {
            let mut t = cp.tenant_conn(&target, tenant).await?;
            let tables = tenant_tables(&mut t).await?;
            purge::<()>(&mut t, tenant, &tables, 10_000, None).await.map_err(|s| match s {
                Stop::Failed(e) => e,
                other => Error::invalid("purge_interrupted", format!("{other:?}")),
            })?;
            sqlx::query("DELETE FROM tenant_residency WHERE tenant_id = $1 AND epoch = $2")
                .bind(tenant)
                .bind(epoch + 1)
                .execute(&mut t)
                .await?;
            t.close().await?;
        }
    }
    let source = cp.side(run.params.source_backend_id).await?;
    let mut admin = source.admin().await?;
    drop_slots(&mut admin, &name, sub_oid).await?;
    drop_publication(&mut admin, &name).await?;
    drop_role(&mut admin, &name).await?;
    admin.close().await?;
    let mut s = cp.tenant_conn(&source, tenant).await?;
    sqlx::query(
        "UPDATE tenant_residency SET state = 'active', fenced_by = NULL, fenced_until = NULL, updated_at = now() \
         WHERE tenant_id = $1 AND epoch = $2 AND state = 'fenced' AND fenced_by IS NOT NULL",
    )
    .bind(tenant)
    .bind(epoch)
    .execute(&mut s)
    .await?;
    sqlx::query("DELETE FROM tenantry_move_sentinels WHERE tenant_id = $1").bind(tenant).execute(&mut s).await?;
    s.close().await?;
    if provisioned {
        run.params.new_database()?.destroy(cp).await?;
    }
    let txn = cp.registry().begin().await?;
    run.finish(&txn, outcome, error).await?;
    audit(&txn, "operation", "operation.rollback", Some(tenant), json!({"operation_id": run.id, "state": outcome}))
        .await?;
    txn.commit().await?;
    Ok(())
}
