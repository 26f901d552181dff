//! GDPR export: every row the tenant owns, on whatever tier it lives, as
//! NDJSON, consistent as of one snapshot (one REPEATABLE READ, READ ONLY
//! transaction on the tenant's backend, scoped to the tenant by RLS), streamed
//! in chunks through a small bounded channel so a large tenant is never held in
//! memory and a slow client slows the query down rather than filling buffers.
//!
//! Lines: a header `{"format":"tenantry-export-v1","tenant_id",...,"tables":[...]}`,
//! then `{"table":"assets","row":{...}}` per row, then
//! `{"end":true,"rows":N}`. A stream without its `end` line was cut short.

use actix_web::web::Bytes;
use futures::StreamExt;
use sea_orm::sqlx::{self, AssertSqlSafe, Connection};
use serde_json::json;
use tokio::sync::mpsc;

use tenantry_core::TenantStatus;
use tenantry_provisioner::quote_ident;

use crate::error::Error;
use crate::plane::ControlPlane;
use crate::tenants::TenantView;

/// Bytes gathered before a chunk is sent.
const CHUNK: usize = 64 * 1024;
/// Chunks in flight between the query and the client.
const IN_FLIGHT: usize = 8;

pub type ExportBody = mpsc::Receiver<Result<Bytes, std::io::Error>>;

impl ControlPlane {
    /// Starts an export; the tenant and the receiving end of the stream.
    pub async fn export_tenant(&self, tenant: &str) -> Result<(TenantView, ExportBody), Error> {
        let t = self.tenant(tenant).await?;
        if matches!(t.status, TenantStatus::Erasing | TenantStatus::Erased) {
            return Err(Error::Conflict { code: "tenant_erased", message: "the tenant is erased".into() });
        }
        let placement = t
            .placement
            .clone()
            .ok_or(Error::Conflict { code: "tenant_not_placed", message: "the tenant has no backend yet".into() })?;
        let side = self.side(placement.backend_id).await?;
        let mut conn = self.tenant_conn(&side, t.id).await?;
        sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut conn).await?;
        let tables: Vec<String> = crate::backend::tenant_tables(&mut conn)
            .await?
            .into_iter()
            .filter(|t| t != "tenantry_move_sentinels")
            .rev() // parents first, the natural order to import
            .collect();
        let header = json!({
            "format": "tenantry-export-v1",
            "tenant_id": t.id,
            "slug": t.slug,
            "tier": t.tier,
            "exported_at": chrono::Utc::now(),
            "tables": tables,
        });
        let (tx, rx) = mpsc::channel(IN_FLIGHT);
        let tenant_id = t.id;
        tokio::spawn(async move {
            let mut buf = format!("{header}\n");
            let mut rows = 0u64;
            for table in &tables {
                let name = serde_json::to_string(table).unwrap_or_default();
                let sql =
                    format!("SELECT row_to_json(r)::text FROM public.{} r WHERE tenant_id = $1", quote_ident(table));
                let mut stream = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql)).bind(tenant_id).fetch(&mut conn);
                while let Some(row) = stream.next().await {
                    match row {
                        Ok(json) => {
                            rows += 1;
                            buf.push_str("{\"table\":");
                            buf.push_str(&name);
                            buf.push_str(",\"row\":");
                            buf.push_str(&json);
                            buf.push_str("}\n");
                            if buf.len() >= CHUNK && tx.send(Ok(Bytes::from(std::mem::take(&mut buf)))).await.is_err() {
                                return; // the client went away
                            }
                        }
                        Err(e) => {
                            tracing::warn!(tenant_id = %tenant_id, error = %e, "export failed mid-stream");
                            let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                            return;
                        }
                    }
                }
            }
            buf.push_str(&format!("{}\n", json!({"end": true, "rows": rows})));
            let _ = tx.send(Ok(Bytes::from(buf))).await;
            let _ = sqlx::raw_sql("COMMIT").execute(&mut conn).await;
            let _ = conn.close().await;
        });
        Ok((t, rx))
    }
}

/// The export as a streamed NDJSON download, audited under `actor`.
pub(crate) async fn export_response(
    cp: &ControlPlane,
    actor: &str,
    tenant: &str,
) -> Result<actix_web::HttpResponse, tenantry_core::web::ApiError> {
    let (t, body) = cp.export_tenant(tenant).await?;
    crate::registry::audit(cp.registry(), actor, "tenant.export", Some(t.id), serde_json::json!({}))
        .await
        .map_err(|e| tenantry_core::web::ApiError::internal(&e))?;
    let stream = futures::stream::unfold(body, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Ok(actix_web::HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .insert_header(("Content-Disposition", format!("attachment; filename=\"{}-export.ndjson\"", t.slug)))
        .streaming(stream))
}
