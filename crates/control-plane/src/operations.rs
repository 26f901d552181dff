//! Operations as the admin API and the console see them: read, listed,
//! cancelled (as the kind's policy allows) and waited for. Running them is
//! the runner's (`runner.rs`); each kind is in its own file.

use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseTransaction};
use serde_json::json;
use uuid::Uuid;

use crate::error::Error;
use crate::kind::Policy;
use crate::operation::OperationState;
use crate::plane::ControlPlane;
use crate::registry::{self, OperationView, PAST_SEAL_SQL, audit, stmt};
use crate::runner;

impl ControlPlane {
    pub async fn operation(&self, id: Uuid) -> Result<OperationView, Error> {
        registry::operation(self.registry(), id).await?.ok_or(Error::NotFound("operation"))
    }

    /// Newest first, optionally for one tenant and in one state.
    pub async fn operations(
        &self,
        tenant: Option<Uuid>,
        state: Option<OperationState>,
        limit: u64,
    ) -> Result<Vec<OperationView>, Error> {
        Ok(registry::operations(self.registry(), tenant, state, limit).await?)
    }

    /// Locks the tenant's row for the caller's transaction (serialising
    /// requests for one tenant) and refuses with 409 while another operation
    /// of it runs.
    pub(crate) async fn lock_idle_tenant(&self, txn: &DatabaseTransaction, tenant: Uuid) -> Result<(), Error> {
        match registry::lock_tenant_busy(txn, tenant).await? {
            None => Ok(()),
            Some(other) => Err(Error::Conflict {
                code: "operation_in_progress",
                message: format!("a {other} operation is running for this tenant; wait for it or cancel it first"),
            }),
        }
    }

    /// Asks for a rollback; the worker holding it (or the next to claim it)
    /// undoes what was created. Refused once the operation has finished or
    /// passed its kind's point of no return.
    pub async fn cancel_operation(&self, actor: &str, id: Uuid) -> Result<OperationView, Error> {
        let op = self.operation(id).await?;
        let policy = runner::policy(op.kind);
        if policy == Policy::ForwardOnly {
            return Err(Error::Conflict {
                code: "not_cancellable",
                message: format!("a {} only goes forward; it cannot be cancelled", op.kind),
            });
        }
        // The flip is checked in the same statement: a cancel never races it.
        let res = self
            .registry()
            .execute_raw(stmt(
                &format!(
                    "UPDATE operations SET state = 'cancelling', updated_at = now(), \
                 lease_expires_at = CASE WHEN state = 'pending' THEN NULL ELSE lease_expires_at END \
                 WHERE id = $1 AND state IN ('pending', 'running') \
                 AND NOT {PAST_SEAL_SQL}"
                ),
                vec![id.into()],
            ))
            .await?;
        let op = self.operation(id).await?;
        if res.rows_affected() == 0 && registry::past_seal(&op.progress) && op.state == OperationState::Running {
            return Err(Error::Conflict {
                code: "not_cancellable",
                message: "the tenant already serves from the target; move it back with another move".into(),
            });
        }
        if res.rows_affected() == 0 && op.state != OperationState::Cancelling {
            return Err(Error::Conflict {
                code: "not_cancellable",
                message: format!("the operation is {} and can no longer be cancelled", op.state),
            });
        }
        audit(self.registry(), actor, "operation.cancel", op.tenant_id, json!({"operation_id": id})).await?;
        self.wake_workers();
        Ok(op)
    }

    /// Polls until the operation ends or `timeout` passes.
    pub async fn wait_operation(&self, id: Uuid, timeout: Duration) -> Result<OperationView, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let op = self.operation(id).await?;
            if op.state.is_final() || tokio::time::Instant::now() > deadline {
                return Ok(op);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}
