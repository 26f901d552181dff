//! The `provision` kind: a dedicated tenant's own database, made before it
//! serves. Logical: `create_database` (a copy of the template) ->
//! `register_backend` -> `place`. RDS: `create_instance` -> `wait_available`
//! -> `bootstrap` (roles, database, grants) -> `register_backend` -> `place`.
//! `place` writes residency, placement, the tenant's status and the
//! operation's end in one registry transaction. Policy: rolled back on any
//! failure or cancel (the database or instance goes, with a final snapshot on
//! RDS; the backend row and the never-served tenant are removed). A promotion
//! runs the same first steps (see [`NewDatabase::step`]).

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use sea_orm::{ConnectionTrait, TransactionTrait};
use tenantry_core::{BackendKind, Engine};
use tenantry_provisioner::{DatabaseAddress, LogicalProvisioner, RoleCredentials};

use crate::error::Error;
use crate::kind::{Kind, Policy, Run, Stop};
use crate::operation::{OperationKind, OperationState, Step};
use crate::plane::ControlPlane;
use crate::registry::stmt;

/// The steps of a logical provision, in order.
pub const PROVISION_STEPS: &[Step] = &[Step::CreateDatabase, Step::RegisterBackend, Step::Place];
/// The steps of an RDS provision, in order.
pub const PROVISION_RDS_STEPS: &[Step] =
    &[Step::CreateInstance, Step::WaitAvailable, Step::Bootstrap, Step::RegisterBackend, Step::Place];

/// A dedicated database to be made: its engine and deterministic names, so a
/// retry finds what an earlier attempt made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewDatabase {
    pub slug: String,
    #[serde(default = "logical")]
    pub engine: Engine,
    pub database: String,
    pub instance: String,
}

fn logical() -> Engine {
    Engine::Logical
}

/// The `provision` kind.
pub(crate) struct Provision;

impl Kind for Provision {
    type Params = NewDatabase;
    type State = ();
    const FAILPOINTS: &'static str = "provision";
    const POLICY: Policy = Policy::RollBack;

    fn steps(_: OperationKind, params: &NewDatabase) -> &'static [Step] {
        match params.engine {
            Engine::Rds => PROVISION_RDS_STEPS,
            _ => PROVISION_STEPS,
        }
    }

    async fn step(run: &Run<'_, NewDatabase>, _: &mut (), step: Step) -> Result<(), Stop> {
        let tenant = run.tenant()?;
        if step == Step::Place {
            let backend_id = run.view().await?.backend_id.ok_or(Error::NotFound("backend"))?;
            let backend = run.cp.backend(backend_id).await?;
            run.cp.place_tenant("operation", tenant, &backend, Some((run.id, run.owner))).await?;
            return Ok(());
        }
        Ok(run.params.step(run.cp, run.id, tenant, step).await?)
    }

    async fn roll_back(
        run: &Run<'_, NewDatabase>,
        outcome: OperationState,
        error: Option<String>,
    ) -> Result<(), Error> {
        let tenant = run.tenant()?;
        run.params.destroy(run.cp).await?;
        let txn = run.cp.registry().begin().await?;
        crate::registry::forget_unserved(&txn, tenant).await?;
        run.rolled_back(&txn, outcome, error, json!({})).await?;
        txn.commit().await?;
        Ok(())
    }
}

/// Where an RDS instance is bootstrapped, and as whom.
struct BootstrapTarget {
    host: String,
    port: u16,
    admin_user: String,
    admin_password: SecretString,
    /// The test override points at a cluster whose roles already exist.
    roles_exist: bool,
}

impl NewDatabase {
    /// The backend's registry name: the instance on RDS, else the database.
    pub(crate) fn backend_name(&self) -> &str {
        if self.engine == Engine::Rds { &self.instance } else { &self.database }
    }

    /// One step of making the database (every step but `place`).
    pub(crate) async fn step(&self, cp: &ControlPlane, op: Uuid, tenant: Uuid, step: Step) -> Result<(), Error> {
        let cfg = cp.config();
        match step {
            Step::CreateInstance => {
                let t = tenant.to_string();
                let tags =
                    [("tenantry:tenant-id", t.as_str()), ("tenantry:slug", &self.slug), ("managed-by", "tenantry")];
                cp.rds_engine()?
                    .ensure_instance(&self.instance, &tags)
                    .await
                    .map_err(tenantry_provisioner::Error::from)?;
            }
            Step::WaitAvailable => {
                let ep =
                    cp.rds_engine()?.wait_available(&self.instance).await.map_err(tenantry_provisioner::Error::from)?;
                crate::registry::set_params(cp.registry(), op, json!({"host": ep.host, "port": ep.port})).await?;
            }
            Step::Bootstrap => {
                let target = self.bootstrap_target(cp, op).await?;
                let tls = cfg.backend_tls.clone();
                let admin = LogicalProvisioner::connect(
                    &target.host,
                    target.port,
                    &target.admin_user,
                    &target.admin_password,
                    |c| tls.apply(c),
                )
                .await?;
                if !target.roles_exist {
                    let app_password = cfg.app_password.clone().ok_or_else(|| {
                        Error::invalid("app_password_missing", "control_plane.app_password is needed to bootstrap RDS")
                    })?;
                    let owner = RoleCredentials::new(cfg.owner.user.clone(), cfg.owner.password.clone());
                    let app = RoleCredentials::new(cfg.app_role.clone(), app_password)
                        .with_scram_iterations(cfg.app_scram_iterations);
                    admin.ensure_roles(&owner, &app).await?;
                }
                admin.create_database(&self.database, &cfg.owner.user, None).await?;
                admin.grant_connect(&self.database, &cfg.app_role).await?;
            }
            Step::CreateDatabase => {
                cp.provisioner().create_database(&self.database, &cfg.owner.user, Some(&cfg.template_database)).await?;
            }
            Step::RegisterBackend => {
                let backend = if self.engine == Engine::Rds {
                    let target = self.bootstrap_target(cp, op).await?;
                    let addr =
                        DatabaseAddress { host: target.host, port: target.port, database: self.database.clone() };
                    cp.register_database("operation", &self.instance, BackendKind::Dedicated, Engine::Rds, &addr)
                        .await?
                } else {
                    cp.register_backend("operation", &self.database, BackendKind::Dedicated).await?
                };
                cp.registry()
                    .execute_raw(stmt(
                        "UPDATE operations SET backend_id = $2 WHERE id = $1",
                        vec![op.into(), backend.id.into()],
                    ))
                    .await?;
            }
            other => return Err(Error::invalid("unknown_step", format!("`{other}` does not make a database"))),
        }
        Ok(())
    }

    /// Undoes [`NewDatabase::step`]: the storage (with a final snapshot on
    /// RDS) and the backend row, unless a tenant lives there. Safe to repeat.
    pub(crate) async fn destroy(&self, cp: &ControlPlane) -> Result<(), Error> {
        cp.destroy_storage(self.engine, self.backend_name(), &self.database, true).await?;
        cp.registry()
            .execute_raw(stmt(
                "DELETE FROM backends WHERE name = $1 AND kind = 'dedicated' \
                 AND NOT EXISTS (SELECT 1 FROM placements p WHERE p.backend_id = backends.id)",
                vec![self.backend_name().into()],
            ))
            .await?;
        Ok(())
    }

    async fn bootstrap_target(&self, cp: &ControlPlane, op: Uuid) -> Result<BootstrapTarget, Error> {
        if let Some(o) = &cp.config().rds_bootstrap_override {
            return Ok(BootstrapTarget {
                host: o.host.clone(),
                port: o.port,
                admin_user: o.admin_user.clone(),
                admin_password: o.admin_password.clone(),
                roles_exist: true,
            });
        }
        let rds = cp.rds_engine()?;
        #[derive(Deserialize)]
        struct Endpoint {
            host: Option<String>,
            port: Option<u16>,
        }
        let params = crate::registry::operation(cp.registry(), op).await?.ok_or(Error::NotFound("operation"))?.params;
        let ep: Endpoint =
            serde_json::from_value(params).map_err(|e| Error::invalid("invalid_params", e.to_string()))?;
        Ok(BootstrapTarget {
            host: ep.host.ok_or(Error::NotFound("instance endpoint"))?,
            port: ep.port.unwrap_or(5432),
            admin_user: rds.config().master_username.clone(),
            admin_password: rds.master_password(&self.instance),
            roles_exist: false,
        })
    }
}
