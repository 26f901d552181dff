//! A tenant's first home: residency on the backend, then placement and
//! status in the registry. Later homes are made by moves (`moves/`).

use sea_orm::{ConnectionTrait, TransactionTrait};
use serde_json::json;
use uuid::Uuid;

use crate::backends::BackendView;
use crate::error::Error;
use crate::operation::OperationState;
use crate::plane::ControlPlane;
use crate::registry::{audit, finish, stmt};

impl ControlPlane {
    /// Makes `backend` the tenant's home at epoch 1: residency on the backend,
    /// then placement, status and (for an operation) its end in one registry
    /// transaction. Safe to repeat.
    pub(crate) async fn place_tenant(
        &self,
        actor: &str,
        id: Uuid,
        backend: &BackendView,
        operation: Option<(Uuid, &str)>,
    ) -> Result<(), Error> {
        let pool = self.owner_pool(backend.id, &backend.address()).await;
        pool.execute_raw(stmt(
            "INSERT INTO tenant_residency (tenant_id, epoch, state) VALUES ($1, 1, 'active') \
             ON CONFLICT (tenant_id) DO NOTHING",
            vec![id.into()],
        ))
        .await?;
        let txn = self.registry().begin().await?;
        txn.execute_raw(stmt(
            "INSERT INTO placements (tenant_id, backend_id, epoch) VALUES ($1, $2, 1) ON CONFLICT (tenant_id) DO NOTHING",
            vec![id.into(), backend.id.into()],
        ))
        .await?;
        txn.execute_raw(stmt(
            "UPDATE tenants SET status = 'active', updated_at = now() WHERE id = $1 AND status = 'provisioning'",
            vec![id.into()],
        ))
        .await?;
        audit(&txn, actor, "tenant.place", Some(id), json!({"backend_id": backend.id, "epoch": 1})).await?;
        if let Some((op, owner)) = operation {
            finish(&txn, op, owner, OperationState::Succeeded, None).await?;
        }
        txn.commit().await?;
        Ok(())
    }
}
