//! A tenant's users: the people its identity providers signed in. The app
//! appends each sign-in to `sign_in_samples` (the only way it writes people
//! down); the control plane folds them into `tenant_users` and deletes them,
//! in one statement, like usage samples. Erasing one person deletes their
//! row and pending sign-ins and leaves a pseudonym (sha-256 of issuer and
//! subject) for a day, so a sign-in seen before the erasure and folded after
//! it does not bring them back; the audit names only their id.

use sea_orm::{ConnectionTrait, TransactionTrait};
use serde_json::json;
use uuid::Uuid;

use tenantry_core::registry::{RegistryReader, TenantUser};

use crate::error::Error;
use crate::plane::ControlPlane;
use crate::registry::{audit, stmt};

/// Sign-in samples folded per statement.
const FOLD_BATCH: i64 = 10_000;

/// A person's pseudonym, from the columns `issuer` and `subject` of the row
/// in scope.
const PSEUDONYM: &str = "encode(sha256(convert_to(issuer || E'\\n' || subject, 'UTF8')), 'hex')";

impl ControlPlane {
    /// Folds pending sign-ins into `tenant_users` (a person's first and last
    /// sign-in, and the email, name and role of the last), oldest first, in
    /// batches; sign-ins of erased tenants and of people erased since are
    /// dropped. Returns the samples folded.
    pub async fn fold_sign_ins(&self) -> Result<u64, Error> {
        let sql = format!(
            "WITH moved AS ( \
               DELETE FROM sign_in_samples WHERE id <= (SELECT max(id) FROM \
                 (SELECT id FROM sign_in_samples ORDER BY id LIMIT $1) b) RETURNING *), \
             live AS ( \
               SELECT m.*, min(m.first_at) OVER w AS first, max(m.last_at) OVER w AS last, \
                      row_number() OVER (w ORDER BY m.last_at DESC) AS newest \
               FROM moved m JOIN tenants t ON t.id = m.tenant_id AND t.status NOT IN ('erasing', 'erased') \
               WHERE NOT EXISTS (SELECT 1 FROM user_erasures e WHERE e.tenant_id = m.tenant_id \
                                 AND e.pseudonym = {PSEUDONYM} AND m.last_at <= e.erased_at) \
               WINDOW w AS (PARTITION BY m.tenant_id, m.issuer, m.subject)), \
             up AS ( \
               INSERT INTO tenant_users AS u (tenant_id, issuer, subject, email, name, role, first_seen, last_seen) \
               SELECT tenant_id, issuer, subject, email, name, role, first, last FROM live WHERE newest = 1 \
               ON CONFLICT (tenant_id, issuer, subject) DO UPDATE SET \
                 email = CASE WHEN EXCLUDED.last_seen >= u.last_seen THEN EXCLUDED.email ELSE u.email END, \
                 name = CASE WHEN EXCLUDED.last_seen >= u.last_seen THEN EXCLUDED.name ELSE u.name END, \
                 role = CASE WHEN EXCLUDED.last_seen >= u.last_seen THEN EXCLUDED.role ELSE u.role END, \
                 first_seen = least(u.first_seen, EXCLUDED.first_seen), \
                 last_seen = greatest(u.last_seen, EXCLUDED.last_seen)) \
             SELECT count(*) AS n FROM moved"
        );
        let mut folded = 0u64;
        loop {
            let n = self
                .registry()
                .query_one_raw(stmt(&sql, vec![FOLD_BATCH.into()]))
                .await?
                .map(|r| r.try_get::<i64>("", "n"))
                .transpose()?
                .unwrap_or(0);
            folded += n as u64;
            if n < FOLD_BATCH {
                break;
            }
        }
        self.registry()
            .execute_raw(stmt("DELETE FROM user_erasures WHERE erased_at < now() - interval '1 day'", vec![]))
            .await?;
        Ok(folded)
    }

    /// `tenant`'s users, in id order after `after`.
    pub async fn tenant_users(&self, tenant: Uuid, after: Option<Uuid>, limit: u64) -> Result<Vec<TenantUser>, Error> {
        Ok(RegistryReader::new(self.registry().clone()).tenant_users(tenant, after, limit).await?)
    }

    /// Erases one person of `tenant`: their user row and pending sign-ins;
    /// the audit records their id only.
    pub async fn erase_user(&self, actor: &str, tenant: Uuid, user: Uuid) -> Result<(), Error> {
        let txn = self.registry().begin().await?;
        let erased = txn
            .query_one_raw(stmt(
                &format!(
                    "WITH gone AS (DELETE FROM tenant_users WHERE tenant_id = $1 AND id = $2 \
                       RETURNING tenant_id, {PSEUDONYM} AS pseudonym, issuer, subject), \
                     pending AS (DELETE FROM sign_in_samples s USING gone g \
                       WHERE s.tenant_id = g.tenant_id AND s.issuer = g.issuer AND s.subject = g.subject) \
                     INSERT INTO user_erasures (tenant_id, pseudonym) SELECT tenant_id, pseudonym FROM gone \
                     ON CONFLICT (tenant_id, pseudonym) DO UPDATE SET erased_at = now() \
                     RETURNING 1 AS one"
                ),
                vec![tenant.into(), user.into()],
            ))
            .await?;
        if erased.is_none() {
            return Err(Error::NotFound("user"));
        }
        audit(&txn, actor, "user.erase", Some(tenant), json!({"user": user})).await?;
        txn.commit().await?;
        Ok(())
    }
}
