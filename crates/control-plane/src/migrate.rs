//! Ordered SQL migrations. Two sets: the registry (control-plane database) and
//! the tenant-data schema (every backend). A database records its own version
//! in `tenantry_schema_migrations`, in the same transaction as the DDL, so a
//! run interrupted anywhere resumes where it stopped.

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, TransactionTrait};

use tenantry_provisioner::quote_ident;

/// One migration: its version (1, 2, ...), name and SQL. `{app_role}` in the
/// SQL is replaced by the quoted application role.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// The registry's migrations, in order.
pub const REGISTRY: &[Migration] = &[
    Migration { version: 1, name: "registry", sql: include_str!("../../../migrations/registry/0001_registry.sql") },
    Migration {
        version: 2,
        name: "fleet_migrations",
        sql: include_str!("../../../migrations/registry/0002_fleet_migrations.sql"),
    },
    Migration {
        version: 3,
        name: "tier_settings",
        sql: include_str!("../../../migrations/registry/0003_tier_settings.sql"),
    },
    Migration { version: 4, name: "usage", sql: include_str!("../../../migrations/registry/0004_usage.sql") },
    Migration {
        version: 5,
        name: "console_sessions",
        sql: include_str!("../../../migrations/registry/0005_console_sessions.sql"),
    },
    Migration {
        version: 6,
        name: "backend_pooler",
        sql: include_str!("../../../migrations/registry/0006_backend_pooler.sql"),
    },
    Migration { version: 7, name: "estates", sql: include_str!("../../../migrations/registry/0007_estates.sql") },
    Migration { version: 8, name: "adoption", sql: include_str!("../../../migrations/registry/0008_adoption.sql") },
    Migration {
        version: 9,
        name: "tenant_search",
        sql: include_str!("../../../migrations/registry/0009_tenant_search.sql"),
    },
    Migration {
        version: 10,
        name: "usage_window",
        sql: include_str!("../../../migrations/registry/0010_usage_window.sql"),
    },
    Migration {
        version: 11,
        name: "usage_fold_fillfactor",
        sql: include_str!("../../../migrations/registry/0011_usage_fold_fillfactor.sql"),
    },
    Migration {
        version: 12,
        name: "console_session_bounds",
        sql: include_str!("../../../migrations/registry/0012_console_session_bounds.sql"),
    },
    Migration {
        version: 13,
        name: "identity_providers",
        sql: include_str!("../../../migrations/registry/0013_identity_providers.sql"),
    },
    Migration {
        version: 14,
        name: "api_key_roles",
        sql: include_str!("../../../migrations/registry/0014_api_key_roles.sql"),
    },
    Migration {
        version: 15,
        name: "tenant_users",
        sql: include_str!("../../../migrations/registry/0015_tenant_users.sql"),
    },
    Migration {
        version: 16,
        name: "console_staff_sign_in",
        sql: include_str!("../../../migrations/registry/0016_console_staff_sign_in.sql"),
    },
];

/// The tenant-data schema's migrations, in order.
pub const TENANT: &[Migration] = &[
    Migration { version: 1, name: "assets", sql: include_str!("../../../migrations/tenant/0001_assets.sql") },
    Migration {
        version: 2,
        name: "move_sentinels",
        sql: include_str!("../../../migrations/tenant/0002_move_sentinels.sql"),
    },
    Migration {
        version: 3,
        name: "maintenance_overdue",
        sql: include_str!("../../../migrations/tenant/0003_maintenance_overdue.sql"),
    },
    Migration {
        version: 4,
        name: "crash_safe_fence",
        sql: include_str!("../../../migrations/tenant/0004_crash_safe_fence.sql"),
    },
    Migration { version: 5, name: "read_gate", sql: include_str!("../../../migrations/tenant/0005_read_gate.sql") },
    Migration {
        version: 6,
        name: "vouched_context",
        sql: include_str!("../../../migrations/tenant/0006_vouched_context.sql"),
    },
];

/// Whether `set` is the tenant-data schema's (some tests migrate a prefix of it).
pub fn is_tenant(set: &[Migration]) -> bool {
    set.first().map(|m| m.name) == TENANT.first().map(|m| m.name)
}

/// The version a fully migrated database of this set reports.
pub fn latest(set: &[Migration]) -> i32 {
    set.last().map_or(0, |m| m.version)
}

/// Serialises concurrent migrators of one database (any value; fixed so all agree).
const MIGRATION_LOCK: i64 = 0x7465_6e61_6e74; // "tenant"

/// Applies every pending migration of `set`; returns the version reached.
/// Each migration commits with its version row; a concurrent run waits on the
/// lock and then finds nothing left to do.
pub async fn apply(db: &DatabaseConnection, set: &[Migration], app_role: &str) -> Result<i32, DbErr> {
    db.execute_unprepared(
        "CREATE TABLE IF NOT EXISTS tenantry_schema_migrations (
            version    integer PRIMARY KEY,
            name       text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let start = current_version(db).await?;
    let mut version = start;
    for m in set.iter().filter(|m| m.version > start) {
        let txn = db.begin().await?;
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1)",
            [MIGRATION_LOCK.into()],
        ))
        .await?;
        if current_version(&txn).await? >= m.version {
            txn.rollback().await?;
            continue;
        }
        let sql = m.sql.replace("{app_role}", &quote_ident(app_role));
        txn.execute_unprepared(&sql).await.map_err(|e| DbErr::Migration(format!("{} {}: {e}", m.version, m.name)))?;
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO tenantry_schema_migrations (version, name) VALUES ($1, $2)",
            [m.version.into(), m.name.into()],
        ))
        .await?;
        txn.commit().await?;
        version = m.version;
    }
    current_version(db).await.map(|v| v.max(version))
}

/// The highest applied version (0 for a new database).
pub async fn current_version(db: &impl ConnectionTrait) -> Result<i32, DbErr> {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT coalesce(max(version), 0) AS v FROM tenantry_schema_migrations",
        ))
        .await?;
    row.map_or(Ok(0), |r| r.try_get::<i32>("", "v"))
}

/// Makes a backend's gate keys exactly `keys` (their HMAC pads; the app role
/// cannot read them), in one transaction.
pub async fn install_gate_keys(db: &DatabaseConnection, keys: &tenantry_core::gate::GateKeys) -> Result<(), DbErr> {
    let installed = keys.installed();
    let txn = db.begin().await?;
    let kids: Vec<i32> = installed.iter().map(|k| k.kid()).collect();
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "DELETE FROM tenantry_gate_keys WHERE kid <> ALL($1)",
        [kids.into()],
    ))
    .await?;
    for key in &installed {
        let (ipad, opad) = key.pads();
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO tenantry_gate_keys (kid, ipad, opad) VALUES ($1, $2, $3) \
             ON CONFLICT (kid) DO UPDATE SET ipad = EXCLUDED.ipad, opad = EXCLUDED.opad \
             WHERE (tenantry_gate_keys.ipad, tenantry_gate_keys.opad) IS DISTINCT FROM (EXCLUDED.ipad, EXCLUDED.opad)",
            [key.kid().into(), ipad.into(), opad.into()],
        ))
        .await?;
    }
    txn.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_sets_are_ordered_and_the_shared_crate_knows_the_latest() {
        for set in [REGISTRY, TENANT] {
            for (i, m) in set.iter().enumerate() {
                assert_eq!(m.version, i as i32 + 1, "{} is out of order", m.name);
            }
        }
        assert_eq!(latest(TENANT), tenantry_core::TENANT_SCHEMA_LATEST);
    }
}
