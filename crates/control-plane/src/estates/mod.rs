//! Legacy estates: a schema-per-tenant or database-per-tenant PostgreSQL that
//! Tenantry did not build and adopts tenants from. This module registers an
//! estate (checking at once that the connection works and that the estate
//! grants what adoption needs), keeps its password encrypted, and connects to
//! it; `sources.rs` finds the tenants in it, maps their tables and dry-runs an
//! adoption.

pub mod adopt;
pub mod apply;
pub mod fence;
pub mod keys;
pub mod legacy;
pub mod mapping;
pub mod pgoutput;
pub mod request;
pub mod revert;
pub mod rows;
pub mod sources;
pub mod stream;
pub mod verify;

use chrono::{DateTime, Utc};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use sea_orm::sqlx::postgres::{PgConnectOptions, PgConnection};
use sea_orm::sqlx::{self, ConnectOptions};
use sea_orm::{ConnectionTrait, FromQueryResult, TransactionTrait};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use tenantry_core::new_id;

use crate::error::Error;
use crate::plane::ControlPlane;
use crate::registry::{audit, stmt};

/// How a legacy estate keeps its tenants apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// One schema per tenant in one database (`tenant_acme.assets`).
    SchemaPerTenant,
    /// One database per tenant on one server (`tenant_acme`, table `public.assets`).
    DatabasePerTenant,
}

impl Layout {
    fn as_str(self) -> &'static str {
        match self {
            Layout::SchemaPerTenant => "schema_per_tenant",
            Layout::DatabasePerTenant => "database_per_tenant",
        }
    }
}

/// `POST /v1/estates`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEstate {
    pub name: String,
    pub host: String,
    #[schema(minimum = 1, maximum = 65535)]
    pub port: u16,
    /// The database to connect to (for `database_per_tenant`, any database of
    /// the server, e.g. `postgres`; the tenants' databases are found by `pattern`).
    pub database: String,
    pub user: String,
    /// Kept encrypted; never returned, never logged.
    #[schema(value_type = String, format = Password)]
    pub password: SecretString,
    pub layout: Layout,
    /// Schemas (or databases) holding tenants, in SQL `LIKE` syntax: `tenant\_%`.
    pub pattern: String,
    /// Table and column renames, values for target columns the legacy source
    /// lacks, tables to ignore (see `mapping::Mapping`).
    #[serde(default)]
    pub mapping: Option<mapping::Mapping>,
}

/// An estate as the API shows it (never its password).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EstateView {
    pub id: Uuid,
    pub name: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub layout: Layout,
    pub pattern: String,
    pub mapping: mapping::Mapping,
    pub created_at: DateTime<Utc>,
}

#[derive(FromQueryResult)]
struct EstateRow {
    id: Uuid,
    name: String,
    host: String,
    port: i32,
    database: String,
    username: String,
    password_enc: Vec<u8>,
    layout: String,
    pattern: String,
    mapping: serde_json::Value,
    created_at: DateTime<Utc>,
}

/// An estate with what it takes to connect to it.
pub(crate) struct Estate {
    pub(crate) view: EstateView,
    password: SecretString,
    /// How its server is verified (`control_plane.estate_tls`).
    tls: tenantry_core::db::Tls,
}

impl Estate {
    /// A connection to `database` of the estate (its own database by default).
    pub(crate) async fn connect(&self, database: Option<&str>) -> Result<PgConnection, Error> {
        connect(
            &self.view.host,
            self.view.port,
            database.unwrap_or(&self.view.database),
            &self.view.user,
            &self.password,
            &self.tls,
        )
        .await
    }
}

async fn connect(
    host: &str,
    port: u16,
    database: &str,
    user: &str,
    password: &SecretString,
    tls: &tenantry_core::db::Tls,
) -> Result<PgConnection, Error> {
    let opts = tls
        .apply(PgConnectOptions::new())
        .host(host)
        .port(port)
        .database(database)
        .username(user)
        .password(password.expose_secret())
        .application_name("tenantry-adoption");
    match tokio::time::timeout(std::time::Duration::from_secs(5), opts.connect()).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(Error::invalid(
            "estate_unreachable",
            format!("cannot connect to {host}:{port}/{database} as {user}: {}", connection_problem(&e)),
        )),
        Err(_) => Err(Error::invalid("estate_unreachable", format!("{host}:{port} did not answer within 5 s"))),
    }
}

/// A connection failure in words, without echoing anything secret.
fn connection_problem(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("28P01") => "password authentication failed".into(),
        sqlx::Error::Database(db) if db.code().as_deref() == Some("3D000") => "the database does not exist".into(),
        sqlx::Error::Database(db) => db.message().to_string(),
        sqlx::Error::Io(io) => format!("network: {io}"),
        other => other.to_string(),
    }
}

/// What adoption needs from the estate, checked on the connection: every
/// problem, in words (empty: all there).
pub(crate) async fn requirements(conn: &mut PgConnection) -> Result<Vec<String>, Error> {
    let (version, wal_level, replicate, create, slots_free): (i32, String, bool, bool, i64) = sqlx::query_as(
        "SELECT current_setting('server_version_num')::int, current_setting('wal_level'), \
                (SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user) \
                  OR CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_replication') \
                          THEN pg_has_role(current_user, 'rds_replication', 'MEMBER') ELSE false END, \
                has_database_privilege(current_database(), 'CREATE'), \
                current_setting('max_replication_slots')::bigint - (SELECT count(*) FROM pg_replication_slots)",
    )
    .fetch_one(&mut *conn)
    .await?;
    let mut missing = Vec::new();
    if version < 150000 {
        missing.push(format!("PostgreSQL 15 or later is needed (server_version_num {version})"));
    }
    if wal_level != "logical" {
        missing.push(format!(
            "wal_level is `{wal_level}`, adoption needs `logical` (on RDS: rds.logical_replication = 1)"
        ));
    }
    if !replicate {
        missing.push("the user may not replicate: it needs REPLICATION (on RDS: membership of rds_replication)".into());
    }
    if !create {
        missing.push(
            "the user may not create a publication: it needs CREATE on the database (its owner or the RDS master user)"
                .into(),
        );
    }
    if slots_free < 1 {
        missing.push("no free replication slot (max_replication_slots is used up)".into());
    }
    Ok(missing)
}

/// AES-256-GCM under SHA-256(`control_plane.secrets_key`), bound to the
/// estate's id; stored as nonce || ciphertext || tag.
fn sealing_key(cp: &ControlPlane) -> Result<LessSafeKey, Error> {
    let Some(secret) = &cp.config().secrets_key else {
        return Err(Error::invalid(
            "secrets_key_missing",
            "control_plane.secrets_key is not configured: the control plane cannot keep an estate's password",
        ));
    };
    let digest = Sha256::digest(secret.expose_secret().as_bytes());
    let key = UnboundKey::new(&AES_256_GCM, &digest).map_err(|_| Error::invalid("secrets_key", "unusable key"))?;
    Ok(LessSafeKey::new(key))
}

fn seal(cp: &ControlPlane, id: Uuid, password: &SecretString) -> Result<Vec<u8>, Error> {
    let key = sealing_key(cp)?;
    let nonce_bytes: [u8; 12] = rand::random();
    let mut data = password.expose_secret().as_bytes().to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce_bytes), Aad::from(id.as_bytes()), &mut data)
        .map_err(|_| Error::invalid("secrets_key", "could not encrypt"))?;
    Ok([nonce_bytes.as_slice(), &data].concat())
}

fn open(cp: &ControlPlane, id: Uuid, sealed: &[u8]) -> Result<SecretString, Error> {
    let key = sealing_key(cp)?;
    let unreadable =
        || Error::invalid("estate_secret", "the estate's password cannot be decrypted with this secrets_key");
    if sealed.len() < 12 + 16 {
        return Err(unreadable());
    }
    let (nonce, rest) = sealed.split_at(12);
    let mut data = rest.to_vec();
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| unreadable())?;
    let plain = key.open_in_place(nonce, Aad::from(id.as_bytes()), &mut data).map_err(|_| unreadable())?;
    Ok(String::from_utf8(plain.to_vec()).map_err(|_| unreadable())?.into())
}

fn named(field: &str, value: &str, max: usize) -> Result<(), Error> {
    if value.trim().is_empty() || value.len() > max {
        return Err(Error::invalid("invalid_estate", format!("`{field}` must be 1-{max} characters")));
    }
    Ok(())
}

const ESTATE_SELECT: &str = "SELECT id, name, host, port, database, username, password_enc, layout, pattern, mapping, \
    created_at FROM estates";

impl ControlPlane {
    /// Registers an estate once its connection works and it grants what
    /// adoption needs (422 naming each thing missing). Audited.
    pub async fn add_estate(&self, actor: &str, new: NewEstate) -> Result<EstateView, Error> {
        named("name", &new.name, 100)?;
        named("host", &new.host, 253)?;
        named("database", &new.database, 63)?;
        named("user", &new.user, 63)?;
        named("pattern", &new.pattern, 200)?;
        if new.port == 0 {
            return Err(Error::invalid("invalid_estate", "`port` must be 1-65535"));
        }
        let mapping = new.mapping.unwrap_or_default();
        mapping.validate()?;
        let mut conn =
            connect(&new.host, new.port, &new.database, &new.user, &new.password, &self.config().estate_tls).await?;
        let missing = requirements(&mut conn).await?;
        let _ = sqlx::Connection::close(conn).await;
        if !missing.is_empty() {
            return Err(Error::invalid("estate_not_ready", format!("the estate lacks: {}", missing.join("; "))));
        }
        let id = new_id();
        let sealed = seal(self, id, &new.password)?;
        let txn = self.registry().begin().await?;
        let inserted = txn
            .execute_raw(stmt(
                "INSERT INTO estates (id, name, host, port, database, username, password_enc, layout, pattern, mapping) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (name) DO NOTHING",
                vec![
                    id.into(),
                    new.name.clone().into(),
                    new.host.clone().into(),
                    i32::from(new.port).into(),
                    new.database.clone().into(),
                    new.user.clone().into(),
                    sealed.into(),
                    new.layout.as_str().into(),
                    new.pattern.clone().into(),
                    serde_json::to_value(&mapping).unwrap_or_default().into(),
                ],
            ))
            .await?
            .rows_affected();
        if inserted == 0 {
            return Err(Error::Conflict {
                code: "estate_exists",
                message: format!("an estate named `{}` exists", new.name),
            });
        }
        audit(&txn, actor, "estate.add", None, json!({"estate_id": id, "name": new.name, "host": new.host})).await?;
        txn.commit().await?;
        Ok(self.estate(id).await?.view)
    }

    pub async fn estates(&self) -> Result<Vec<EstateView>, Error> {
        let rows = EstateRow::find_by_statement(stmt(&format!("{ESTATE_SELECT} ORDER BY created_at"), vec![]))
            .all(self.registry())
            .await?;
        rows.into_iter().map(|r| Ok(view(r)?.0)).collect()
    }

    pub(crate) async fn estate(&self, id: Uuid) -> Result<Estate, Error> {
        let row = EstateRow::find_by_statement(stmt(&format!("{ESTATE_SELECT} WHERE id = $1"), vec![id.into()]))
            .one(self.registry())
            .await?
            .ok_or(Error::NotFound("estate"))?;
        let (view, sealed) = view(row)?;
        let password = open(self, view.id, &sealed)?;
        Ok(Estate { view, password, tls: self.config().estate_tls.clone() })
    }

    /// Forgets an estate; refused while an adoption of it is in flight. Audited.
    pub async fn remove_estate(&self, actor: &str, id: Uuid) -> Result<(), Error> {
        let txn = self.registry().begin().await?;
        let busy = txn
            .query_one_raw(stmt(
                "SELECT count(*) AS n FROM estate_sources WHERE estate_id = $1 AND state = 'adopting'",
                vec![id.into()],
            ))
            .await?
            .map(|r| r.try_get::<i64>("", "n"))
            .transpose()?
            .unwrap_or(0);
        if busy > 0 {
            return Err(Error::Conflict {
                code: "adoption_in_flight",
                message: format!("{busy} adoption(s) of this estate are in flight; finish or cancel them first"),
            });
        }
        let gone = txn.execute_raw(stmt("DELETE FROM estates WHERE id = $1", vec![id.into()])).await?.rows_affected();
        if gone == 0 {
            return Err(Error::NotFound("estate"));
        }
        audit(&txn, actor, "estate.remove", None, json!({"estate_id": id})).await?;
        txn.commit().await?;
        Ok(())
    }
}

fn view(r: EstateRow) -> Result<(EstateView, Vec<u8>), Error> {
    let corrupt = |what: &str| Error::Db(sea_orm::DbErr::Custom(format!("estate {}: bad {what}", r.id)));
    let layout = match r.layout.as_str() {
        "schema_per_tenant" => Layout::SchemaPerTenant,
        "database_per_tenant" => Layout::DatabasePerTenant,
        _ => return Err(corrupt("layout")),
    };
    let mapping = serde_json::from_value(r.mapping.clone()).map_err(|_| corrupt("mapping"))?;
    let port = u16::try_from(r.port).map_err(|_| corrupt("port"))?;
    Ok((
        EstateView {
            id: r.id,
            name: r.name,
            host: r.host,
            port,
            database: r.database,
            user: r.username,
            layout,
            pattern: r.pattern,
            mapping,
            created_at: r.created_at,
        },
        r.password_enc,
    ))
}
