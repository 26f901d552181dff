//! The admin API (its own listener): tenants, API keys, backends.
//! `Authorization: Bearer <admin token>` on every `/v1` route.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;
use uuid::Uuid;

use tenantry_core::web::{ApiError, ErrorBody, configure_extractors, healthz};
use tenantry_core::{TenantSlug, Tier};

use crate::auth::Admin;
use crate::backends::BackendView;
use crate::fleet::{BackendRun, MigrationStatus, Outcome};
use crate::operation::OperationState;
use crate::plane::ControlPlane;
use crate::registry::OperationView;
use crate::tenants::{Created, IssuedKey, NewTenant, TenantView};

type Cp = web::Data<ControlPlane>;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// `^[a-z0-9][a-z0-9-]{1,62}$`, unique.
    pub slug: String,
    pub name: String,
    pub tier: Tier,
    /// Defaults to the configured default region.
    pub region: Option<String>,
    /// Dedicated tier: `logical` (default) or `rds`.
    pub engine: Option<tenantry_core::Engine>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListTenants {
    /// Page size, 1-1000 (default 100).
    pub limit: Option<u64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<Uuid>,
    /// Only tenants whose slug or name contains this text (case-insensitive).
    pub q: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TenantPage {
    pub tenants: Vec<TenantView>,
    pub next_cursor: Option<Uuid>,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// A label for people; not secret.
    #[serde(default)]
    pub name: String,
    /// What its holder may do on the app API; default `admin`.
    #[serde(default)]
    pub role: Option<tenantry_core::identity::Role>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct BackendList {
    pub backends: Vec<BackendView>,
}

/// Create a tenant. Shared: placed at once (201). Dedicated: 202 with the
/// `provision` operation; the tenant serves once it succeeds.
#[utoipa::path(post, path = "/v1/tenants", request_body = CreateTenant,
    responses((status = 201, body = Created), (status = 202, body = Created), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(slug = %body.slug))]
async fn create_tenant(cp: Cp, admin: Admin, body: web::Json<CreateTenant>) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let slug = TenantSlug::parse(&body.slug).map_err(|e| ApiError::unprocessable("invalid_slug", e.0))?;
    let created = cp
        .create_tenant(
            &admin.actor,
            NewTenant { engine: body.engine, slug, name: body.name, tier: body.tier, region: body.region },
        )
        .await?;
    Ok(match created.operation {
        Some(_) => HttpResponse::Accepted().json(created),
        None => HttpResponse::Created().json(created),
    })
}

/// List tenants in creation order.
#[utoipa::path(get, path = "/v1/tenants", params(ListTenants), responses((status = 200, body = TenantPage)))]
#[tracing::instrument(skip_all)]
async fn list_tenants(cp: Cp, _admin: Admin, q: web::Query<ListTenants>) -> Result<HttpResponse, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=crate::tenants::MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request("invalid_limit", "limit must be between 1 and 1000"));
    }
    let tenants = cp.tenants_matching(q.q.as_deref().unwrap_or(""), q.cursor, limit).await?;
    let next_cursor = (tenants.len() as u64 == limit).then(|| tenants.last().map(|t| t.id)).flatten();
    Ok(HttpResponse::Ok().json(TenantPage { tenants, next_cursor }))
}

/// One tenant, by id or slug, with its placement.
#[utoipa::path(get, path = "/v1/tenants/{tenant}", params(("tenant" = String, Path, description = "id or slug")),
    responses((status = 200, body = TenantView), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(tenant = %tenant))]
async fn get_tenant(cp: Cp, _admin: Admin, tenant: web::Path<String>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(cp.tenant(&tenant).await?))
}

/// Issue an API key; the key is in this response only.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/api-keys", params(("tenant" = String, Path, description = "id or slug")),
    request_body = CreateKey, responses((status = 201, body = IssuedKey), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(tenant = %tenant))]
async fn create_key(
    cp: Cp,
    admin: Admin,
    tenant: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let tenant = cp.tenant(&tenant).await?;
    // The body is optional, but one that is there must parse: a mistyped role
    // must not issue an admin key.
    let body: CreateKey = if body.iter().all(u8::is_ascii_whitespace) {
        CreateKey::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::unprocessable("invalid_body", format!("the body: {e}")))?
    };
    let role = body.role.unwrap_or(tenantry_core::identity::Role::Admin);
    Ok(HttpResponse::Created().json(cp.create_api_key_for(&admin.actor, tenant.id, &body.name, role).await?))
}

/// Revoke an API key; it stops working on every app process at once.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/api-keys/{key_id}",
    params(("tenant" = String, Path, description = "id or slug"), ("key_id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
async fn revoke_key(cp: Cp, admin: Admin, path: web::Path<(String, Uuid)>) -> Result<HttpResponse, ApiError> {
    let (tenant, key_id) = path.into_inner();
    let tenant = cp.tenant(&tenant).await?;
    cp.revoke_api_key(&admin.actor, tenant.id, key_id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Every backend with its tenant count and schema version.
#[utoipa::path(get, path = "/v1/backends", responses((status = 200, body = BackendList)))]
#[tracing::instrument(skip_all)]
async fn list_backends(cp: Cp, _admin: Admin) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(BackendList { backends: cp.backends().await? }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MigrationList {
    /// The version a fully migrated backend reports.
    pub latest: i32,
    pub backends: Vec<MigrationStatus>,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyMigrations {
    /// Backends migrated at once, 1-64 (default 8).
    pub concurrency: Option<usize>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MigrationReport {
    pub latest: i32,
    pub applied: usize,
    pub up_to_date: usize,
    pub failed: usize,
    pub backends: Vec<BackendRun>,
}

/// Every backend's tenant-schema version and last migration outcome.
#[utoipa::path(get, path = "/v1/migrations", responses((status = 200, body = MigrationList)))]
#[tracing::instrument(skip_all)]
async fn list_migrations(cp: Cp, _admin: Admin) -> Result<HttpResponse, ApiError> {
    let latest = crate::migrate::latest(crate::migrate::TENANT);
    Ok(HttpResponse::Ok().json(MigrationList { latest, backends: cp.migration_status().await? }))
}

/// Migrate every backend to the latest tenant schema, a bounded number at a
/// time; a failing backend is reported and skipped.
#[utoipa::path(post, path = "/v1/migrations/apply", request_body = ApplyMigrations,
    responses((status = 200, body = MigrationReport), (status = 400, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
async fn apply_migrations(
    cp: Cp,
    admin: Admin,
    body: Option<web::Json<ApplyMigrations>>,
) -> Result<HttpResponse, ApiError> {
    let concurrency = body.and_then(|b| b.into_inner().concurrency).unwrap_or(8);
    if !(1..=64).contains(&concurrency) {
        return Err(ApiError::bad_request("invalid_concurrency", "concurrency must be between 1 and 64"));
    }
    let runs = cp.migrate_fleet(&admin.actor, concurrency, |_, _| {}).await?;
    let count = |f: fn(&Outcome) -> bool| runs.iter().filter(|r| f(&r.outcome)).count();
    Ok(HttpResponse::Ok().json(MigrationReport {
        latest: crate::migrate::latest(crate::migrate::TENANT),
        applied: count(|o| matches!(o, Outcome::Applied { .. })),
        up_to_date: count(|o| matches!(o, Outcome::UpToDate { .. })),
        failed: count(|o| matches!(o, Outcome::Failed { .. })),
        backends: runs,
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListOperations {
    pub tenant: Option<Uuid>,
    /// pending | running | succeeded | failed | cancelling | cancelled
    pub state: Option<String>,
    /// 1-1000 (default 100).
    pub limit: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct OperationList {
    pub operations: Vec<OperationView>,
}

/// One operation: state, current step, progress, attempts, error.
#[utoipa::path(get, path = "/v1/operations/{id}", params(("id" = Uuid, Path)),
    responses((status = 200, body = OperationView), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(id = %id))]
async fn get_operation(cp: Cp, _admin: Admin, id: web::Path<Uuid>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(cp.operation(*id).await?))
}

/// Operations, newest first.
#[utoipa::path(get, path = "/v1/operations", params(ListOperations), responses((status = 200, body = OperationList)))]
#[tracing::instrument(skip_all)]
async fn list_operations(cp: Cp, _admin: Admin, q: web::Query<ListOperations>) -> Result<HttpResponse, ApiError> {
    let state = q
        .state
        .as_deref()
        .map(str::parse::<OperationState>)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_state", e.0))?;
    let operations = cp.operations(q.tenant, state, q.limit.unwrap_or(100)).await?;
    Ok(HttpResponse::Ok().json(OperationList { operations }))
}

/// Retire a backend that holds no tenant (202 with the `retire` operation):
/// logical databases are dropped; RDS instances are deleted after a final
/// snapshot with a deterministic name.
#[utoipa::path(post, path = "/v1/backends/{id}/retire", params(("id" = Uuid, Path)),
    responses((status = 202, body = OperationView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(id = %id))]
async fn retire_backend(cp: Cp, admin: Admin, id: web::Path<Uuid>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Accepted().json(cp.retire_backend(&admin.actor, *id).await?))
}

/// Reach a backend through a connection pooler (PgBouncer in transaction
/// mode): apps then use unnamed statements for it and keep the tenant context
/// transaction-local. Moves, migrations and every owner or replication
/// connection still go straight to PostgreSQL.
#[utoipa::path(put, path = "/v1/backends/{id}/pooler", params(("id" = Uuid, Path)),
    request_body = crate::backends::Pooler, responses((status = 200, body = BackendView), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(id = %id))]
async fn set_pooler(
    cp: Cp,
    admin: Admin,
    id: web::Path<Uuid>,
    body: web::Json<crate::backends::Pooler>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(cp.set_pooler(&admin.actor, *id, Some(body.into_inner())).await?))
}

/// Apps reach the backend directly again.
#[utoipa::path(delete, path = "/v1/backends/{id}/pooler", params(("id" = Uuid, Path)),
    responses((status = 200, body = BackendView), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(id = %id))]
async fn remove_pooler(cp: Cp, admin: Admin, id: web::Path<Uuid>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(cp.set_pooler(&admin.actor, *id, None).await?))
}

/// Cancel a pending or running operation: what it created so far is rolled back.
#[utoipa::path(post, path = "/v1/operations/{id}/cancel", params(("id" = Uuid, Path)),
    responses((status = 202, body = OperationView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(id = %id))]
async fn cancel_operation(cp: Cp, admin: Admin, id: web::Path<Uuid>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Accepted().json(cp.cancel_operation(&admin.actor, *id).await?))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Promote {
    /// `logical` (default) or `rds`.
    pub engine: Option<tenantry_core::Engine>,
    /// Defaults to the engine's region.
    pub region: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveTo {
    pub target_backend_id: Uuid,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Demote {
    /// Defaults to the least-loaded ready shared pool of the tenant's region.
    pub target_pool_id: Option<Uuid>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PlanQuery {
    /// A backend id or name, `dedicated`, `dedicated:rds` or `shared`.
    pub target: String,
}

/// Promote a shared tenant to a dedicated database, online (202 with the
/// `promote` operation).
#[utoipa::path(post, path = "/v1/tenants/{tenant}/promote", params(("tenant" = String, Path, description = "id or slug")),
    request_body = Promote, responses((status = 202, body = OperationView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(tenant = %tenant))]
async fn promote(
    cp: Cp,
    admin: Admin,
    tenant: web::Path<String>,
    body: Option<web::Json<Promote>>,
) -> Result<HttpResponse, ApiError> {
    let body = body.map(|b| b.into_inner()).unwrap_or_default();
    Ok(HttpResponse::Accepted().json(cp.promote_tenant(&admin.actor, &tenant, body.engine, body.region).await?))
}

/// Move a tenant, online, to another ready backend (202 with the `move` operation).
#[utoipa::path(post, path = "/v1/tenants/{tenant}/move", params(("tenant" = String, Path, description = "id or slug")),
    request_body = MoveTo, responses((status = 202, body = OperationView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(tenant = %tenant))]
async fn move_tenant(
    cp: Cp,
    admin: Admin,
    tenant: web::Path<String>,
    body: web::Json<MoveTo>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Accepted().json(cp.move_tenant(&admin.actor, &tenant, body.target_backend_id).await?))
}

/// Demote a dedicated tenant to a shared pool, online; its dedicated backend
/// is retired afterwards (202 with the `demote` operation).
#[utoipa::path(post, path = "/v1/tenants/{tenant}/demote", params(("tenant" = String, Path, description = "id or slug")),
    request_body = Demote, responses((status = 202, body = OperationView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(tenant = %tenant))]
async fn demote(
    cp: Cp,
    admin: Admin,
    tenant: web::Path<String>,
    body: Option<web::Json<Demote>>,
) -> Result<HttpResponse, ApiError> {
    let body = body.map(|b| b.into_inner()).unwrap_or_default();
    Ok(HttpResponse::Accepted().json(cp.demote_tenant(&admin.actor, &tenant, body.target_pool_id).await?))
}

/// Dry run of a move: rows and bytes per table, schema versions, preflight
/// checks, estimated copy time and the write-pause bound. Changes nothing.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/move-plan", params(("tenant" = String, Path, description = "id or slug"), PlanQuery),
    responses((status = 200, body = crate::moves::plan::MovePlan), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(tenant = %tenant))]
async fn move_plan(
    cp: Cp,
    _admin: Admin,
    tenant: web::Path<String>,
    q: web::Query<PlanQuery>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(cp.move_plan(&tenant, &q.target).await?))
}

/// Erase a tenant (GDPR): 202 with the `erase` operation. Its requests get 404
/// from now on; rows (shared) or its database (dedicated) are deleted; keys
/// revoked; the registry keeps a tombstone and the audit trail. Asking again
/// resumes a failed erasure.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}", params(("tenant" = String, Path, description = "id or slug")),
    responses((status = 202, body = OperationView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(tenant = %tenant))]
async fn erase_tenant(cp: Cp, admin: Admin, tenant: web::Path<String>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Accepted().json(cp.erase_tenant(&admin.actor, &tenant).await?))
}

/// Export every row the tenant owns as NDJSON, consistent as of one snapshot,
/// streamed (see `export.rs` for the line format).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/export", params(("tenant" = String, Path, description = "id or slug")),
    responses((status = 200, content_type = "application/x-ndjson", body = String), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(tenant = %tenant))]
async fn export_tenant(cp: Cp, admin: Admin, tenant: web::Path<String>) -> Result<HttpResponse, ApiError> {
    crate::export::export_response(&cp, &admin.actor, &tenant).await
}

/// A tenant's settings overrides, the effective settings and the limits in force.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/settings", params(("tenant" = String, Path, description = "id or slug")),
    responses((status = 200, body = crate::tenants::SettingsView), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(tenant = %tenant))]
async fn get_settings(cp: Cp, _admin: Admin, tenant: web::Path<String>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(cp.tenant_settings(&tenant).await?))
}

/// Change a tenant's limits and feature flags at run time:
/// `{"limits": {"requests_per_second": 20, "burst": null}, "flags": {"beta": true}}`
/// (`null` restores the tier default). Effective on every app process within
/// moments; audited.
#[utoipa::path(patch, path = "/v1/tenants/{tenant}/settings", params(("tenant" = String, Path, description = "id or slug")),
    request_body = tenantry_core::settings::SettingsPatch, responses((status = 200, body = crate::tenants::SettingsView), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(tenant = %tenant))]
async fn patch_settings(
    cp: Cp,
    admin: Admin,
    tenant: web::Path<String>,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(cp.update_settings(&admin.actor, &tenant, &body).await?))
}

/// Change a tier's default limits and flags (`null` = no limit).
#[utoipa::path(patch, path = "/v1/tiers/{tier}/settings", params(("tier" = String, Path, description = "shared or dedicated")),
    request_body = tenantry_core::settings::SettingsPatch, responses((status = 200, body = Object), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(tier = %tier))]
async fn patch_tier_settings(
    cp: Cp,
    admin: Admin,
    tier: web::Path<String>,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    let tier: Tier = tier.parse().map_err(|_| ApiError::not_found("tier"))?;
    Ok(HttpResponse::Ok().json(cp.update_tier_settings(&admin.actor, tier, &body).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Tenant id or slug.
    pub tenant: Option<String>,
    /// `admin-token`, `operation`, ...
    pub actor: Option<String>,
    /// An action (`tenant.create`) or a prefix of one (`operation`).
    pub action: Option<String>,
    /// RFC 3339 time: entries at or after it.
    pub since: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<i64>,
    /// 1-1000 (default 100).
    pub limit: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub entries: Vec<crate::tenants::AuditEntry>,
    pub next_cursor: Option<i64>,
}

/// The audit log, newest first: every admin action and operation transition.
#[utoipa::path(get, path = "/v1/audit", params(AuditParams),
    responses((status = 200, body = AuditPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
async fn audit_log(cp: Cp, _admin: Admin, q: web::Query<AuditParams>) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let limit = q.limit.unwrap_or(100);
    if !(1..=crate::tenants::MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request("invalid_limit", "limit must be between 1 and 1000"));
    }
    let since = match q.since.as_deref() {
        None => None,
        Some(s) => Some(
            chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|_| ApiError::bad_request("invalid_since", format!("`{s}` is not an RFC 3339 time")))?
                .with_timezone(&chrono::Utc),
        ),
    };
    let tenant = match q.tenant.as_deref() {
        None => None,
        Some(t) => match Uuid::parse_str(t) {
            // An erased tenant's id still selects its trail.
            Ok(id) => Some(id),
            Err(_) => Some(cp.tenant(t).await?.id),
        },
    };
    let query = crate::tenants::AuditQuery { tenant, actor: q.actor, action: q.action, since, before: q.cursor, limit };
    let entries = cp.audit_log(&query).await?;
    let next_cursor = (entries.len() as u64 == limit).then(|| entries.last().map(|e| e.id)).flatten();
    Ok(HttpResponse::Ok().json(AuditPage { entries, next_cursor }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UsageParams {
    /// How many tenants, 1-1000. Default 10.
    pub top: Option<usize>,
    /// `1h`-`48h` or `1d`-`90d`. Default `24h`.
    pub window: Option<String>,
    /// `cost` (default), `requests`, `db_time`, `bytes`, `rows` or `errors`.
    pub sort: Option<crate::usage::model::UsageSort>,
}

fn window(w: Option<&str>) -> Result<crate::usage::model::Window, ApiError> {
    crate::usage::model::Window::parse(w.unwrap_or("24h"))
        .map_err(|e| ApiError::bad_request("invalid_window", e.to_string()))
}

/// The heaviest tenants over a window, with their cost.
#[utoipa::path(get, path = "/v1/usage", params(UsageParams),
    responses((status = 200, body = crate::usage::model::UsageReport), (status = 400, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
async fn usage(cp: Cp, _admin: Admin, q: web::Query<UsageParams>) -> Result<HttpResponse, ApiError> {
    let top = q.top.unwrap_or(10);
    if !(1..=crate::tenants::MAX_PAGE as usize).contains(&top) {
        return Err(ApiError::bad_request("invalid_top", "top must be between 1 and 1000"));
    }
    let w = window(q.window.as_deref())?;
    let report = cp.usage_top(w, top, q.sort.unwrap_or(crate::usage::model::UsageSort::Cost)).await?;
    Ok(HttpResponse::Ok().json(report))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WindowParams {
    /// `1h`-`48h` (hourly points) or `1d`-`90d` (daily points). Default `7d`.
    pub window: Option<String>,
}

/// One tenant's usage, cost, storage per table and a point per period.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/usage", params(("tenant" = String, Path), WindowParams),
    responses((status = 200, body = crate::usage::model::TenantUsageDetail), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(tenant = %tenant))]
async fn tenant_usage(
    cp: Cp,
    _admin: Admin,
    tenant: web::Path<String>,
    q: web::Query<WindowParams>,
) -> Result<HttpResponse, ApiError> {
    let w = window(Some(q.window.as_deref().unwrap_or("7d")))?;
    Ok(HttpResponse::Ok().json(cp.tenant_usage_detail(&tenant, w).await?))
}

/// Shared tenants heavy enough to move out, each with its promotion dry run.
#[utoipa::path(get, path = "/v1/recommendations",
    responses((status = 200, body = crate::usage::recommend::Recommendations)))]
#[tracing::instrument(skip_all)]
async fn recommendations(cp: Cp, _admin: Admin) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(cp.recommendations().await?))
}

/// Assets by status and open issues per tenant across every backend; a
/// backend that does not answer in time is listed as missing.
#[utoipa::path(get, path = "/v1/reports/assets",
    responses((status = 200, body = crate::reports::AssetReport)))]
#[tracing::instrument(skip_all)]
async fn asset_report(cp: Cp, _admin: Admin) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(cp.asset_report().await?))
}

/// Prometheus text: the admin listener's requests and latencies, and the
/// registry's tenants, operations, backends and top tenants.
async fn metrics(
    _admin: Admin,
    cp: Cp,
    http: Option<web::Data<tenantry_core::metrics::HttpMetrics>>,
) -> Result<HttpResponse, ApiError> {
    let mut body = http.map(|m| m.encode()).unwrap_or_default();
    body.push_str(&cp.registry_metrics().await?);
    Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(body))
}

/// The error statuses every operation documents (see [`ErrorStatuses`](tenantry_core::web::ErrorStatuses)).
const ADMIN_ERRORS: tenantry_core::web::ErrorStatuses =
    tenantry_core::web::ErrorStatuses { rate_limited: false, relays_backends: true };

/// Ready to serve: the registry answers and the operation workers run.
async fn readyz(cp: Cp) -> HttpResponse {
    tenantry_core::web::readiness(cp.readiness().await)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Tenantry admin API"),
    paths(
        create_tenant,
        list_tenants,
        get_tenant,
        create_key,
        revoke_key,
        list_backends,
        list_migrations,
        apply_migrations,
        list_operations,
        get_operation,
        cancel_operation,
        retire_backend,
        set_pooler,
        remove_pooler,
        crate::http_estates::add_estate,
        crate::http_estates::list_estates,
        crate::http_estates::get_estate,
        crate::http_estates::remove_estate,
        crate::http_estates::estate_sources,
        crate::http_estates::adoption_plan,
        crate::http_estates::adopt,
        crate::http_estates::adopt_all,
        crate::http_estates::revert_plan,
        crate::http_estates::revert,
        crate::http_estates::release,
        crate::http_identity::put_provider,
        crate::http_identity::list_providers,
        crate::http_identity::remove_provider,
        crate::http_identity::test_provider,
        crate::http_identity::list_users,
        crate::http_identity::erase_user,
        promote,
        move_tenant,
        demote,
        move_plan,
        audit_log,
        erase_tenant,
        export_tenant,
        get_settings,
        patch_settings,
        patch_tier_settings,
        usage,
        tenant_usage,
        recommendations,
        asset_report
    ),
    components(schemas(ErrorBody)),
    modifiers(&ADMIN_ERRORS)
)]
pub struct AdminApiDoc;

async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json(spec())
}

/// The admin API's OpenAPI document, each operation's description naming
/// the staff role it needs (from `staff::ROUTE_ROLES`, what the listener
/// enforces).
pub fn spec() -> utoipa::openapi::OpenApi {
    let mut doc = AdminApiDoc::openapi();
    for (path, item) in doc.paths.paths.iter_mut() {
        let ops = [
            ("GET", &mut item.get),
            ("POST", &mut item.post),
            ("PUT", &mut item.put),
            ("PATCH", &mut item.patch),
            ("DELETE", &mut item.delete),
        ];
        for (method, op) in ops {
            if let Some(op) = op {
                let role = crate::staff::route_role(method, path).as_str();
                let text = op.description.get_or_insert_with(String::new);
                text.push_str(&format!("\n\nStaff role: `{role}` (or the admin token)."));
            }
        }
    }
    doc
}

/// The admin routes, for embedding in an `App`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    configure_extractors(cfg);
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/openapi.json", web::get().to(openapi))
        .service(
            web::scope("/v1")
                .route("/usage", web::get().to(usage))
                .route("/tenants/{tenant}/usage", web::get().to(tenant_usage))
                .route("/recommendations", web::get().to(recommendations))
                .route("/reports/assets", web::get().to(asset_report))
                .route("/tenants", web::post().to(create_tenant))
                .route("/tenants", web::get().to(list_tenants))
                .route("/tenants/{tenant}", web::get().to(get_tenant))
                .route("/tenants/{tenant}", web::delete().to(erase_tenant))
                .route("/tenants/{tenant}/export", web::get().to(export_tenant))
                .route("/tenants/{tenant}/settings", web::get().to(get_settings))
                .route("/tenants/{tenant}/settings", web::patch().to(patch_settings))
                .route("/tiers/{tier}/settings", web::patch().to(patch_tier_settings))
                .route("/tenants/{tenant}/api-keys", web::post().to(create_key))
                .route("/tenants/{tenant}/promote", web::post().to(promote))
                .route("/tenants/{tenant}/move", web::post().to(move_tenant))
                .route("/tenants/{tenant}/demote", web::post().to(demote))
                .route("/tenants/{tenant}/move-plan", web::get().to(move_plan))
                .route("/tenants/{tenant}/api-keys/{key_id}", web::delete().to(revoke_key))
                .route("/backends", web::get().to(list_backends))
                .route("/backends/{id}/retire", web::post().to(retire_backend))
                .route("/backends/{id}/pooler", web::put().to(set_pooler))
                .route("/backends/{id}/pooler", web::delete().to(remove_pooler))
                .route("/migrations", web::get().to(list_migrations))
                .route("/migrations/apply", web::post().to(apply_migrations))
                .route("/audit", web::get().to(audit_log))
                .route("/operations", web::get().to(list_operations))
                .route("/operations/{id}", web::get().to(get_operation))
                .route("/operations/{id}/cancel", web::post().to(cancel_operation))
                .configure(crate::http_estates::routes)
                .configure(crate::http_identity::routes),
        );
}
