//! Connection pools to one PostgreSQL database, built from an address and a
//! role's credentials (so passwords never travel inside URLs or the registry).

use std::time::Duration;

use sea_orm::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sea_orm::{DatabaseConnection, SqlxPostgresConnector};
use secrecy::{ExposeSecret, SecretString};

/// A login role and its password.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub user: String,
    pub password: SecretString,
}

/// How a connection checks the server it reaches (libpq's `sslmode`):
/// `disable` sends everything in clear; `require` encrypts but trusts any
/// certificate; `verify-ca` also checks that the certificate chains to the
/// CA bundle; `verify-full` also checks that it names the host connected
/// to. Default `verify-full`: every connection verifies its peer. Only the
/// dev stack and a loopback test use less.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    Disable,
    Require,
    VerifyCa,
    #[default]
    VerifyFull,
}

/// TLS for the connections to one kind of PostgreSQL address.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Default `verify-full`.
    #[serde(default)]
    pub mode: TlsMode,
    /// The CA bundle (PEM) the server's certificate must chain to: the RDS
    /// bundle on AWS (docs/deploy.md). Default: the platform's web roots.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

impl Tls {
    /// `opts` with this TLS mode and CA bundle.
    pub fn apply(&self, opts: PgConnectOptions) -> PgConnectOptions {
        use sea_orm::sqlx::postgres::PgSslMode;
        let mode = match self.mode {
            TlsMode::Disable => PgSslMode::Disable,
            TlsMode::Require => PgSslMode::Require,
            TlsMode::VerifyCa => PgSslMode::VerifyCa,
            TlsMode::VerifyFull => PgSslMode::VerifyFull,
        };
        let opts = opts.ssl_mode(mode);
        match &self.ca_file {
            Some(ca) => opts.ssl_root_cert(ca),
            None => opts,
        }
    }

    /// libpq's `sslmode` (and `sslrootcert`) words for a connection string.
    pub fn conninfo(&self) -> String {
        let mode = match self.mode {
            TlsMode::Disable => "disable",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        };
        match &self.ca_file {
            Some(ca) => format!(
                "sslmode={mode} sslrootcert='{}'",
                ca.display().to_string().replace('\\', "\\\\").replace('\'', "\\'")
            ),
            None => format!("sslmode={mode}"),
        }
    }
}

/// How big a pool may grow, how long an idle connection is kept, and the
/// statement timeout its sessions start with.
#[derive(Clone, Debug)]
pub struct PoolSizing {
    pub max_connections: u32,
    pub idle_timeout: Duration,
    pub acquire_timeout: Duration,
    /// The session's `statement_timeout` on every connection of the pool, set
    /// in the startup packet (so it costs no round trip); `None` keeps the
    /// role's own. Not sent through a pooler (see `pooled`).
    pub statement_timeout_ms: Option<u32>,
    /// Through a transaction-mode pooler (PgBouncer 1.18): no statement cache
    /// (callers use unnamed statements inside transactions) and no startup
    /// options a pooler would refuse or drop.
    pub pooled: bool,
    /// A connection taken from the pool is checked with a round trip first
    /// only when it sat idle at least this long; `None` checks every one
    /// (sqlx's default). On a request path that takes a connection thousands
    /// of times a second the check is a round trip per request; a connection
    /// that broke while in steady use fails its statement instead, as one
    /// that breaks mid-request does anyway.
    pub check_idle_after: Option<Duration>,
    /// Sessions start with `plan_cache_mode = force_generic_plan`: a prepared
    /// statement is planned once per connection, never per execution. With a
    /// skewed tenant column PostgreSQL finds a custom plan for a small tenant
    /// cheaper than the generic one (whose estimate is an average tenant) and
    /// keeps re-planning every execution (and re-parsing the inlined SQL
    /// function of the RLS policy) while the plan is the same index scan; at
    /// 10,000 tenants on a 10 M-row pool that doubled each read's server time.
    /// Not sent through a pooler (it drops startup options).
    pub generic_plans: bool,
    /// How the server is checked. Default `verify-full` against the
    /// platform's roots.
    pub tls: Tls,
}

impl Default for PoolSizing {
    fn default() -> Self {
        Self {
            max_connections: 8,
            idle_timeout: Duration::from_secs(300),
            acquire_timeout: Duration::from_secs(5),
            statement_timeout_ms: None,
            pooled: false,
            check_idle_after: None,
            generic_plans: false,
            tls: Tls::default(),
        }
    }
}

/// A lazily connecting pool: no connection is opened until the first query.
pub fn lazy_pool(
    host: &str,
    port: u16,
    database: &str,
    creds: &Credentials,
    application_name: &str,
    sizing: PoolSizing,
) -> DatabaseConnection {
    let mut opts = PgConnectOptions::new()
        .host(host)
        .port(port)
        .database(database)
        .username(&creds.user)
        .password(creds.password.expose_secret())
        .application_name(application_name);
    opts = sizing.tls.apply(opts);
    if sizing.pooled {
        opts = opts.statement_cache_capacity(0).extra_float_digits(None);
    } else {
        if let Some(ms) = sizing.statement_timeout_ms {
            opts = opts.options([("statement_timeout", ms.to_string())]);
        }
        if sizing.generic_plans {
            opts = opts.options([("plan_cache_mode", "force_generic_plan")]);
        }
    }
    let mut pool = PgPoolOptions::new()
        .max_connections(sizing.max_connections)
        .min_connections(0)
        .idle_timeout(Some(sizing.idle_timeout))
        .acquire_timeout(sizing.acquire_timeout);
    if let Some(after) = sizing.check_idle_after {
        pool = pool.test_before_acquire(false).before_acquire(move |conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= after {
                    sea_orm::sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        });
    }
    let pool = pool.connect_lazy_with(opts);
    SqlxPostgresConnector::from_sqlx_postgres_pool(pool)
}

/// The SQLSTATE of a database error, if the server sent one.
pub fn sqlstate(err: &sea_orm::DbErr) -> Option<String> {
    use sea_orm::{DbErr, RuntimeErr};
    match err {
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => match &**e {
            sea_orm::sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
            _ => None,
        },
        _ => None,
    }
}

/// SQLSTATE raised by `tenantry_enter` when the tenant is not resident at the
/// caller's epoch (moved away, fenced, or never here).
pub const NOT_RESIDENT: &str = "TR001";
/// SQLSTATE raised by `tenantry_enter` on a sealed source: the tenant moved;
/// the error's DETAIL is `<backend id>:<epoch>` of its new home.
pub const MOVED: &str = "TR002";

/// Where a sealed source says the tenant went (a `MOVED` error's backend and epoch).
pub fn moved_to(err: &sea_orm::sqlx::Error) -> Option<(uuid::Uuid, i64)> {
    let sea_orm::sqlx::Error::Database(db) = err else { return None };
    if db.code().as_deref() != Some(MOVED) {
        return None;
    }
    let pg = db.try_downcast_ref::<sea_orm::sqlx::postgres::PgDatabaseError>()?;
    let (backend, epoch) = pg.detail()?.split_once(':')?;
    Some((backend.parse().ok()?, epoch.parse().ok()?))
}

/// [`moved_to`] for a sea-orm error.
pub fn moved_to_db(err: &sea_orm::DbErr) -> Option<(uuid::Uuid, i64)> {
    use sea_orm::{DbErr, RuntimeErr};
    match err {
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => moved_to(e),
        _ => None,
    }
}

/// query_canceled (a statement timeout fired)
pub const QUERY_CANCELED: &str = "57014";
/// unique_violation
pub const UNIQUE_VIOLATION: &str = "23505";
/// foreign_key_violation
pub const FOREIGN_KEY_VIOLATION: &str = "23503";
