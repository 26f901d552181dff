//! The `retire` kind: a backend that holds no tenant is drained, its storage
//! destroyed (the logical database dropped, or the RDS instance deleted after
//! a final snapshot) and marked retired. Policy: a cancel or a failure before
//! `destroy` starts puts the backend back to `ready`; from `destroy` on it
//! only goes forward.

use sea_orm::{ConnectionTrait, TransactionTrait};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use tenantry_core::{BackendKind, BackendStatus, Engine};

use crate::error::Error;
use crate::kind::{Kind, Policy, Run, Stop, enqueue};
use crate::operation::{OperationKind, OperationState, Step};
use crate::plane::ControlPlane;
use crate::registry::{OperationView, audit, stmt};

/// The steps of retiring a backend, in order.
pub const RETIRE_STEPS: &[Step] = &[Step::Drain, Step::Destroy, Step::MarkRetired];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RetireParams {
    backend_id: Uuid,
    name: String,
    engine: Engine,
    database: String,
}

/// The `retire` kind.
pub(crate) struct Retire;

impl Kind for Retire {
    type Params = RetireParams;
    type State = ();
    const FAILPOINTS: &'static str = "retire";
    const POLICY: Policy = Policy::RollBackUntil(Step::Destroy);

    fn steps(_: OperationKind, _: &RetireParams) -> &'static [Step] {
        RETIRE_STEPS
    }

    async fn step(run: &Run<'_, RetireParams>, _: &mut (), step: Step) -> Result<(), Stop> {
        let (cp, p) = (run.cp, &run.params);
        match step {
            Step::Drain => {
                cp.registry()
                    .execute_raw(stmt(
                        "UPDATE backends SET status = 'draining', updated_at = now() WHERE id = $1",
                        vec![p.backend_id.into()],
                    ))
                    .await?;
            }
            Step::Destroy => {
                if let Some(snapshot) = cp.destroy_storage(p.engine, &p.name, &p.database, true).await? {
                    run.set_params(json!({"final_snapshot": snapshot})).await?;
                }
            }
            Step::MarkRetired => {
                let txn = cp.registry().begin().await?;
                cp.mark_retired(&txn, p.backend_id).await?;
                audit(&txn, "operation", "backend.retire", None, json!({"backend_id": p.backend_id})).await?;
                run.finish(&txn, OperationState::Succeeded, None).await?;
                txn.commit().await?;
            }
            other => return Err(Stop::Failed(Error::invalid("unknown_step", format!("`{other}` retires nothing")))),
        }
        Ok(())
    }

    /// Before `destroy` nothing is lost: the backend serves again.
    async fn roll_back(
        run: &Run<'_, RetireParams>,
        outcome: OperationState,
        error: Option<String>,
    ) -> Result<(), Error> {
        let txn = run.cp.registry().begin().await?;
        txn.execute_raw(stmt(
            "UPDATE backends SET status = 'ready', updated_at = now() WHERE id = $1 AND status = 'draining'",
            vec![run.params.backend_id.into()],
        ))
        .await?;
        run.finish(&txn, outcome, error).await?;
        txn.commit().await?;
        Ok(())
    }
}

impl ControlPlane {
    /// Queues the retirement of a backend that holds no tenant.
    pub async fn retire_backend(&self, actor: &str, backend_id: Uuid) -> Result<OperationView, Error> {
        let backend = self.backend(backend_id).await?;
        if backend.kind == BackendKind::Template {
            return Err(Error::Conflict {
                code: "not_retirable",
                message: "the template database is not retired".into(),
            });
        }
        if backend.status == BackendStatus::Retired {
            return Err(Error::Conflict { code: "already_retired", message: "the backend is already retired".into() });
        }
        if backend.tenants > 0 {
            return Err(Error::Conflict {
                code: "backend_in_use",
                message: format!("{} tenant(s) still live on this backend; move them first", backend.tenants),
            });
        }
        let txn = self.registry().begin().await?;
        let busy = txn
            .query_one_raw(stmt(
                "SELECT 1 AS busy FROM operations WHERE kind = 'retire' AND backend_id = $1 \
                 AND state IN ('pending', 'running', 'cancelling')",
                vec![backend_id.into()],
            ))
            .await?;
        if busy.is_some() {
            return Err(Error::Conflict {
                code: "operation_in_progress",
                message: "a retirement is already running".into(),
            });
        }
        let params = RetireParams {
            backend_id,
            name: backend.name.clone(),
            engine: backend.engine,
            database: backend.database.clone(),
        };
        let id = enqueue::<Retire>(&txn, OperationKind::Retire, None, &params, actor).await?;
        txn.commit().await?;
        self.wake_workers();
        self.operation(id).await
    }
}
