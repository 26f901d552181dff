//! Migration fan-out: the tenant-data schema applied to every backend (shared
//! pools, dedicated databases, the template) with bounded concurrency. Each
//! backend records its version in the DDL's own transaction; a failing backend
//! is recorded and skipped without stopping the others; a re-run resumes.

use std::time::Instant;

use futures::StreamExt;
use sea_orm::{ConnectionTrait, DbBackend, FromQueryResult, Statement};
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use tenantry_core::BackendKind;
use tenantry_provisioner::DatabaseAddress;

use crate::registry::audit;
use crate::{ControlPlane, Error, migrate};

/// What happened to one backend in a fan-out run.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    /// Migrated from `from` to `to`.
    Applied { from: i32, to: i32 },
    /// Already at the latest version: nothing to do.
    UpToDate { version: i32 },
    /// Could not be migrated; the others went on.
    Failed { error: String },
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BackendRun {
    pub backend_id: Uuid,
    pub name: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub duration_ms: u64,
}

/// A backend's migration state as the registry records it.
#[derive(Debug, Clone, Serialize, FromQueryResult, utoipa::ToSchema)]
pub struct MigrationStatus {
    pub backend_id: Uuid,
    pub name: String,
    pub kind: String,
    pub status: String,
    pub schema_version: i32,
    pub migration_state: String,
    pub migration_error: Option<String>,
    pub migration_ms: Option<i32>,
    pub migrated_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(FromQueryResult)]
struct Target {
    id: Uuid,
    name: String,
    kind: String,
    host: String,
    port: i32,
    database: String,
    schema_version: i32,
}

fn stmt(sql: &str, values: Vec<sea_orm::Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

impl ControlPlane {
    /// Every live backend's migration state.
    pub async fn migration_status(&self) -> Result<Vec<MigrationStatus>, Error> {
        Ok(MigrationStatus::find_by_statement(stmt(
            "SELECT id AS backend_id, name, kind, status, schema_version, migration_state, migration_error, \
             migration_ms, migrated_at FROM backends WHERE status <> 'retired' ORDER BY created_at",
            vec![],
        ))
        .all(self.registry())
        .await?)
    }

    /// Migrates every live backend to the latest tenant schema, `concurrency`
    /// at a time; `progress(done, total)` is called after each backend.
    pub async fn migrate_fleet(
        &self,
        actor: &str,
        concurrency: usize,
        progress: impl Fn(usize, usize),
    ) -> Result<Vec<BackendRun>, Error> {
        self.migrate_fleet_to(actor, migrate::TENANT, concurrency, progress).await
    }

    /// [`Self::migrate_fleet`] with an explicit migration set (benchmarks
    /// measure a fan-out of an extra migration with it).
    pub async fn migrate_fleet_to(
        &self,
        actor: &str,
        set: &'static [migrate::Migration],
        concurrency: usize,
        progress: impl Fn(usize, usize),
    ) -> Result<Vec<BackendRun>, Error> {
        let targets = Target::find_by_statement(stmt(
            "SELECT id, name, kind, host, port, database, schema_version FROM backends \
             WHERE status IN ('ready', 'draining', 'provisioning') ORDER BY created_at",
            vec![],
        ))
        .all(self.registry())
        .await?;
        let total = targets.len();
        let latest = migrate::latest(set);
        let mut runs = Vec::with_capacity(total);
        let mut stream = futures::stream::iter(targets)
            .map(|t| self.migrate_backend(t, set, latest))
            .buffer_unordered(concurrency.max(1));
        while let Some(run) = stream.next().await {
            runs.push(run);
            progress(runs.len(), total);
        }
        let failed = runs.iter().filter(|r| matches!(r.outcome, Outcome::Failed { .. })).count();
        let applied = runs.iter().filter(|r| matches!(r.outcome, Outcome::Applied { .. })).count();
        audit(
            self.registry(),
            actor,
            "migrations.apply",
            None,
            json!({"backends": total, "applied": applied, "failed": failed, "latest": latest}),
        )
        .await?;
        Ok(runs)
    }

    async fn migrate_backend(&self, t: Target, set: &[migrate::Migration], latest: i32) -> BackendRun {
        let started = Instant::now();
        let outcome = if t.schema_version >= latest {
            Outcome::UpToDate { version: t.schema_version }
        } else {
            let _ = self
                .registry()
                .execute_raw(stmt("UPDATE backends SET migration_state = 'running' WHERE id = $1", vec![t.id.into()]))
                .await;
            let addr = DatabaseAddress {
                host: t.host.clone(),
                port: u16::try_from(t.port).unwrap_or(5432),
                database: t.database.clone(),
            };
            let kind = t.kind.parse().unwrap_or(BackendKind::Dedicated);
            match self.migrate_database(t.id, kind, &addr, set).await {
                Ok(v) => Outcome::Applied { from: t.schema_version, to: v },
                Err(e) => Outcome::Failed { error: e.to_string() },
            }
        };
        let duration_ms = started.elapsed().as_millis() as u64;
        let (state, error, version) = match &outcome {
            Outcome::Applied { to, .. } => ("idle", None, Some(*to)),
            Outcome::UpToDate { .. } => ("idle", None, None),
            Outcome::Failed { error } => ("failed", Some(error.clone()), None),
        };
        if !matches!(outcome, Outcome::UpToDate { .. }) {
            let res = self
                .registry()
                .execute_raw(stmt(
                    "UPDATE backends SET migration_state = $2, migration_error = $3, migration_ms = $4, \
                     schema_version = coalesce($5, schema_version), migrated_at = now(), updated_at = now() \
                     WHERE id = $1",
                    vec![t.id.into(), state.into(), error.into(), (duration_ms as i32).into(), version.into()],
                ))
                .await;
            if let Err(e) = res {
                tracing::error!(backend = %t.id, error = %e, "could not record a migration outcome");
            }
        }
        if let Outcome::Failed { error } = &outcome {
            tracing::warn!(backend = %t.id, name = %t.name, %error, "migration failed; skipped");
        }
        BackendRun { backend_id: t.id, name: t.name, outcome, duration_ms }
    }
}
