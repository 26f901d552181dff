//! The orphan sweep: replication objects of moves that no longer run (a
//! crash between steps, a rollback that failed half-way), dropped when a
//! worker starts.

use sea_orm::ConnectionTrait;
use sea_orm::sqlx::postgres::{PgConnectOptions, PgConnection};
use sea_orm::sqlx::{self, AssertSqlSafe, Connection};
use secrecy::ExposeSecret;
use tenantry_provisioner::quote_ident;
use uuid::Uuid;

use crate::error::Error;
use crate::moves::facts::{NAME_PREFIX, replication_name};
use crate::moves::replication::{drop_publication, drop_role, drop_slots, drop_subscription};
use crate::plane::ControlPlane;
use crate::registry::stmt;

impl ControlPlane {
    /// Drops replication objects named after move operations that are no
    /// longer running (left by a crash between steps, or a rollback that
    /// failed half-way), and table-sync slots whose subscription is gone.
    /// Returns what was dropped.
    pub async fn sweep_move_orphans(&self) -> Result<Vec<String>, Error> {
        let active: Vec<String> = self
            .registry()
            .query_all_raw(stmt(
                "SELECT id FROM operations WHERE kind IN ('promote', 'move', 'demote') \
                 AND state IN ('pending', 'running', 'cancelling')",
                vec![],
            ))
            .await?
            .into_iter()
            .filter_map(|r| r.try_get::<Uuid>("", "id").ok().map(replication_name))
            .collect();
        let c = &self.config().cluster;
        let options = |db: &str| {
            c.tls.apply(
                PgConnectOptions::new()
                    .host(&c.host)
                    .port(c.port)
                    .database(db)
                    .username(&c.admin_user)
                    .password(c.admin_password.expose_secret())
                    .application_name("tenantry-sweep"),
            )
        };
        // Only databases of this registry's backends: other registries may share
        // the cluster, and their moves are theirs.
        let known: Vec<String> = self.backends().await?.into_iter().map(|b| b.database).collect();
        let mut dropped = Vec::new();
        let mut home = PgConnection::connect_with(&options(&self.config().registry_database)).await?;
        let subs: Vec<(String, String)> = sqlx::query_as(
            "SELECT s.subname::text, d.datname::text FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid \
             WHERE s.subname LIKE 'tenantry\\_mv\\_%'",
        )
        .fetch_all(&mut home)
        .await?;
        for (sub, db) in subs.into_iter().filter(|(s, d)| !active.contains(s) && known.contains(d)) {
            let mut conn = PgConnection::connect_with(&options(&db)).await?;
            drop_subscription(&mut conn, &sub).await?;
            conn.close().await?;
            dropped.push(format!("subscription {sub} in {db}"));
        }
        let slots: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT slot_name::text, database::text FROM pg_replication_slots \
             WHERE slot_name LIKE 'tenantry\\_mv\\_%' \
                OR (slot_name ~ '^pg_[0-9]+_sync_' \
                    AND substring(slot_name from '^pg_([0-9]+)_sync_')::oid NOT IN (SELECT oid FROM pg_subscription))",
        )
        .fetch_all(&mut home)
        .await?;
        let ours = |db: &Option<String>| db.as_ref().is_some_and(|d| known.contains(d));
        for (slot, db) in slots.into_iter().filter(|(s, d)| !active.contains(s) && ours(d)) {
            drop_slots(&mut home, &slot, None).await?;
            dropped.push(format!("slot {slot}"));
            if let (true, Some(db)) = (slot.starts_with(NAME_PREFIX), db) {
                let mut conn = PgConnection::connect_with(&options(&db)).await?;
                drop_publication(&mut conn, &slot).await?;
                conn.close().await?;
            }
        }
        // Publications made before a crash that came before their slot: look in
        // every database of this cluster that holds tenant data.
        let dbs: Vec<String> = sqlx::query_scalar(
            "SELECT datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate AND datname <> 'postgres'",
        )
        .fetch_all(&mut home)
        .await?;
        // Moves' replication roles, with the databases they hold grants in
        // (a role is made with its grants, in one statement): only those of
        // this registry's databases.
        let roles: Vec<(String, Vec<String>)> = sqlx::query_as(
            "SELECT r.rolname::text, array_agg(DISTINCT d.datname::text) FROM pg_roles r \
             JOIN pg_shdepend s ON s.refclassid = 'pg_authid'::regclass AND s.refobjid = r.oid \
             JOIN pg_database d ON d.oid = s.dbid \
             WHERE r.rolname LIKE 'tenantry\\_mv\\_%' GROUP BY r.rolname",
        )
        .fetch_all(&mut home)
        .await?;
        home.close().await?;
        for (role, held) in
            roles.into_iter().filter(|(r, d)| !active.contains(r) && d.iter().all(|d| known.contains(d)))
        {
            for (i, db) in held.iter().enumerate() {
                let mut conn = PgConnection::connect_with(&options(db)).await?;
                if i + 1 == held.len() {
                    drop_role(&mut conn, &role).await?;
                } else {
                    sqlx::raw_sql(AssertSqlSafe(format!("DROP OWNED BY {}", quote_ident(&role))))
                        .execute(&mut conn)
                        .await?;
                }
                conn.close().await?;
            }
            dropped.push(format!("role {role}"));
        }
        for db in dbs.into_iter().filter(|d| known.contains(d)) {
            let Ok(mut conn) = PgConnection::connect_with(&options(&db)).await else { continue };
            let pubs: Vec<String> =
                sqlx::query_scalar("SELECT pubname::text FROM pg_publication WHERE pubname LIKE 'tenantry\\_mv\\_%'")
                    .fetch_all(&mut conn)
                    .await?;
            for p in pubs.into_iter().filter(|p| !active.contains(p)) {
                drop_publication(&mut conn, &p).await?;
                dropped.push(format!("publication {p} in {db}"));
            }
            conn.close().await?;
        }
        if !dropped.is_empty() {
            tracing::warn!(?dropped, "dropped replication objects left by interrupted moves");
        }
        Ok(dropped)
    }
}
