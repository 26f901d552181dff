//! Logical databases on a PostgreSQL cluster Tenantry manages: the engine
//! behind shared pools and logical dedicated backends.

use sea_orm::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, SqlxPostgresConnector, Statement};
use secrecy::{ExposeSecret, SecretString};

use crate::scram::scram_secret;
use crate::{Error, quote_ident, quote_literal};

/// Where a database lives. Credentials are not part of an address.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DatabaseAddress {
    pub host: String,
    pub port: u16,
    pub database: String,
}

/// A login role, its password, and the SCRAM iteration count its stored
/// secret is derived with (`crate::scram`: each client pays it per login).
#[derive(Clone)]
pub struct RoleCredentials {
    pub name: String,
    pub password: SecretString,
    pub scram_iterations: u32,
}

impl RoleCredentials {
    /// A role whose secret keeps PostgreSQL's 4,096 iterations.
    pub fn new(name: impl Into<String>, password: SecretString) -> Self {
        Self { name: name.into(), password, scram_iterations: crate::scram::DEFAULT_ITERATIONS }
    }

    pub fn with_scram_iterations(self, scram_iterations: u32) -> Self {
        Self { scram_iterations, ..self }
    }
}

/// Creates and drops databases and roles through a cluster administrator
/// connection (a superuser, or a role with CREATEDB and CREATEROLE).
#[derive(Clone)]
pub struct LogicalProvisioner {
    admin: DatabaseConnection,
    host: String,
    port: u16,
}

impl LogicalProvisioner {
    /// Connects to the cluster's maintenance database (`postgres`) as `user`;
    /// `tls` sets how the server is verified (the caller's configuration).
    pub async fn connect(
        host: &str,
        port: u16,
        user: &str,
        password: &SecretString,
        tls: impl FnOnce(PgConnectOptions) -> PgConnectOptions,
    ) -> Result<Self, Error> {
        let opts = PgConnectOptions::new()
            .host(host)
            .port(port)
            .database("postgres")
            .username(user)
            .password(password.expose_secret())
            .application_name("tenantry-provisioner");
        let opts = tls(opts);
        let pool = PgPoolOptions::new().max_connections(2).min_connections(0).connect_lazy_with(opts);
        let admin = SqlxPostgresConnector::from_sqlx_postgres_pool(pool);
        Ok(Self { admin, host: host.to_string(), port })
    }

    fn valid_name(name: &str) -> Result<(), Error> {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if ok { Ok(()) } else { Err(Error::InvalidName(name.to_string())) }
    }

    /// Creates (or updates the password of) the migration owner role and the
    /// application role. The app role can bypass nothing: not superuser, not
    /// BYPASSRLS, owns no table. Each password is sent as its SCRAM secret,
    /// never in clear.
    pub async fn ensure_roles(&self, owner: &RoleCredentials, app: &RoleCredentials) -> Result<(), Error> {
        for (role, attrs) in [
            (owner, "LOGIN NOSUPERUSER NOBYPASSRLS CREATEDB NOCREATEROLE"),
            (app, "LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT"),
        ] {
            Self::valid_name(&role.name)?;
            let exists = self
                .admin
                .query_one_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT 1 AS one FROM pg_roles WHERE rolname = $1",
                    [role.name.clone().into()],
                ))
                .await?
                .is_some();
            let verb = if exists { "ALTER" } else { "CREATE" };
            let sql = format!(
                "{verb} ROLE {} {attrs} PASSWORD {}",
                quote_ident(&role.name),
                quote_literal(&scram_secret(role.password.expose_secret(), role.scram_iterations))
            );
            self.admin.execute_unprepared(&sql).await?;
        }
        Ok(())
    }

    /// Creates `name` owned by `owner` unless it exists, as a copy of
    /// `template` when given (no session may be connected to the template);
    /// safe to repeat.
    pub async fn create_database(
        &self,
        name: &str,
        owner: &str,
        template: Option<&str>,
    ) -> Result<DatabaseAddress, Error> {
        Self::valid_name(name)?;
        if let Some(t) = template {
            Self::valid_name(t)?;
        }
        let exists = self
            .admin
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT 1 AS one FROM pg_database WHERE datname = $1",
                [name.into()],
            ))
            .await?
            .is_some();
        if !exists {
            let mut sql = format!("CREATE DATABASE {} OWNER {}", quote_ident(name), quote_ident(owner));
            if let Some(t) = template {
                sql.push_str(&format!(" TEMPLATE {}", quote_ident(t)));
            }
            match self.admin.execute_unprepared(&sql).await {
                Ok(_) => {}
                // A concurrent creator won the race: the database is there.
                Err(e) if e.to_string().contains("already exists") => {}
                Err(e) => return Err(e.into()),
            }
            // Nobody but the owner and the roles it grants may connect.
            let sql = format!("REVOKE ALL ON DATABASE {} FROM PUBLIC", quote_ident(name));
            self.admin.execute_unprepared(&sql).await?;
        }
        Ok(self.address(name))
    }

    /// Lets `role` connect to database `name`.
    pub async fn grant_connect(&self, name: &str, role: &str) -> Result<(), Error> {
        Self::valid_name(name)?;
        let sql = format!("GRANT CONNECT ON DATABASE {} TO {}", quote_ident(name), quote_ident(role));
        self.admin.execute_unprepared(&sql).await?;
        Ok(())
    }

    /// Drops `name`, disconnecting its sessions; safe to repeat.
    pub async fn drop_database(&self, name: &str) -> Result<(), Error> {
        Self::valid_name(name)?;
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name));
        self.admin.execute_unprepared(&sql).await?;
        Ok(())
    }

    fn address(&self, name: &str) -> DatabaseAddress {
        DatabaseAddress { host: self.host.clone(), port: self.port, database: name.to_string() }
    }
}
