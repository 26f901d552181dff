use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found on PATH or under \
         /usr/lib/postgresql/*/bin. Install them: `apt-get install postgresql-15` (Debian/Ubuntu) \
         or `dnf install postgresql15-server` (Fedora/RHEL)"
    )]
    PostgresNotInstalled,
    #[error(
        "running as root, but the unprivileged `{0}` user that must own the cluster does not exist; install the postgresql package or create the user"
    )]
    NoServiceUser(String),
    #[error("{what} failed ({status}): {output}")]
    Command { what: String, status: String, output: String },
    #[error("data folder {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("PostgreSQL did not accept connections on port {port} within {secs} s; see {log}")]
    StartTimeout { port: u16, secs: u64, log: PathBuf },
    #[error("invalid database name `{0}`: use 1-63 characters of a-z, 0-9 and _")]
    InvalidName(String),
    #[error("{0}")]
    Rds(#[from] crate::rds::RdsError),
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}
