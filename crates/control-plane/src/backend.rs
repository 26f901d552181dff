//! Connections to one backend's database: as its administrator, as the owner
//! role scoped to one tenant, and the catalog facts every operation needs
//! (the tenant tables). Also the destruction of a dedicated backend's storage.

use std::time::Duration;

use sea_orm::sqlx::postgres::{PgConnectOptions, PgConnection};
use sea_orm::sqlx::{self, Connection};
use secrecy::ExposeSecret;
use uuid::Uuid;

use tenantry_core::Engine;
use tenantry_core::db::Credentials;
use tenantry_provisioner::{LogicalProvisioner, quote_ident};

use crate::backends::BackendView;
use crate::error::Error;
use crate::plane::ControlPlane;

/// Tables holding tenant rows, found from the catalog (so a table added by a
/// later migration is never forgotten), children before parents.
const TENANT_TABLES_SQL: &str = "SELECT c.relname::text AS name FROM pg_class c \
    JOIN pg_namespace n ON n.oid = c.relnamespace \
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped \
    WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relname <> 'tenant_residency' \
    ORDER BY EXISTS (SELECT 1 FROM pg_constraint f WHERE f.conrelid = c.oid AND f.contype = 'f') DESC, c.relname";

/// Text forms that do not depend on a server's or session's defaults, for
/// sessions whose rows are compared (checksums, an adoption's verification).
pub(crate) const PINNED_FORMATS: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; \
    SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; SET bytea_output = 'hex'";

/// `lock_not_available`: a `lock_timeout` expired.
pub(crate) const LOCK_NOT_AVAILABLE: &str = "55P03";

/// One backend and its administrator's credentials (moves, erasure and
/// replication need them; the owner role cannot create slots).
pub(crate) struct Side {
    pub(crate) backend: BackendView,
    pub(crate) admin: Credentials,
    /// How its server is verified (`control_plane.backend_tls`).
    pub(crate) tls: tenantry_core::db::Tls,
}

impl Side {
    pub(crate) fn options(&self, creds: &Credentials) -> PgConnectOptions {
        connect_options(&self.backend, creds, "tenantry-move", &self.tls)
    }

    /// A session as the backend's administrator.
    pub(crate) async fn admin(&self) -> Result<PgConnection, Error> {
        Ok(PgConnection::connect_with(&self.options(&self.admin)).await?)
    }
}

/// How to reach `backend` as `creds`.
pub(crate) fn connect_options(
    backend: &BackendView,
    creds: &Credentials,
    application: &str,
    tls: &tenantry_core::db::Tls,
) -> PgConnectOptions {
    tls.apply(PgConnectOptions::new())
        .host(&backend.host)
        .port(u16::try_from(backend.port).unwrap_or(5432))
        .database(&backend.database)
        .username(&creds.user)
        .password(creds.password.expose_secret())
        .application_name(application)
}

/// The SQLSTATE of a database error.
pub(crate) fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

pub(crate) async fn tenant_tables(conn: &mut PgConnection) -> Result<Vec<String>, Error> {
    Ok(sqlx::query_scalar::<_, String>(TENANT_TABLES_SQL).fetch_all(conn).await?)
}

/// `public."a", public."b"` for ANALYZE and VACUUM.
pub(crate) fn table_list(tables: &[String]) -> String {
    tables.iter().map(|t| format!("public.{}", quote_ident(t))).collect::<Vec<_>>().join(", ")
}

/// Scopes an owner session to one tenant (RLS then shows only its rows).
pub(crate) async fn enter(conn: &mut PgConnection, tenant: Uuid) -> Result<(), Error> {
    sqlx::query("SELECT set_config('app.tenant_id', $1, false)").bind(tenant.to_string()).execute(conn).await?;
    Ok(())
}

impl ControlPlane {
    /// How to reach a backend as its administrator. External backends have
    /// no administrator credentials here and cannot be moved from or to.
    pub(crate) async fn side(&self, backend_id: Uuid) -> Result<Side, Error> {
        let backend = self.backend(backend_id).await?;
        let cfg = self.config();
        let admin = match backend.engine {
            Engine::Logical => {
                Credentials { user: cfg.cluster.admin_user.clone(), password: cfg.cluster.admin_password.clone() }
            }
            Engine::Rds => match &cfg.rds_bootstrap_override {
                Some(o) => Credentials { user: o.admin_user.clone(), password: o.admin_password.clone() },
                None => {
                    let rds = self.rds_engine()?;
                    Credentials {
                        user: rds.config().master_username.clone(),
                        password: rds.master_password(&backend.name),
                    }
                }
            },
            Engine::External => {
                return Err(Error::invalid(
                    "engine_unsupported",
                    format!("backend `{}` (external) has no administrator credentials; moves need them", backend.name),
                ));
            }
        };
        Ok(Side { backend, admin, tls: self.config().backend_tls.clone() })
    }

    /// A session as the owner role scoped to one tenant (RLS lets it see that
    /// tenant's rows only), with formatting pinned for checksums.
    pub(crate) async fn tenant_conn(&self, side: &Side, tenant: Uuid) -> Result<PgConnection, Error> {
        let mut c = PgConnection::connect_with(&side.options(&self.config().owner)).await?;
        sqlx::raw_sql(PINNED_FORMATS).execute(&mut c).await?;
        enter(&mut c, tenant).await?;
        Ok(c)
    }

    /// A session on a backend as the owner role (subject to RLS).
    pub(crate) async fn owner_conn(&self, b: &BackendView, application: &str) -> Result<PgConnection, Error> {
        let tls = &self.config().backend_tls;
        Ok(PgConnection::connect_with(&connect_options(b, &self.config().owner, application, tls)).await?)
    }

    /// Marks the tenant fenced on its backend under its exclusive lock (so the
    /// app's in-flight transactions finish first): every later transaction of
    /// the tenant there is refused (TR001). Idempotent; gives up after
    /// `wait` for the lock and `3 * wait` in all (an unreachable backend).
    pub(crate) async fn fence_residency(&self, tenant: Uuid, backend: Uuid, wait: Duration) -> Result<(), Error> {
        let fence = async {
            let side = self.side(backend).await?;
            let mut conn = self.tenant_conn(&side, tenant).await?;
            let mut tx = conn.begin().await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET LOCAL lock_timeout = {}", wait.as_millis())))
                .execute(&mut *tx)
                .await?;
            sqlx::query("SELECT pg_advisory_xact_lock(tenantry_lock_key($1))").bind(tenant).execute(&mut *tx).await?;
            // No deadline: an erasure's fence holds until the rows are gone.
            sqlx::query(
                "UPDATE tenant_residency SET state = 'fenced', fenced_by = NULL, fenced_until = NULL, \
                 moved_to = NULL, moved_epoch = NULL, updated_at = now() WHERE tenant_id = $1",
            )
            .bind(tenant)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            conn.close().await?;
            Ok(())
        };
        tokio::time::timeout(wait * 3, fence).await.unwrap_or(Err(Error::Timeout("fencing the tenant on its backend")))
    }

    /// Destroys a dedicated backend's storage: drops its logical database, or
    /// deletes its RDS instance after a final snapshot (whose id is returned).
    /// Safe to repeat.
    pub(crate) async fn destroy_storage(
        &self,
        engine: Engine,
        name: &str,
        database: &str,
        final_snapshot: bool,
    ) -> Result<Option<String>, Error> {
        if engine != Engine::Rds {
            self.provisioner().drop_database(database).await?;
            return Ok(None);
        }
        let snapshot =
            self.rds_engine()?.retire_with(name, final_snapshot).await.map_err(tenantry_provisioner::Error::from)?;
        if let Some(o) = &self.config().rds_bootstrap_override {
            let tls = self.config().backend_tls.clone();
            let admin =
                LogicalProvisioner::connect(&o.host, o.port, &o.admin_user, &o.admin_password, |c| tls.apply(c))
                    .await?;
            admin.drop_database(database).await?;
        }
        Ok(snapshot)
    }
}
