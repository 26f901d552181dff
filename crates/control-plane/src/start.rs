//! Start-up: connect, migrate the registry, make sure the template database
//! exists at the latest tenant schema.

use tenantry_core::BackendKind;

use crate::config::ControlPlaneConfig;
use crate::error::Error;
use crate::migrate;
use crate::plane::ControlPlane;

impl ControlPlane {
    /// Validates the configuration, connects to the registry as the owner and
    /// migrates it, and registers the template database.
    pub async fn start(cfg: ControlPlaneConfig) -> Result<Self, Error> {
        cfg.validate().map_err(|m| Error::invalid("invalid_configuration", m))?;
        let cp = Self::connect(cfg).await?;
        migrate::apply(cp.registry(), migrate::REGISTRY, &cp.config().app_role).await?;
        let template = cp.config().template_database.clone();
        cp.register_backend("control-plane", &template, BackendKind::Template).await?;
        Ok(cp)
    }
}
