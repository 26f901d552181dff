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
    /// A backend did not answer within a bound: worth retrying.
    #[error("{0}: the backend did not answer in time")]
    Timeout(&'static str),
    /// Something is in use for now (a replication slot a walsender holds):
    /// worth retrying.
    #[error("{message}")]
    Busy { code: &'static str, message: String },
    /// A cutover gave up its fence and will be tried again (lag, a slow
    /// in-flight transaction, replication too slow for the fence bound).
    #[error("cutover deferred: {0}")]
    Deferred(String),
}

impl Error {
    /// Whether retrying cannot help, decided by the variant: checks that
    /// failed (a preflight, a mismatch) fail the same way again, and so does a
    /// request a cloud API rejected; an unreachable or busy backend, a
    /// timeout and a deferred cutover are worth another try.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::Provisioner(tenantry_provisioner::Error::Rds(e)) => e.is_permanent(),
            Error::Invalid { .. } | Error::Conflict { .. } => true,
            // A row another step writes (an endpoint, a backend) may not be there yet.
            Error::NotFound(_)
            | Error::Provisioner(_)
            | Error::Db(_)
            | Error::Backend(_)
            | Error::Timeout(_)
            | Error::Busy { .. }
            | Error::Deferred(_) => false,
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
            Error::Timeout(_) | Error::Busy { .. } | Error::Deferred(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "backend_busy", e.to_string())
            }
            Error::Backend(e) => {
                tracing::warn!(error = %e, "backend unreachable");
                ApiError::new(StatusCode::BAD_GATEWAY, "backend_unavailable", format!("a backend did not answer: {e}"))
            }
        }
    }
}
