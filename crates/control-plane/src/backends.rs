//! Backends in the registry: registered (created, migrated, marked ready),
//! listed, and chosen as a home for new tenants.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, FromQueryResult, TransactionTrait};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use tenantry_core::db::{PoolSizing, lazy_pool};
use tenantry_core::{BackendKind, BackendStatus, Engine, new_id};
use tenantry_provisioner::DatabaseAddress;

use crate::error::Error;
use crate::migrate;
use crate::plane::ControlPlane;
use crate::registry::{audit, stmt};

/// A backend as the admin API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BackendView {
    pub id: Uuid,
    pub name: String,
    pub kind: BackendKind,
    pub engine: Engine,
    pub host: String,
    pub port: i32,
    pub database: String,
    pub region: String,
    pub status: BackendStatus,
    pub schema_version: i32,
    pub tenants: i64,
    pub created_at: DateTime<Utc>,
    /// The pooler apps reach this backend through, if any.
    pub pooler: Option<Pooler>,
}

/// A connection pooler in front of a backend (PgBouncer). Apps use unnamed
/// statements through it and keep the tenant context transaction-local.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Pooler {
    pub host: String,
    #[schema(minimum = 1, maximum = 65535)]
    pub port: u16,
    /// `transaction` (PgBouncer's `pool_mode = transaction`) or `session`.
    pub mode: PoolerMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PoolerMode {
    Transaction,
    Session,
}

impl PoolerMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolerMode::Transaction => "transaction",
            PoolerMode::Session => "session",
        }
    }
}

impl BackendView {
    /// Where the backend's database is.
    pub fn address(&self) -> DatabaseAddress {
        DatabaseAddress {
            host: self.host.clone(),
            port: u16::try_from(self.port).unwrap_or(5432),
            database: self.database.clone(),
        }
    }
}

#[derive(FromQueryResult)]
struct BackendRow {
    id: Uuid,
    name: String,
    kind: String,
    engine: String,
    host: String,
    port: i32,
    database: String,
    region: String,
    status: String,
    schema_version: i32,
    tenants: i64,
    created_at: DateTime<Utc>,
    pooler_host: Option<String>,
    pooler_port: Option<i32>,
    pooler_mode: Option<String>,
}

impl TryFrom<BackendRow> for BackendView {
    type Error = Error;
    fn try_from(r: BackendRow) -> Result<Self, Error> {
        let corrupt = |e: tenantry_core::ParseError| Error::Db(sea_orm::DbErr::Custom(e.0));
        Ok(BackendView {
            id: r.id,
            name: r.name,
            kind: r.kind.parse().map_err(corrupt)?,
            engine: r.engine.parse().map_err(corrupt)?,
            host: r.host,
            port: r.port,
            database: r.database,
            region: r.region,
            status: r.status.parse().map_err(corrupt)?,
            schema_version: r.schema_version,
            tenants: r.tenants,
            created_at: r.created_at,
            pooler: match (r.pooler_host, r.pooler_port, r.pooler_mode.as_deref()) {
                (Some(host), Some(port), Some(mode)) => Some(Pooler {
                    host,
                    port: u16::try_from(port).unwrap_or(6432),
                    mode: if mode == "session" { PoolerMode::Session } else { PoolerMode::Transaction },
                }),
                _ => None,
            },
        })
    }
}

const BACKEND_SELECT: &str = "SELECT b.id, b.name, b.kind, b.engine, b.host, b.port, b.database, b.region, \
    b.status, b.schema_version, count(p.tenant_id) AS tenants, b.created_at, \
    b.pooler_host, b.pooler_port, b.pooler_mode \
    FROM backends b LEFT JOIN placements p ON p.backend_id = b.id";

/// The logical database of a dedicated tenant: derived from its id, so a retry
/// finds the database it made before.
pub fn dedicated_db_name(tenant_id: Uuid) -> String {
    format!("tenant_{}", tenant_id.simple())
}

impl ControlPlane {
    async fn backends_where(&self, clause: &str, values: Vec<sea_orm::Value>) -> Result<Vec<BackendView>, Error> {
        BackendRow::find_by_statement(stmt(&format!("{BACKEND_SELECT} {clause}"), values))
            .all(self.registry())
            .await?
            .into_iter()
            .map(BackendView::try_from)
            .collect()
    }

    /// Puts a pooler in front of a backend for the app's requests (or, with
    /// `None`, takes it away); apps follow within moments (NOTIFY). Audited.
    pub async fn set_pooler(&self, actor: &str, id: Uuid, pooler: Option<Pooler>) -> Result<BackendView, Error> {
        if let Some(p) = &pooler {
            let host_ok = !p.host.is_empty()
                && p.host.len() <= 253
                && p.host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'));
            if !host_ok {
                return Err(Error::invalid("invalid_pooler", "pooler host must be a host name or an IP address"));
            }
            if p.port == 0 {
                return Err(Error::invalid("invalid_pooler", "pooler port must be 1-65535"));
            }
        }
        let before = self.backend(id).await?;
        let txn = self.registry().begin().await?;
        txn.execute_raw(stmt(
            "UPDATE backends SET pooler_host = $2, pooler_port = $3, pooler_mode = $4, updated_at = now() WHERE id = $1",
            vec![
                id.into(),
                pooler.as_ref().map(|p| p.host.clone()).into(),
                pooler.as_ref().map(|p| i32::from(p.port)).into(),
                pooler.as_ref().map(|p| p.mode.as_str().to_string()).into(),
            ],
        ))
        .await?;
        audit(&txn, actor, "backend.pooler", None, json!({"backend_id": id, "before": before.pooler, "after": pooler}))
            .await?;
        txn.commit().await?;
        self.backend(id).await
    }

    pub async fn backend(&self, id: Uuid) -> Result<BackendView, Error> {
        self.backends_where("WHERE b.id = $1 GROUP BY b.id", vec![id.into()])
            .await?
            .pop()
            .ok_or(Error::NotFound("backend"))
    }

    pub async fn backends(&self) -> Result<Vec<BackendView>, Error> {
        self.backends_where("GROUP BY b.id ORDER BY b.created_at", vec![]).await
    }

    /// The least-loaded ready shared pool of a region.
    pub(crate) async fn pick_shared_pool(&self, region: &str) -> Result<BackendView, Error> {
        self.backends_where(
            "WHERE b.kind = 'shared_pool' AND b.status = 'ready' AND b.region = $1 \
             GROUP BY b.id ORDER BY count(p.tenant_id), b.created_at LIMIT 1",
            vec![region.into()],
        )
        .await?
        .pop()
        .ok_or_else(|| Error::invalid("region_unavailable", format!("no ready shared pool in region `{region}`")))
    }

    /// Registers a backend (a logical database on the managed cluster, created
    /// when absent, as a copy of the template for dedicated backends), migrates
    /// it to the latest tenant schema and marks it ready. Safe to repeat: an
    /// existing backend of that name is brought up to date.
    pub async fn register_backend(&self, actor: &str, name: &str, kind: BackendKind) -> Result<BackendView, Error> {
        let cfg = self.config();
        let template = (kind == BackendKind::Dedicated).then_some(cfg.template_database.as_str());
        let addr = self.provisioner().create_database(name, &cfg.owner.user, template).await?;
        if kind != BackendKind::Template {
            self.provisioner().grant_connect(name, &cfg.app_role).await?;
        }
        self.register_database(actor, name, kind, Engine::Logical, &addr).await
    }

    /// Records an existing database as a backend (`ON CONFLICT` on its name,
    /// so safe to repeat), migrates it and marks it ready.
    pub(crate) async fn register_database(
        &self,
        actor: &str,
        name: &str,
        kind: BackendKind,
        engine: Engine,
        addr: &DatabaseAddress,
    ) -> Result<BackendView, Error> {
        let row = self
            .registry()
            .query_one_raw(stmt(
                "INSERT INTO backends (id, name, kind, engine, host, port, database, region, status) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'provisioning') \
                 ON CONFLICT (name) DO UPDATE SET updated_at = now() RETURNING id",
                vec![
                    new_id().into(),
                    name.into(),
                    kind.as_str().into(),
                    engine.as_str().into(),
                    addr.host.clone().into(),
                    i32::from(addr.port).into(),
                    addr.database.clone().into(),
                    self.config().cluster.region.clone().into(),
                ],
            ))
            .await?
            .ok_or(Error::NotFound("backend"))?;
        let id: Uuid = row.try_get("", "id")?;
        let version = self.migrate_database(id, kind, addr, migrate::TENANT).await?;
        let txn = self.registry().begin().await?;
        txn.execute_raw(stmt(
            "UPDATE backends SET status = 'ready', schema_version = $2, updated_at = now() WHERE id = $1",
            vec![id.into(), version.into()],
        ))
        .await?;
        audit(
            &txn,
            actor,
            "backend.register",
            None,
            json!({"backend_id": id, "name": name, "kind": kind, "engine": engine}),
        )
        .await?;
        txn.commit().await?;
        self.backend(id).await
    }

    /// Applies the tenant migrations to one backend database. The template gets
    /// a pool of its own that is closed at once: `CREATE DATABASE ... TEMPLATE`
    /// refuses while anyone is connected to it.
    pub(crate) async fn migrate_database(
        &self,
        id: Uuid,
        kind: BackendKind,
        addr: &DatabaseAddress,
        set: &[migrate::Migration],
    ) -> Result<i32, sea_orm::DbErr> {
        let cfg = self.config();
        if kind == BackendKind::Template {
            let pool = lazy_pool(
                &addr.host,
                addr.port,
                &addr.database,
                &cfg.owner,
                "tenantry-control-plane",
                PoolSizing { max_connections: 1, tls: cfg.cluster.tls.clone(), ..PoolSizing::default() },
            );
            let result = self.migrate_and_install(&pool, set).await;
            pool.close().await?;
            result
        } else {
            let pool = self.owner_pool(id, addr).await;
            self.migrate_and_install(&pool, set).await
        }
    }

    /// Applies `set` and, on a tenant schema with the vouched gate, makes the
    /// backend's gate keys this control plane's (a rotation reaches every
    /// backend with the next migration run).
    async fn migrate_and_install(
        &self,
        pool: &sea_orm::DatabaseConnection,
        set: &[migrate::Migration],
    ) -> Result<i32, sea_orm::DbErr> {
        let version = migrate::apply(pool, set, &self.config().app_role).await?;
        if migrate::is_tenant(set) && version >= tenantry_core::gate::GATE_SCHEMA {
            migrate::install_gate_keys(pool, &self.config().gate).await?;
        }
        Ok(version)
    }

    /// Marks a backend retired (its storage is gone).
    pub(crate) async fn mark_retired(&self, db: &impl ConnectionTrait, backend: Uuid) -> Result<(), Error> {
        db.execute_raw(stmt(
            "UPDATE backends SET status = 'retired', updated_at = now() WHERE id = $1",
            vec![backend.into()],
        ))
        .await?;
        Ok(())
    }

    /// The engine a new dedicated backend gets (`logical` unless asked), if
    /// this control plane can provision it.
    pub(crate) fn dedicated_engine(&self, engine: Option<Engine>) -> Result<Engine, Error> {
        match engine.unwrap_or(Engine::Logical) {
            Engine::Logical => Ok(Engine::Logical),
            Engine::Rds if self.rds.is_some() => Ok(Engine::Rds),
            Engine::Rds => {
                Err(Error::invalid("engine_unavailable", "the rds engine is not configured on this control plane"))
            }
            Engine::External => {
                Err(Error::invalid("engine_unavailable", "external backends are registered by hand, not provisioned"))
            }
        }
    }

    /// The region where `engine` provisions dedicated databases (the cluster's,
    /// or the RDS client's); `None` when the engine is not configured.
    pub fn dedicated_region(&self, engine: Engine) -> Option<String> {
        match engine {
            Engine::Rds => self.rds.as_ref().map(|x| x.config().region.clone()),
            Engine::Logical => Some(self.config().cluster.region.clone()),
            Engine::External => None,
        }
    }

    /// Refuses a region `engine` does not provision in (`None`: its own).
    pub fn check_region(&self, engine: Engine, region: Option<&str>) -> Result<(), Error> {
        match region {
            Some(r) if Some(r) != self.dedicated_region(engine).as_deref() => {
                Err(Error::invalid("region_unavailable", format!("no {} capacity in region `{r}`", engine.as_str())))
            }
            _ => Ok(()),
        }
    }
}
