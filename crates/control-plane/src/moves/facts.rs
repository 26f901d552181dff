//! What every step of a move reads: its typed parameters, and the facts
//! read back from its operation row (both ends, the tables, the epoch).

use sea_orm::sqlx::postgres::PgConnection;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use tenantry_core::Engine;

use crate::backend::Side;
use crate::error::Error;
use crate::kind::Run;
use crate::provision::NewDatabase;
use crate::registry::OperationView;

/// Replication objects of one move share this name (publication, slot,
/// subscription), so a resumed run finds what it made and a sweep finds orphans.
pub fn replication_name(op: Uuid) -> String {
    format!("{NAME_PREFIX}{}", op.simple())
}

pub(crate) const NAME_PREFIX: &str = "tenantry_mv_";

/// A move's parameters, as queued.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MoveParams {
    pub(crate) slug: String,
    /// Where the tenant lives when the move is queued, and at which epoch.
    pub(crate) source_backend_id: Uuid,
    pub(crate) epoch: i64,
    /// The target, when it exists before the move (move, demote); a promotion
    /// makes its own (`engine`, `database`, `instance`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) backend_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) engine: Option<Engine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) database: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) instance: Option<String>,
}

impl MoveParams {
    /// The dedicated database a promotion makes.
    pub(crate) fn new_database(&self) -> Result<NewDatabase, Error> {
        match (&self.database, &self.instance) {
            (Some(database), Some(instance)) => Ok(NewDatabase {
                slug: self.slug.clone(),
                engine: self.engine.unwrap_or(Engine::Logical),
                database: database.clone(),
                instance: instance.clone(),
            }),
            _ => Err(Error::invalid("invalid_params", "this move provisions no database")),
        }
    }
}

/// What survives between steps of one run in this process: the target's
/// snapshot as of the flip, for the checksums.
#[derive(Default)]
pub(crate) struct MoveRun {
    pub(crate) snapshot: Option<PgConnection>,
}

/// Facts of a running move, read back from its operation row.
pub(crate) struct Facts {
    pub(crate) op: OperationView,
    pub(crate) tenant: Uuid,
    pub(crate) epoch: i64,
    pub(crate) source: Side,
    pub(crate) target: Side,
    pub(crate) tables: Vec<String>,
    pub(crate) name: String,
}

impl Facts {
    pub(crate) async fn read(run: &Run<'_, MoveParams>) -> Result<Facts, Error> {
        let view = run.view().await?;
        #[derive(Deserialize)]
        struct Learnt {
            #[serde(default)]
            tables: Vec<String>,
        }
        let learnt: Learnt =
            serde_json::from_value(view.params.clone()).map_err(|e| Error::invalid("invalid_params", e.to_string()))?;
        let target_id = view.backend_id.ok_or(Error::NotFound("target backend"))?;
        Ok(Facts {
            tenant: run.tenant()?,
            epoch: run.params.epoch,
            source: run.cp.side(run.params.source_backend_id).await?,
            target: run.cp.side(target_id).await?,
            tables: learnt.tables,
            name: replication_name(run.id),
            op: view,
        })
    }
}
