//! The registry's read model: what the request path needs to turn an API key
//! into a tenant and a tenant into a backend. Read-only by construction; the
//! control plane owns every write.

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, FromQueryResult, Statement};
use uuid::Uuid;

use crate::{BackendKind, Placement, TenantStatus, Tier};

/// The tenant an API key belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyOwner {
    pub tenant_id: Uuid,
    pub slug: String,
    pub tier: Tier,
    pub status: TenantStatus,
    /// Limits in effect (tier defaults overridden by the tenant's own).
    pub limits: crate::settings::Limits,
    /// Effective settings, flags included.
    pub settings: serde_json::Value,
    /// The API key's role (`admin` for a tenant read without a key).
    pub key_role: crate::identity::Role,
}

/// A tenant's placement together with its backend's address.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub placement: Placement,
    pub backend: BackendAddress,
    /// The backend's tenant-schema version.
    pub schema_version: i32,
    /// The tenant's status when the route was read: a fresh read after the
    /// backend refused the tenant tells an erasure (404) from a move (wait).
    pub tenant_status: TenantStatus,
}

/// How to reach a backend (credentials come from configuration).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendAddress {
    pub id: Uuid,
    pub kind: BackendKind,
    pub host: String,
    pub port: u16,
    pub database: String,
    /// A connection pooler (PgBouncer, transaction mode) the app goes through
    /// instead: host and port.
    pub pooler: Option<(String, u16)>,
}

#[derive(FromQueryResult)]
struct KeyOwnerRow {
    key_role: String,
    tenant_id: Uuid,
    slug: String,
    tier: String,
    status: String,
    settings: serde_json::Value,
    tier_settings: serde_json::Value,
}

/// A tenant's identity provider, as the request path reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantProvider {
    pub tenant_id: Uuid,
    pub slug: String,
    pub name: String,
    pub config: crate::identity::ProviderConfig,
}

/// An identity provider's configuration columns, as the registry holds them
/// (both sides read them: nest it in a row).
#[derive(FromQueryResult)]
pub struct ProviderColumns {
    issuer: String,
    audience: String,
    jwks_uri: Option<String>,
    org_claim: Option<String>,
    org_value: Option<String>,
    tenants_claim: Option<String>,
    role_claim: Option<String>,
    role_map: serde_json::Value,
    email_domains: Vec<String>,
}

/// The columns [`ProviderColumns`] reads, for a select list.
pub const PROVIDER_COLUMNS: &str =
    "issuer, audience, jwks_uri, org_claim, org_value, tenants_claim, role_claim, role_map, email_domains";

impl ProviderColumns {
    pub fn config(self) -> Result<crate::identity::ProviderConfig, DbErr> {
        Ok(crate::identity::ProviderConfig {
            issuer: self.issuer,
            audience: self.audience,
            jwks_uri: self.jwks_uri,
            org_claim: self.org_claim,
            org_value: self.org_value,
            tenants_claim: self.tenants_claim,
            role_claim: self.role_claim,
            role_map: serde_json::from_value(self.role_map).map_err(corrupt)?,
            email_domains: self.email_domains,
        })
    }
}

#[derive(FromQueryResult)]
struct ProviderRow {
    tenant_id: Uuid,
    slug: String,
    name: String,
    #[sea_orm(nested)]
    columns: ProviderColumns,
}

#[derive(FromQueryResult)]
struct RouteRow {
    backend_id: Uuid,
    epoch: i64,
    kind: String,
    host: String,
    port: i32,
    database: String,
    schema_version: i32,
    status: String,
    pooler_host: Option<String>,
    pooler_port: Option<i32>,
}

/// Without a key the role is `admin`; `key_owner` reads the key's.
const OWNER_SELECT: &str = "SELECT 'admin'::text AS key_role, t.id AS tenant_id, t.slug, t.tier, t.status, t.settings, \
    coalesce(ts.settings, '{}'::jsonb) AS tier_settings";

impl TryFrom<KeyOwnerRow> for KeyOwner {
    type Error = DbErr;

    fn try_from(r: KeyOwnerRow) -> Result<Self, DbErr> {
        let settings = crate::settings::effective(&r.tier_settings, &r.settings);
        Ok(KeyOwner {
            tenant_id: r.tenant_id,
            slug: r.slug,
            tier: r.tier.parse().map_err(corrupt)?,
            status: r.status.parse().map_err(corrupt)?,
            limits: crate::settings::limits_of(&settings),
            settings,
            key_role: crate::identity::Role::parse(&r.key_role).ok_or_else(|| corrupt(&r.key_role))?,
        })
    }
}

fn corrupt(what: impl std::fmt::Display) -> DbErr {
    DbErr::Custom(format!("registry holds an invalid value: {what}"))
}

/// A person who signed in to a tenant (`GET /v1/users`), as the control plane
/// folded their sign-ins.
#[derive(Debug, Clone, PartialEq, FromQueryResult, serde::Serialize, utoipa::ToSchema)]
pub struct TenantUser {
    /// Tenantry's id of the person in this tenant (what erasing them names).
    pub id: Uuid,
    pub issuer: String,
    /// The provider's `sub`.
    pub subject: String,
    pub email: Option<String>,
    pub name: Option<String>,
    /// The role their last sign-in held.
    pub role: String,
    pub first_seen: chrono::DateTime<chrono::Utc>,
    pub last_seen: chrono::DateTime<chrono::Utc>,
}

/// Most users one page lists.
pub const USERS_PAGE_MAX: u64 = 1000;

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct UserList {
    pub users: Vec<TenantUser>,
    /// Pass as `after` for the next page; absent on the last.
    pub next: Option<Uuid>,
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UserPage {
    /// The last id of the previous page.
    pub after: Option<Uuid>,
    /// At most this many (1 to 1000; default 100).
    pub limit: Option<u64>,
}

impl UserPage {
    /// The page size asked for, within bounds.
    pub fn limit(&self) -> u64 {
        self.limit.unwrap_or(100).clamp(1, USERS_PAGE_MAX)
    }
}

impl UserList {
    /// One page of `limit`: `next` set when it is full.
    pub fn page(users: Vec<TenantUser>, limit: u64) -> Self {
        let next = (users.len() as u64 == limit).then(|| users.last().map(|u| u.id)).flatten();
        UserList { users, next }
    }
}

/// Reads the registry over one connection pool.
#[derive(Clone)]
pub struct RegistryReader {
    db: DatabaseConnection,
}

impl RegistryReader {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// The tenant owning an unrevoked key with this hash.
    pub async fn key_owner(&self, key_hash: &[u8]) -> Result<Option<KeyOwner>, DbErr> {
        let sql = format!(
            "{} FROM api_keys k JOIN tenants t ON t.id = k.tenant_id \
             LEFT JOIN tier_settings ts ON ts.tier = t.tier \
             WHERE k.key_hash = $1 AND (k.revoked_at IS NULL OR t.status IN ('erasing', 'erased'))",
            OWNER_SELECT.replace("'admin'::text AS key_role", "k.role AS key_role")
        );
        let row = KeyOwnerRow::find_by_statement(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            [key_hash.to_vec().into()],
        ))
        .one(&self.db)
        .await?;
        row.map(KeyOwner::try_from).transpose()
    }

    /// The tenant `id` with its effective settings (whatever its status).
    pub async fn tenant_owner(&self, id: Uuid) -> Result<Option<KeyOwner>, DbErr> {
        let sql =
            format!("{OWNER_SELECT} FROM tenants t LEFT JOIN tier_settings ts ON ts.tier = t.tier WHERE t.id = $1");
        let row = KeyOwnerRow::find_by_statement(Statement::from_sql_and_values(DbBackend::Postgres, sql, [id.into()]))
            .one(&self.db)
            .await?;
        row.map(KeyOwner::try_from).transpose()
    }

    /// Every tenant's identity provider for tokens of `issuer`.
    pub async fn providers_for_issuer(&self, issuer: &str) -> Result<Vec<TenantProvider>, DbErr> {
        let sql = format!(
            "SELECT p.tenant_id, t.slug, p.name, {PROVIDER_COLUMNS} \
             FROM identity_providers p JOIN tenants t ON t.id = p.tenant_id WHERE p.issuer = $1 ORDER BY t.slug"
        );
        let rows =
            ProviderRow::find_by_statement(Statement::from_sql_and_values(DbBackend::Postgres, sql, [issuer.into()]))
                .all(&self.db)
                .await?;
        rows.into_iter()
            .map(|r| {
                Ok(TenantProvider { tenant_id: r.tenant_id, slug: r.slug, name: r.name, config: r.columns.config()? })
            })
            .collect()
    }

    /// `tenant`'s users in id order after `after`, at most `limit` (capped at
    /// [`USERS_PAGE_MAX`]).
    pub async fn tenant_users(&self, tenant: Uuid, after: Option<Uuid>, limit: u64) -> Result<Vec<TenantUser>, DbErr> {
        let sql = "SELECT id, issuer, subject, email, name, role, first_seen, last_seen FROM tenant_users \
                   WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3";
        TenantUser::find_by_statement(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            [tenant.into(), after.unwrap_or(Uuid::nil()).into(), (limit.clamp(1, USERS_PAGE_MAX) as i64).into()],
        ))
        .all(&self.db)
        .await
    }

    /// Active tenants with their effective settings, in id order after `after`
    /// (for jobs that visit every tenant), at most `limit`.
    pub async fn active_tenants(&self, after: Option<Uuid>, limit: u64) -> Result<Vec<KeyOwner>, DbErr> {
        let sql = format!(
            "{OWNER_SELECT} FROM tenants t LEFT JOIN tier_settings ts ON ts.tier = t.tier \
             WHERE t.status = 'active' AND t.id > $1 ORDER BY t.id LIMIT $2"
        );
        let rows = KeyOwnerRow::find_by_statement(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            [after.unwrap_or(Uuid::nil()).into(), (limit as i64).into()],
        ))
        .all(&self.db)
        .await?;
        rows.into_iter().map(KeyOwner::try_from).collect()
    }

    /// Where the tenant is writable now.
    /// Whether the tenant is being or has been erased (its placement may
    /// already be gone).
    pub async fn erased(&self, tenant_id: Uuid) -> Result<bool, DbErr> {
        let row = self
            .db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT status IN ('erasing', 'erased') AS gone FROM tenants WHERE id = $1",
                [tenant_id.into()],
            ))
            .await?;
        Ok(row.map(|r| r.try_get::<bool>("", "gone")).transpose()?.unwrap_or(true))
    }

    /// `SELECT 1` within 2 s; why not otherwise.
    pub async fn ping(&self) -> Result<(), String> {
        use sea_orm::ConnectionTrait;
        match tokio::time::timeout(std::time::Duration::from_secs(2), self.db.execute_unprepared("SELECT 1")).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("the registry does not answer: {e}")),
            Err(_) => Err("the registry did not answer within 2 s".into()),
        }
    }

    pub async fn route(&self, tenant_id: Uuid) -> Result<Option<Route>, DbErr> {
        self.route_by(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT p.backend_id, p.epoch, b.kind, b.host, b.port, b.database, b.schema_version, t.status, b.pooler_host, b.pooler_port \
             FROM placements p JOIN backends b ON b.id = p.backend_id JOIN tenants t ON t.id = p.tenant_id \
             WHERE p.tenant_id = $1",
            [tenant_id.into()],
        ))
        .await
    }

    /// The route a sealed source names (a move's new home, `backend` at
    /// `epoch`), before the registry's placement may say so.
    pub async fn route_to(&self, tenant_id: Uuid, backend: Uuid, epoch: i64) -> Result<Option<Route>, DbErr> {
        self.route_by(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT b.id AS backend_id, $3::bigint AS epoch, b.kind, b.host, b.port, b.database, b.schema_version, t.status, b.pooler_host, b.pooler_port \
             FROM backends b JOIN tenants t ON t.id = $1 WHERE b.id = $2",
            [tenant_id.into(), backend.into(), epoch.into()],
        ))
        .await
    }

    async fn route_by(&self, statement: Statement) -> Result<Option<Route>, DbErr> {
        let row = RouteRow::find_by_statement(statement).one(&self.db).await?;
        row.map(|r| {
            Ok(Route {
                placement: Placement { backend_id: r.backend_id, epoch: r.epoch },
                backend: BackendAddress {
                    id: r.backend_id,
                    kind: r.kind.parse().map_err(corrupt)?,
                    host: r.host,
                    port: u16::try_from(r.port).map_err(corrupt)?,
                    database: r.database,
                    pooler: match (r.pooler_host, r.pooler_port) {
                        (Some(host), Some(port)) => Some((host, u16::try_from(port).map_err(corrupt)?)),
                        _ => None,
                    },
                },
                schema_version: r.schema_version,
                tenant_status: r.status.parse().map_err(corrupt)?,
            })
        })
        .transpose()
    }
}
