//! The app API (its own listener). Every `/v1` route authenticates its caller
//! (`caller.rs`: an API key or a tenant user's token), checks the route's role,
//! enters the tenant's backend through the [`Resolver`] and works only
//! through the tenant-scoped [`TenantTx`]. Another tenant's id answers exactly
//! like a missing one: 404.

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::{HttpResponse, HttpServer, web};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use sea_orm::{DbErr, IntoActiveModel, Set};
use serde::Deserialize;
use tracing_actix_web::{RootSpanBuilder, TracingLogger};
use utoipa::OpenApi;
use uuid::Uuid;

use tenantry_core::db::{FOREIGN_KEY_VIOLATION, UNIQUE_VIOLATION, sqlstate};
use tenantry_core::entities::{asset_issues, assets, maintenance_schedules};
use tenantry_core::identity::Role;
use tenantry_core::metrics::HttpMetrics;
use tenantry_core::registry::{UserList, UserPage};
use tenantry_core::web::{ApiError, ErrorBody, configure_extractors, healthz, no_route};

use crate::Resolver;
use crate::caller::Tenant;
use crate::data::{self, AssetFilter, NewAsset, NewIssue, NewSchedule};
use crate::scope::TenantTx;
use crate::wire::*;

/// Default and largest page sizes of list routes.
const DEFAULT_PAGE: u64 = 50;
const MAX_PAGE: u64 = 200;

/// Opens the tenant's scoped transaction.
async fn enter(resolver: &Resolver, tenant: &Tenant) -> Result<TenantTx, ApiError> {
    resolver.enter(&tenant.0).await
}

/// The single row of a by-id or by-tag read, or 404.
fn first<M>(rows: Vec<M>, what: &str) -> Result<M, ApiError> {
    rows.into_iter().next().ok_or_else(|| ApiError::not_found(what))
}

/// Maps constraint violations to 4xx; anything else is a 500.
fn db_error(e: DbErr) -> ApiError {
    match sqlstate(&e).as_deref() {
        Some(UNIQUE_VIOLATION) => ApiError::conflict("duplicate_tag", "an asset with this tag already exists"),
        Some(FOREIGN_KEY_VIOLATION) => ApiError::not_found("asset"),
        Some("23514") => ApiError::unprocessable("invalid_value", "a value is outside its allowed range"),
        _ => ApiError::from(e),
    }
}

fn text(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    let v = value.trim();
    if v.is_empty() || v.chars().count() > max {
        return Err(ApiError::unprocessable("invalid_field", format!("`{field}` must be 1-{max} characters")));
    }
    Ok(v.to_string())
}

fn optional_text(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    if value.chars().count() > max {
        return Err(ApiError::unprocessable("invalid_field", format!("`{field}` must be at most {max} characters")));
    }
    Ok(value.trim().to_string())
}

fn attributes(value: serde_json::Value) -> Result<serde_json::Value, ApiError> {
    if !value.is_object() {
        return Err(ApiError::unprocessable("invalid_field", "`attributes` must be a JSON object"));
    }
    Ok(value)
}

/// The page size asked for, within the API's maximum and the tenant's
/// `max_page_size` limit.
fn limit(l: Option<u64>, t: &Tenant) -> Result<u64, ApiError> {
    let max = t.0.limits.max_page_size.map_or(MAX_PAGE, |m| MAX_PAGE.min(u64::from(m)));
    let l = l.unwrap_or(DEFAULT_PAGE.min(max));
    if (1..=max).contains(&l) {
        Ok(l)
    } else {
        Err(ApiError::bad_request("invalid_limit", format!("limit must be between 1 and {max}")))
    }
}

fn encode_cursor(id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

fn decode_cursor(c: Option<&str>) -> Result<Option<Uuid>, ApiError> {
    c.map(|c| {
        URL_SAFE_NO_PAD
            .decode(c)
            .ok()
            .and_then(|b| Uuid::from_slice(&b).ok())
            .ok_or_else(|| ApiError::bad_request("invalid_cursor", "cursor is not one this API returned"))
    })
    .transpose()
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAsset {
    pub name: String,
    /// Unique per tenant (barcode / QR).
    pub tag: String,
    #[serde(default)]
    pub category: String,
    #[serde(default)]
    pub location: String,
    pub status: Option<AssetStatus>,
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<serde_json::Value>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAsset {
    pub name: Option<String>,
    pub tag: Option<String>,
    pub category: Option<String>,
    pub location: Option<String>,
    pub status: Option<AssetStatus>,
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<serde_json::Value>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListAssets {
    pub limit: Option<u64>,
    pub cursor: Option<String>,
    pub status: Option<AssetStatus>,
    /// Case-insensitive substring of name or tag.
    pub q: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSchedule {
    pub title: String,
    pub interval_days: i32,
    /// Defaults to now + interval_days.
    pub next_due_at: Option<DateTime<Utc>>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSchedule {
    pub title: Option<String>,
    pub interval_days: Option<i32>,
    pub next_due_at: Option<DateTime<Utc>>,
    pub last_done_at: Option<DateTime<Utc>>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DueQuery {
    /// RFC 3339 instant; schedules due strictly before it.
    pub before: DateTime<Utc>,
    pub limit: Option<u64>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateIssue {
    pub title: String,
    #[serde(default)]
    pub description: String,
    pub status: Option<IssueStatus>,
    pub priority: Option<Priority>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateIssue {
    pub title: Option<String>,
    pub description: Option<String>,
    pub status: Option<IssueStatus>,
    pub priority: Option<Priority>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListIssues {
    pub status: Option<IssueStatus>,
    pub limit: Option<u64>,
    pub cursor: Option<String>,
}

type R = web::Data<Resolver>;

fn interval(days: i32) -> Result<i32, ApiError> {
    if (1..=3650).contains(&days) {
        Ok(days)
    } else {
        Err(ApiError::unprocessable("invalid_field", "`interval_days` must be between 1 and 3650"))
    }
}

/// Who am I: the tenant this key belongs to.
///
/// Role: `viewer`.
#[utoipa::path(get, path = "/v1/tenant", responses((status = 200, body = WhoAmI), (status = 401, body = ErrorBody)))]
async fn whoami(t: Tenant) -> HttpResponse {
    HttpResponse::Ok().json(WhoAmI { id: t.0.tenant_id, slug: t.0.slug.clone(), tier: t.0.tier })
}

/// Who is asking: the subject (or `api-key`), the tenant, the role.
///
/// Role: `viewer`.
#[utoipa::path(get, path = "/v1/me", responses((status = 200, body = Me), (status = 401, body = ErrorBody)))]
async fn me(t: Tenant) -> HttpResponse {
    let c = &t.2;
    HttpResponse::Ok().json(Me {
        tenant_id: t.0.tenant_id,
        tenant: t.0.slug.clone(),
        subject: c.subject().to_string(),
        issuer: c.person.as_ref().map(|p| p.issuer.clone()),
        email: c.person.as_ref().and_then(|p| p.email.clone()),
        name: c.person.as_ref().and_then(|p| p.name.clone()),
        role: c.role,
    })
}

/// The people who signed in to this tenant through its identity providers
/// (first and last seen, the role their last sign-in held), in id order, a
/// page at a time. Sign-ins show within seconds (the control plane folds them).
///
/// Role: `admin`.
#[utoipa::path(get, path = "/v1/users", params(UserPage),
    responses((status = 200, body = UserList), (status = 403, body = ErrorBody)))]
async fn users(r: R, t: Tenant, q: web::Query<UserPage>) -> Result<HttpResponse, ApiError> {
    t.needs(Role::Admin)?;
    let limit = q.limit();
    let users = r.tenant_users(t.0.tenant_id, q.after, limit).await?;
    Ok(HttpResponse::Ok().json(UserList::page(users, limit)))
}

/// Role: `manager`.
#[utoipa::path(post, path = "/v1/assets", request_body = CreateAsset,
    responses((status = 201, body = Asset), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_asset(r: R, t: Tenant, body: web::Json<CreateAsset>) -> Result<HttpResponse, ApiError> {
    t.needs(Role::Manager)?;
    let b = body.into_inner();
    let new = NewAsset {
        name: text("name", &b.name, 200)?,
        tag: text("tag", &b.tag, 100)?,
        category: optional_text("category", &b.category, 100)?,
        location: optional_text("location", &b.location, 200)?,
        status: wire(b.status.unwrap_or(AssetStatus::Active)),
        attributes: attributes(b.attributes.unwrap_or_else(|| serde_json::json!({})))?,
    };
    let tx = enter(&r, &t).await?;
    let asset = data::create_asset(&tx, new).await.map_err(db_error)?;
    tx.commit().await?;
    Ok(HttpResponse::Created().json(Asset::from(asset)))
}

/// Role: `viewer`.
#[utoipa::path(get, path = "/v1/assets", params(ListAssets), responses((status = 200, body = AssetPage)))]
async fn list_assets(r: R, t: Tenant, q: web::Query<ListAssets>) -> Result<HttpResponse, ApiError> {
    let limit = limit(q.limit, &t)?;
    let filter = AssetFilter {
        status: q.status.map(wire),
        q: q.q.clone().filter(|s| !s.is_empty()),
        after: decode_cursor(q.cursor.as_deref())?,
        limit,
    };
    let rows = r.read(&t.0, data::asset_list(filter)).await?;
    let page = data::page(rows, limit, |a| a.id);
    Ok(HttpResponse::Ok().json(AssetPage {
        assets: page.items.into_iter().map(Asset::from).collect(),
        next_cursor: page.next_after.map(encode_cursor),
    }))
}

/// Role: `viewer`.
#[utoipa::path(get, path = "/v1/assets/{id}", params(("id" = Uuid, Path)),
    responses((status = 200, body = Asset), (status = 404, body = ErrorBody)))]
async fn get_asset(r: R, t: Tenant, id: web::Path<Uuid>) -> Result<HttpResponse, ApiError> {
    let asset = first(r.read(&t.0, data::by_id::<assets::Entity>(*id)).await?, "asset")?;
    Ok(HttpResponse::Ok().json(Asset::from(asset)))
}

/// Role: `viewer`.
#[utoipa::path(get, path = "/v1/assets/by-tag/{tag}", params(("tag" = String, Path)),
    responses((status = 200, body = Asset), (status = 404, body = ErrorBody)))]
async fn asset_by_tag(r: R, t: Tenant, tag: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let asset = first(r.read(&t.0, data::asset_by_tag(tag.into_inner())).await?, "asset")?;
    Ok(HttpResponse::Ok().json(Asset::from(asset)))
}

/// Role: technician for `status` and `location` only; otherwise manager.
#[utoipa::path(patch, path = "/v1/assets/{id}", params(("id" = Uuid, Path)), request_body = UpdateAsset,
    responses((status = 200, body = Asset), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn update_asset(
    r: R,
    t: Tenant,
    id: web::Path<Uuid>,
    body: web::Json<UpdateAsset>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    // The field app's change (status, location) is a technician's; the rest a manager's.
    let field_only = b.name.is_none() && b.tag.is_none() && b.category.is_none() && b.attributes.is_none();
    t.needs(if field_only { Role::Technician } else { Role::Manager })?;
    let tx = enter(&r, &t).await?;
    let mut m = tx.get::<assets::Entity>(*id).await?.ok_or_else(|| ApiError::not_found("asset"))?.into_active_model();
    if let Some(v) = b.name {
        m.name = Set(text("name", &v, 200)?);
    }
    if let Some(v) = b.tag {
        m.tag = Set(text("tag", &v, 100)?);
    }
    if let Some(v) = b.category {
        m.category = Set(optional_text("category", &v, 100)?);
    }
    if let Some(v) = b.location {
        m.location = Set(optional_text("location", &v, 200)?);
    }
    if let Some(v) = b.status {
        m.status = Set(wire(v));
    }
    if let Some(v) = b.attributes {
        m.attributes = Set(attributes(v)?);
    }
    m.updated_at = Set(Utc::now());
    let asset = tx.update(m).await.map_err(db_error)?.ok_or_else(|| ApiError::not_found("asset"))?;
    tx.commit().await?;
    Ok(HttpResponse::Ok().json(Asset::from(asset)))
}

/// Role: `manager`.
#[utoipa::path(delete, path = "/v1/assets/{id}", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_asset(r: R, t: Tenant, id: web::Path<Uuid>) -> Result<HttpResponse, ApiError> {
    t.needs(Role::Manager)?;
    let tx = enter(&r, &t).await?;
    if !tx.delete::<assets::Entity>(*id).await? {
        return Err(ApiError::not_found("asset"));
    }
    tx.commit().await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Role: `technician`.
#[utoipa::path(post, path = "/v1/assets/{id}/maintenance-schedules", params(("id" = Uuid, Path)),
    request_body = CreateSchedule, responses((status = 201, body = Schedule), (status = 404, body = ErrorBody)))]
async fn create_schedule(
    r: R,
    t: Tenant,
    id: web::Path<Uuid>,
    body: web::Json<CreateSchedule>,
) -> Result<HttpResponse, ApiError> {
    t.needs(Role::Technician)?;
    let b = body.into_inner();
    let days = interval(b.interval_days)?;
    let new = NewSchedule {
        asset_id: *id,
        title: text("title", &b.title, 200)?,
        interval_days: days,
        next_due_at: b.next_due_at.unwrap_or_else(|| Utc::now() + Duration::days(i64::from(days))),
    };
    let tx = enter(&r, &t).await?;
    tx.get::<assets::Entity>(*id).await?.ok_or_else(|| ApiError::not_found("asset"))?;
    let s = data::create_schedule(&tx, new).await.map_err(db_error)?;
    tx.commit().await?;
    Ok(HttpResponse::Created().json(Schedule::from(s)))
}

/// Role: `viewer`.
#[utoipa::path(get, path = "/v1/assets/{id}/maintenance-schedules", params(("id" = Uuid, Path)),
    responses((status = 200, body = ScheduleList), (status = 404, body = ErrorBody)))]
async fn list_schedules(r: R, t: Tenant, id: web::Path<Uuid>) -> Result<HttpResponse, ApiError> {
    let tx = enter(&r, &t).await?;
    tx.get::<assets::Entity>(*id).await?.ok_or_else(|| ApiError::not_found("asset"))?;
    let list = data::schedules_of_asset(&tx, *id).await?;
    tx.commit().await?;
    Ok(HttpResponse::Ok().json(ScheduleList { maintenance_schedules: list.into_iter().map(Schedule::from).collect() }))
}

/// Role: `viewer`.
#[utoipa::path(get, path = "/v1/maintenance-schedules/due", params(DueQuery), responses((status = 200, body = ScheduleList)))]
async fn due_schedules(r: R, t: Tenant, q: web::Query<DueQuery>) -> Result<HttpResponse, ApiError> {
    let list = r.read(&t.0, data::schedules_due(q.before, limit(q.limit, &t)?)).await?;
    Ok(HttpResponse::Ok().json(ScheduleList { maintenance_schedules: list.into_iter().map(Schedule::from).collect() }))
}

/// Role: `technician`.
#[utoipa::path(patch, path = "/v1/maintenance-schedules/{id}", params(("id" = Uuid, Path)), request_body = UpdateSchedule,
    responses((status = 200, body = Schedule), (status = 404, body = ErrorBody)))]
async fn update_schedule(
    r: R,
    t: Tenant,
    id: web::Path<Uuid>,
    body: web::Json<UpdateSchedule>,
) -> Result<HttpResponse, ApiError> {
    t.needs(Role::Technician)?;
    let b = body.into_inner();
    let tx = enter(&r, &t).await?;
    let mut m = tx
        .get::<maintenance_schedules::Entity>(*id)
        .await?
        .ok_or_else(|| ApiError::not_found("maintenance schedule"))?
        .into_active_model();
    if let Some(v) = b.title {
        m.title = Set(text("title", &v, 200)?);
    }
    if let Some(v) = b.interval_days {
        m.interval_days = Set(interval(v)?);
    }
    if let Some(v) = b.next_due_at {
        m.next_due_at = Set(v);
    }
    if let Some(v) = b.last_done_at {
        m.last_done_at = Set(Some(v));
    }
    m.updated_at = Set(Utc::now());
    let s = tx.update(m).await.map_err(db_error)?.ok_or_else(|| ApiError::not_found("maintenance schedule"))?;
    tx.commit().await?;
    Ok(HttpResponse::Ok().json(Schedule::from(s)))
}

/// Role: `manager`.
#[utoipa::path(delete, path = "/v1/maintenance-schedules/{id}", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_schedule(r: R, t: Tenant, id: web::Path<Uuid>) -> Result<HttpResponse, ApiError> {
    t.needs(Role::Manager)?;
    let tx = enter(&r, &t).await?;
    if !tx.delete::<maintenance_schedules::Entity>(*id).await? {
        return Err(ApiError::not_found("maintenance schedule"));
    }
    tx.commit().await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Role: `technician`.
#[utoipa::path(post, path = "/v1/assets/{id}/issues", params(("id" = Uuid, Path)), request_body = CreateIssue,
    responses((status = 201, body = Issue), (status = 404, body = ErrorBody)))]
async fn create_issue(
    r: R,
    t: Tenant,
    id: web::Path<Uuid>,
    body: web::Json<CreateIssue>,
) -> Result<HttpResponse, ApiError> {
    t.needs(Role::Technician)?;
    let b = body.into_inner();
    let new = NewIssue {
        asset_id: *id,
        title: text("title", &b.title, 200)?,
        description: optional_text("description", &b.description, 10_000)?,
        status: wire(b.status.unwrap_or(IssueStatus::Open)),
        priority: wire(b.priority.unwrap_or(Priority::Medium)),
    };
    let tx = enter(&r, &t).await?;
    tx.get::<assets::Entity>(*id).await?.ok_or_else(|| ApiError::not_found("asset"))?;
    let i = data::create_issue(&tx, new).await.map_err(db_error)?;
    tx.commit().await?;
    Ok(HttpResponse::Created().json(Issue::from(i)))
}

/// Role: `viewer`.
#[utoipa::path(get, path = "/v1/issues", params(ListIssues), responses((status = 200, body = IssuePage)))]
async fn list_issues(r: R, t: Tenant, q: web::Query<ListIssues>) -> Result<HttpResponse, ApiError> {
    let lim = limit(q.limit, &t)?;
    let rows = r.read(&t.0, data::issue_list(q.status.map(wire), decode_cursor(q.cursor.as_deref())?, lim)).await?;
    let page = data::page(rows, lim, |i| i.id);
    Ok(HttpResponse::Ok().json(IssuePage {
        issues: page.items.into_iter().map(Issue::from).collect(),
        next_cursor: page.next_after.map(encode_cursor),
    }))
}

/// Role: `viewer`.
#[utoipa::path(get, path = "/v1/issues/{id}", params(("id" = Uuid, Path)),
    responses((status = 200, body = Issue), (status = 404, body = ErrorBody)))]
async fn get_issue(r: R, t: Tenant, id: web::Path<Uuid>) -> Result<HttpResponse, ApiError> {
    let i = first(r.read(&t.0, data::by_id::<asset_issues::Entity>(*id)).await?, "issue")?;
    Ok(HttpResponse::Ok().json(Issue::from(i)))
}

/// Role: `technician`.
#[utoipa::path(patch, path = "/v1/issues/{id}", params(("id" = Uuid, Path)), request_body = UpdateIssue,
    responses((status = 200, body = Issue), (status = 404, body = ErrorBody)))]
async fn update_issue(
    r: R,
    t: Tenant,
    id: web::Path<Uuid>,
    body: web::Json<UpdateIssue>,
) -> Result<HttpResponse, ApiError> {
    t.needs(Role::Technician)?;
    let b = body.into_inner();
    let tx = enter(&r, &t).await?;
    let mut m =
        tx.get::<asset_issues::Entity>(*id).await?.ok_or_else(|| ApiError::not_found("issue"))?.into_active_model();
    if let Some(v) = b.title {
        m.title = Set(text("title", &v, 200)?);
    }
    if let Some(v) = b.description {
        m.description = Set(optional_text("description", &v, 10_000)?);
    }
    if let Some(v) = b.status {
        m.status = Set(wire(v));
    }
    if let Some(v) = b.priority {
        m.priority = Set(wire(v));
    }
    m.updated_at = Set(Utc::now());
    let i = tx.update(m).await.map_err(db_error)?.ok_or_else(|| ApiError::not_found("issue"))?;
    tx.commit().await?;
    Ok(HttpResponse::Ok().json(Issue::from(i)))
}

/// Role: `manager`.
#[utoipa::path(delete, path = "/v1/issues/{id}", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_issue(r: R, t: Tenant, id: web::Path<Uuid>) -> Result<HttpResponse, ApiError> {
    t.needs(Role::Manager)?;
    let tx = enter(&r, &t).await?;
    if !tx.delete::<asset_issues::Entity>(*id).await? {
        return Err(ApiError::not_found("issue"));
    }
    tx.commit().await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The error statuses every operation documents (see [`ErrorStatuses`](tenantry_core::web::ErrorStatuses)).
const APP_ERRORS: tenantry_core::web::ErrorStatuses =
    tenantry_core::web::ErrorStatuses { rate_limited: true, relays_backends: false };

#[derive(OpenApi)]
#[openapi(
    info(title = "Tenantry app API"),
    paths(
        whoami,
        me,
        users,
        create_asset,
        list_assets,
        get_asset,
        asset_by_tag,
        update_asset,
        delete_asset,
        create_schedule,
        list_schedules,
        due_schedules,
        update_schedule,
        delete_schedule,
        create_issue,
        list_issues,
        get_issue,
        update_issue,
        delete_issue
    ),
    components(schemas(ErrorBody)),
    modifiers(&APP_ERRORS)
)]
pub struct AppApiDoc;

/// Prometheus text: requests by route, status and tier with latencies, the
/// resolver's caches, pools, connections, budget and limit rejections.
async fn metrics(r: R, http: Option<web::Data<HttpMetrics>>) -> HttpResponse {
    let mut body = http.map(|m| m.encode()).unwrap_or_default();
    body.push_str(&r.metrics());
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(body)
}

/// Ready to serve: the registry answers and its LISTEN connection is up.
async fn readyz(r: R) -> HttpResponse {
    tenantry_core::web::readiness(r.readiness().await)
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json(AppApiDoc::openapi())
}

/// The app routes, for embedding in an `App`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    configure_extractors(cfg);
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/openapi.json", web::get().to(openapi))
        .service(
            web::scope("/v1")
                .route("/tenant", web::get().to(whoami))
                .route("/me", web::get().to(me))
                .route("/users", web::get().to(users))
                .route("/assets", web::post().to(create_asset))
                .route("/assets", web::get().to(list_assets))
                .route("/assets/by-tag/{tag}", web::get().to(asset_by_tag))
                .route("/assets/{id}", web::get().to(get_asset))
                .route("/assets/{id}", web::patch().to(update_asset))
                .route("/assets/{id}", web::delete().to(delete_asset))
                .route("/assets/{id}/maintenance-schedules", web::post().to(create_schedule))
                .route("/assets/{id}/maintenance-schedules", web::get().to(list_schedules))
                .route("/assets/{id}/issues", web::post().to(create_issue))
                .route("/maintenance-schedules/due", web::get().to(due_schedules))
                .route("/maintenance-schedules/{id}", web::patch().to(update_schedule))
                .route("/maintenance-schedules/{id}", web::delete().to(delete_schedule))
                .route("/issues", web::get().to(list_issues))
                .route("/issues/{id}", web::get().to(get_issue))
                .route("/issues/{id}", web::patch().to(update_issue))
                .route("/issues/{id}", web::delete().to(delete_issue)),
        );
}

/// Root span of every app request, with the fields the resolver fills in.
pub struct TenantSpan;

impl RootSpanBuilder for TenantSpan {
    fn on_request_start(request: &actix_web::dev::ServiceRequest) -> tracing::Span {
        tracing_actix_web::root_span!(
            request,
            tenant_id = tracing::field::Empty,
            user = tracing::field::Empty,
            tier = tracing::field::Empty,
            backend = tracing::field::Empty
        )
    }

    fn on_request_end<B: actix_web::body::MessageBody>(
        span: tracing::Span,
        outcome: &Result<actix_web::dev::ServiceResponse<B>, actix_web::Error>,
    ) {
        tracing_actix_web::DefaultRootSpanBuilder::on_request_end(span, outcome);
    }
}

/// The benchmark baselines' static pools (see `AppConfig::baseline`).
#[derive(Clone)]
pub struct BaselinePool {
    /// A role without row-level security.
    pub plain: sea_orm::DatabaseConnection,
    /// The app role, for the isolated baseline.
    pub isolated: Option<sea_orm::DatabaseConnection>,
}

#[derive(Deserialize)]
pub struct BaselineQuery {
    pub tenant: Uuid,
    /// The tenant's placement epoch (the isolated baseline only).
    #[serde(default)]
    pub epoch: i64,
}

/// Benchmark baseline: the routed `GET /v1/assets/{id}` minus routing, RLS and
/// the transaction (see `AppConfig::baseline`).
async fn baseline_get_asset(
    pool: web::Data<BaselinePool>,
    id: web::Path<Uuid>,
    q: web::Query<BaselineQuery>,
) -> Result<HttpResponse, ApiError> {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let asset = assets::Entity::find()
        .filter(assets::Column::TenantId.eq(q.tenant))
        .filter(assets::Column::Id.eq(*id))
        .one(&pool.plain)
        .await?
        .ok_or_else(|| ApiError::not_found("asset"))?;
    Ok(HttpResponse::Ok().json(Asset::from(asset)))
}

/// Benchmark baseline: the routed read's own statement (the gate, forced RLS)
/// on one static pool of the app role: the routed path minus the routing.
async fn isolated_get_asset(
    pool: web::Data<BaselinePool>,
    resolver: web::Data<Resolver>,
    id: web::Path<Uuid>,
    q: web::Query<BaselineQuery>,
) -> Result<HttpResponse, ApiError> {
    let Some(db) = &pool.isolated else { return Err(ApiError::not_found("route")) };
    let conn = db.get_postgres_connection_pool().acquire().await.map_err(|e| ApiError::internal(&e))?;
    let select = || data::by_id::<assets::Entity>(*id)(crate::scope::scoped(q.tenant));
    let schema = tenantry_core::TENANT_SCHEMA_LATEST;
    let rows = crate::scope::read_once(conn, (q.tenant, q.epoch), select, schema, resolver.gate())
        .await
        .map_err(|_| ApiError::internal(&"isolated baseline: the read was refused"))?;
    let asset = first(rows, "asset")?;
    Ok(HttpResponse::Ok().json(Asset::from(asset)))
}

/// Serves the app API on `listener` until stopped.
pub fn server(
    resolver: Resolver,
    listener: TcpListener,
    workers: usize,
    baseline: Option<BaselinePool>,
    drain_secs: u64,
) -> std::io::Result<Server> {
    let resolver = web::Data::new(resolver);
    let baseline = baseline.map(web::Data::new);
    let http_metrics = web::Data::from(HttpMetrics::new("tenantry_app"));
    Ok(HttpServer::new(move || {
        let app = actix_web::App::new()
            .wrap(actix_web::middleware::from_fn(tenantry_core::web::refuse_nul))
            .wrap(actix_web::middleware::from_fn(crate::usage::record))
            .wrap(actix_web::middleware::from_fn(tenantry_core::metrics::record))
            .wrap(actix_web::middleware::from_fn(tenantry_core::web::request_id_header))
            .wrap(TracingLogger::<TenantSpan>::new())
            .app_data(resolver.clone())
            .app_data(http_metrics.clone())
            .configure(routes)
            .default_service(web::to(no_route));
        match &baseline {
            Some(pool) => app
                .app_data(pool.clone())
                .route("/bench/baseline/assets/{id}", web::get().to(baseline_get_asset))
                .route("/bench/isolated/assets/{id}", web::get().to(isolated_get_asset)),
            None => app,
        }
    })
    .workers(workers.max(1))
    .shutdown_timeout(drain_secs)
    .listen(listener)?
    .run())
}
