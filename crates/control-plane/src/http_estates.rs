//! The admin API's legacy-estate routes: register an estate, list its
//! sources, dry-run, adopt one source or all, release. Part of
//! [`AdminApiDoc`](crate::http::AdminApiDoc).

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use tenantry_core::Tier;
use tenantry_core::web::{ApiError, ErrorBody};

use crate::auth::Admin;
use crate::plane::ControlPlane;
use crate::registry::OperationView;

type Cp = web::Data<ControlPlane>;

/// Register a legacy estate (schema- or database-per-tenant) to adopt tenants
/// from. Its connection and what adoption needs from it (logical WAL, the
/// right to replicate, to create a publication and a slot) are checked at
/// once: 422 names what is missing. The password is never returned.
#[utoipa::path(post, path = "/v1/estates", request_body = crate::estates::NewEstate,
    responses((status = 201, body = crate::estates::EstateView), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(name = %body.name))]
pub(crate) async fn add_estate(
    cp: Cp,
    admin: Admin,
    body: web::Json<crate::estates::NewEstate>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Created().json(cp.add_estate(&admin.actor, body.into_inner()).await?))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EstateList {
    pub estates: Vec<crate::estates::EstateView>,
}

/// Every registered estate.
#[utoipa::path(get, path = "/v1/estates", responses((status = 200, body = EstateList)))]
#[tracing::instrument(skip_all)]
pub(crate) async fn list_estates(cp: Cp, _admin: Admin) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(EstateList { estates: cp.estates().await? }))
}

/// One estate.
#[utoipa::path(get, path = "/v1/estates/{id}", params(("id" = Uuid, Path)),
    responses((status = 200, body = crate::estates::EstateView), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(id = %id))]
pub(crate) async fn get_estate(cp: Cp, _admin: Admin, id: web::Path<Uuid>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(cp.estate(*id).await?.view))
}

/// Forget an estate (refused while one of its adoptions is in flight).
#[utoipa::path(delete, path = "/v1/estates/{id}", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(id = %id))]
pub(crate) async fn remove_estate(cp: Cp, admin: Admin, id: web::Path<Uuid>) -> Result<HttpResponse, ApiError> {
    cp.remove_estate(&admin.actor, *id).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SourceList {
    pub sources: Vec<crate::estates::sources::Source>,
}

/// The estate's sources (schemas or databases matching its pattern): tables
/// and how each maps, rows and bytes, problems, state.
#[utoipa::path(get, path = "/v1/estates/{id}/sources", params(("id" = Uuid, Path)),
    responses((status = 200, body = SourceList), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(id = %id))]
pub(crate) async fn estate_sources(cp: Cp, _admin: Admin, id: web::Path<Uuid>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(SourceList { sources: cp.estate_sources(*id).await? }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PlanParams {
    /// The schema (or database) to adopt.
    pub source: String,
    /// `shared` or `dedicated`.
    pub tier: Tier,
    /// A shared pool to land on (default: the emptiest).
    pub target: Option<Uuid>,
}

/// The dry run of adopting one source: rows and bytes per table, checks,
/// expected copy time and write pause.
#[utoipa::path(get, path = "/v1/estates/{id}/adoption-plan", params(("id" = Uuid, Path), PlanParams),
    responses((status = 200, body = crate::estates::sources::AdoptionPlan), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(id = %id))]
pub(crate) async fn adoption_plan(
    cp: Cp,
    _admin: Admin,
    id: web::Path<Uuid>,
    q: web::Query<PlanParams>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(cp.adoption_plan(*id, &q.source, q.tier, q.target).await?))
}

/// Adopt one source: the tenant exists at once (503 `tenant_provisioning`
/// until the cutover; keys can be issued), the operation copies, catches up,
/// fences the legacy source, verifies and places the tenant.
#[utoipa::path(post, path = "/v1/estates/{id}/adopt", params(("id" = Uuid, Path)),
    request_body = crate::estates::request::AdoptRequest,
    responses((status = 202, body = OperationView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(id = %id, source = %body.source))]
pub(crate) async fn adopt(
    cp: Cp,
    admin: Admin,
    id: web::Path<Uuid>,
    body: web::Json<crate::estates::request::AdoptRequest>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Accepted().json(cp.adopt(&admin.actor, *id, body.into_inner()).await?))
}

/// Adopt every source not adopted yet, at most `concurrency` at once; a
/// source that cannot be queued is reported and the others go on.
#[utoipa::path(post, path = "/v1/estates/{id}/adopt-all", params(("id" = Uuid, Path)),
    request_body = crate::estates::request::AdoptAllRequest,
    responses((status = 202, body = crate::estates::request::AdoptAll), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(id = %id))]
pub(crate) async fn adopt_all(
    cp: Cp,
    admin: Admin,
    id: web::Path<Uuid>,
    body: web::Json<crate::estates::request::AdoptAllRequest>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Accepted().json(cp.adopt_all(&admin.actor, *id, body.into_inner()).await?))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct RevertPlanParams {
    /// The adopted source.
    pub source: String,
}

/// The dry run of a revert: whether every row made or changed in Tenantry
/// since the cutover can be written back to the legacy source, and which
/// cannot (a legacy column `NOT NULL` without a default they have no value
/// for). A revert of such rows is refused with the same 422 before the
/// tenant is fenced.
#[utoipa::path(get, path = "/v1/estates/{id}/revert-plan", params(("id" = Uuid, Path), RevertPlanParams),
    responses((status = 200, body = crate::estates::request::RevertPlan), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(id = %id))]
pub(crate) async fn revert_plan(
    cp: Cp,
    _admin: Admin,
    id: web::Path<Uuid>,
    q: web::Query<RevertPlanParams>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(cp.revert_plan(*id, &q.source).await?))
}

/// Give an adopted source back to its legacy system (before release): the
/// tenant's changes since the cutover are applied back, the legacy source
/// takes writes again, the tenant stops serving (`reverted`).
#[utoipa::path(post, path = "/v1/estates/{id}/revert", params(("id" = Uuid, Path)),
    request_body = crate::estates::request::RevertRequest,
    responses((status = 202, body = OperationView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(id = %id, source = %body.source))]
pub(crate) async fn revert(
    cp: Cp,
    admin: Admin,
    id: web::Path<Uuid>,
    body: web::Json<crate::estates::request::RevertRequest>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Accepted().json(cp.revert_source(&admin.actor, *id, body.into_inner()).await?))
}

/// End the way back for an adopted source; with `drop`, the legacy schema
/// (or database) is dropped (staff role `admin`).
#[utoipa::path(post, path = "/v1/estates/{id}/release", params(("id" = Uuid, Path)),
    request_body = crate::estates::request::ReleaseRequest,
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(id = %id, source = %body.source))]
pub(crate) async fn release(
    cp: Cp,
    admin: Admin,
    id: web::Path<Uuid>,
    body: web::Json<crate::estates::request::ReleaseRequest>,
) -> Result<HttpResponse, ApiError> {
    if body.drop {
        admin.needs(crate::staff::StaffRole::Admin)?;
    }
    cp.release_source(&admin.actor, *id, body.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The estate routes, inside the admin API's `/v1` scope.
pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/estates", web::post().to(add_estate))
        .route("/estates", web::get().to(list_estates))
        .route("/estates/{id}", web::get().to(get_estate))
        .route("/estates/{id}", web::delete().to(remove_estate))
        .route("/estates/{id}/sources", web::get().to(estate_sources))
        .route("/estates/{id}/adoption-plan", web::get().to(adoption_plan))
        .route("/estates/{id}/adopt", web::post().to(adopt))
        .route("/estates/{id}/adopt-all", web::post().to(adopt_all))
        .route("/estates/{id}/revert-plan", web::get().to(revert_plan))
        .route("/estates/{id}/revert", web::post().to(revert))
        .route("/estates/{id}/release", web::post().to(release));
}
