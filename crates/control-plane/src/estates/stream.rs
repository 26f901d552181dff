//! An adoption's change stream: a publication for the source's tables and a
//! `pgoutput` slot on the legacy database, read over an ordinary connection
//! (`pg_logical_slot_peek_binary_changes`), decoded, mapped and applied to the
//! target in commit order, the slot advanced only after the target committed:
//! a crash replays, never skips, and every apply is idempotent.
//!
//! The slot is made before the initial copy, so every change the copy might
//! miss is in it; changes the copy already saw re-apply harmlessly.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sea_orm::sqlx::postgres::PgConnection;
use sea_orm::sqlx::{self, AssertSqlSafe, Connection};
use uuid::Uuid;

use tenantry_provisioner::quote_ident;

use super::apply;
use super::legacy::{Source, Table};
use super::pgoutput::{Message, Relation, Value, decode};
use super::rows::map_row;
use crate::error::Error;

/// Changes read per call; a transaction is never split.
const BATCH: i32 = 2000;

/// `0x16B3748` -> `0/16B3748`.
pub(crate) fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Makes the publication, then the slot (in a statement of its own, outside
/// any transaction). Repeatable: what exists is kept.
pub(crate) async fn create(conn: &mut PgConnection, source: &Source, name: &str) -> Result<(), Error> {
    let publication: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_publication WHERE pubname = $1")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    if publication.is_none() {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert, update, delete, truncate')",
            quote_ident(name),
            source.table_list()
        )))
        .execute(&mut *conn)
        .await?;
    }
    let slot: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    if slot.is_none() {
        sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')").bind(name).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Drops the slot and the publication. Repeatable.
pub(crate) async fn drop(conn: &mut PgConnection, name: &str) -> Result<(), Error> {
    sqlx::query("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    sqlx::raw_sql(AssertSqlSafe(format!("DROP PUBLICATION IF EXISTS {}", quote_ident(name))))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Bytes of WAL the slot has not confirmed yet.
pub(crate) async fn lag(conn: &mut PgConnection, name: &str) -> Result<i64, Error> {
    let lag: Option<i64> = sqlx::query_scalar(
        "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?
    .flatten();
    lag.ok_or_else(|| Error::invalid("slot_missing", format!("the adoption's slot `{name}` is gone")))
}

/// Keys (text form) of legacy rows whose changes were applied since it was
/// set, per legacy table: what the verification looks at again.
#[derive(Debug, Default)]
pub(crate) struct Dirty {
    pub(crate) keys: BTreeMap<String, BTreeSet<String>>,
}

/// Applies a source's change stream to the target.
pub(crate) struct Applier<'a> {
    pub(crate) source: &'a Source,
    pub(crate) tenant: Uuid,
    pub(crate) name: String,
    relations: HashMap<u32, Relation>,
    /// Changes applied so far by this applier.
    pub(crate) applied: u64,
    pub(crate) dirty: Option<Dirty>,
}

impl<'a> Applier<'a> {
    pub(crate) fn new(source: &'a Source, tenant: Uuid, name: String) -> Self {
        Applier { source, tenant, name, relations: HashMap::new(), applied: 0, dirty: None }
    }

    /// Applies every change committed on the legacy side up to its flushed
    /// WAL, batch by batch (one target transaction each, then the slot
    /// advanced). Returns the changes applied.
    pub(crate) async fn drain(&mut self, legacy: &mut PgConnection, target: &mut PgConnection) -> Result<u64, Error> {
        let before = self.applied;
        loop {
            let flushed: String =
                sqlx::query_scalar("SELECT pg_current_wal_flush_lsn()::text").fetch_one(&mut *legacy).await?;
            let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
                "SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes($1, NULL, $2, \
                 'proto_version', '1', 'publication_names', $1)",
            )
            .bind(&self.name)
            .bind(BATCH)
            .fetch_all(&mut *legacy)
            .await?;
            if rows.is_empty() {
                // Nothing of ours up to `flushed`: confirm it, so the lag shows
                // the estate's other traffic as read.
                sqlx::query(
                    "SELECT pg_replication_slot_advance(slot_name, $2::pg_lsn) FROM pg_replication_slots \
                     WHERE slot_name = $1 AND confirmed_flush_lsn < $2::pg_lsn",
                )
                .bind(&self.name)
                .bind(&flushed)
                .execute(&mut *legacy)
                .await?;
                return Ok(self.applied - before);
            }
            let mut tx = target.begin().await?;
            let mut committed = None;
            for (_, data) in &rows {
                let message = decode(data).map_err(|e| Error::invalid("stream_undecodable", e.to_string()))?;
                match message {
                    Message::Relation(r) => {
                        self.relations.insert(r.id, r);
                    }
                    Message::Begin { .. } => {}
                    Message::Commit { end_lsn, .. } => committed = Some(end_lsn),
                    Message::Insert { relation, new } => self.upsert(&mut tx, relation, None, &new).await?,
                    Message::Update { relation, old, new } => {
                        self.upsert(&mut tx, relation, old.as_deref(), &new).await?
                    }
                    Message::Delete { relation, old } => self.delete(&mut tx, relation, &old).await?,
                    Message::Truncate { relations } => {
                        for r in relations {
                            let (t, _) = self.table_of(r)?;
                            let sql = format!("DELETE FROM public.{} WHERE tenant_id = $1", quote_ident(t.target));
                            sqlx::query(AssertSqlSafe(sql)).bind(self.tenant).execute(&mut *tx).await?;
                            self.applied += 1;
                        }
                    }
                    Message::Other(_) => {}
                }
            }
            tx.commit().await?;
            if let Some(end) = committed {
                sqlx::query("SELECT pg_replication_slot_advance($1, $2::pg_lsn)")
                    .bind(&self.name)
                    .bind(format_lsn(end))
                    .execute(&mut *legacy)
                    .await?;
            }
        }
    }

    /// The mapped table and the legacy column names of a relation of the stream.
    fn table_of(&self, relation: u32) -> Result<(&'a Table, Vec<String>), Error> {
        let r = self
            .relations
            .get(&relation)
            .ok_or_else(|| Error::invalid("stream_undecodable", format!("a change to unknown relation {relation}")))?;
        let source: &'a Source = self.source;
        let t = source.table(&r.name).ok_or_else(|| {
            Error::invalid("stream_unmapped", format!("a change to `{}.{}`, which does not map", r.schema, r.name))
        })?;
        let columns: Vec<String> = r.columns.iter().map(|c| c.name.clone()).collect();
        if let Some(gone) = t.key.columns.iter().find(|k| !columns.contains(k)) {
            return Err(Error::invalid(
                "stream_unmapped",
                format!("`{}` no longer has its key column `{gone}`", r.name),
            ));
        }
        Ok((t, columns))
    }

    /// A change to the row keyed `key` of `t`, for the pause's second look.
    fn note(&mut self, t: &Table, key: Option<String>) {
        if let (Some(d), Some(k)) = (self.dirty.as_mut(), key) {
            d.keys.entry(t.legacy.clone()).or_default().insert(k);
        }
    }

    async fn upsert(
        &mut self,
        tx: &mut PgConnection,
        relation: u32,
        old: Option<&[Value]>,
        new: &[Value],
    ) -> Result<(), Error> {
        let (t, columns) = self.table_of(relation)?;
        let key = t.key.text_of(&columns, new);
        // The old key, sent when the key changed.
        if let Some(was) = old.and_then(|o| t.key.text_of(&columns, o))
            && Some(&was) != key.as_ref()
        {
            apply::delete(tx, t.target, self.tenant, &[t.id(self.tenant, &was)?]).await?;
            self.note(t, Some(was));
        }
        let row = map_row(self.tenant, t, &columns, new)
            .map_err(|e| Error::invalid("unmappable_row", format!("`{}`: {e}", t.legacy)))?;
        apply::upsert(tx, t.target, &[row]).await?;
        self.applied += 1;
        self.note(t, key);
        Ok(())
    }

    async fn delete(&mut self, tx: &mut PgConnection, relation: u32, old: &[Value]) -> Result<(), Error> {
        let (t, columns) = self.table_of(relation)?;
        let Some(k) = t.key.text_of(&columns, old) else {
            return Err(Error::invalid("stream_undecodable", "a delete without its key"));
        };
        apply::delete(tx, t.target, self.tenant, &[t.id(self.tenant, &k)?]).await?;
        self.applied += 1;
        self.note(t, Some(k));
        Ok(())
    }
}
