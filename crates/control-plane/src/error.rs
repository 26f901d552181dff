use actix_web::http::StatusCode;
use tenantry_core::web::ApiError;

/// What a control-plane action can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("provisioning failed: {0}")]
    Provisioner(#[from] tenantry_provisioner::Error),
    #[error("registry: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error("backend: {0}")]
    Backend(#[from] sea_orm::sqlx::Error),
}

impl Error {
    /// Whether retrying cannot help (a cloud API rejected the request).
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::Provisioner(tenantry_provisioner::Error::Rds(e)) => e.is_permanent(),
            // Checks that failed (a preflight, a mismatch) fail the same way again.
            Error::Invalid { .. } | Error::Conflict { .. } => true,
            _ => false,
        }
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Error::Invalid { code, message: message.into() }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid { code, message } => ApiError::unprocessable(code, message),
            Error::NotFound(what) => ApiError::not_found(what),
            Error::Conflict { code, message } => ApiError::conflict(code, message),
            Error::Provisioner(p) => {
                tracing::error!(error = %p, "provisioning failed");
                ApiError::new(StatusCode::BAD_GATEWAY, "provisioning_failed", p.to_string())
            }
            Error::Db(db) => ApiError::internal(&db),
            Error::Backend(e) => {
                tracing::warn!(error = %e, "backend unreachable");
                ApiError::new(StatusCode::BAD_GATEWAY, "backend_unavailable", format!("a backend did not answer: {e}"))
            }
        }
    }
}
