//! The admin API's people routes: a tenant's OIDC providers put, listed,
//! removed and tested; its users listed and one erased. Part of [`AdminApiDoc`](crate::http::AdminApiDoc).

use actix_web::{HttpResponse, web};
use serde::Serialize;

use tenantry_core::identity::ProviderConfig;
use tenantry_core::web::{ApiError, ErrorBody};

use crate::auth::Admin;
use crate::identity::{IdentityProvider, ProviderTest};
use crate::plane::ControlPlane;
use tenantry_core::registry::{UserList, UserPage};

type Cp = web::Data<ControlPlane>;

/// Create (201) or replace (200) one of the tenant's identity providers:
/// the OIDC issuer whose tokens sign the tenant's users in to the app API.
/// 409 when the issuer (with this organisation) already signs another
/// tenant in, or this tenant's other provider names it.
#[utoipa::path(put, path = "/v1/tenants/{tenant}/identity-providers/{name}",
    params(("tenant" = String, Path, description = "id or slug"), ("name" = String, Path)),
    request_body = ProviderConfig,
    responses((status = 200, body = IdentityProvider), (status = 201, body = IdentityProvider),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(name = %path.1))]
pub(crate) async fn put_provider(
    cp: Cp,
    admin: Admin,
    path: web::Path<(String, String)>,
    body: web::Json<ProviderConfig>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, name) = path.into_inner();
    let tenant = cp.tenant(&tenant).await?;
    let (view, created) = cp.put_identity_provider(&admin.actor, tenant.id, &name, body.into_inner()).await?;
    Ok(if created { HttpResponse::Created().json(view) } else { HttpResponse::Ok().json(view) })
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ProviderList {
    pub identity_providers: Vec<IdentityProvider>,
}

/// The tenant's identity providers.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/identity-providers",
    params(("tenant" = String, Path, description = "id or slug")),
    responses((status = 200, body = ProviderList), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub(crate) async fn list_providers(cp: Cp, _admin: Admin, tenant: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let tenant = cp.tenant(&tenant).await?;
    Ok(HttpResponse::Ok().json(ProviderList { identity_providers: cp.identity_providers(tenant.id).await? }))
}

/// Remove one of the tenant's identity providers: its users sign in no more.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/identity-providers/{name}",
    params(("tenant" = String, Path, description = "id or slug"), ("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(name = %path.1))]
pub(crate) async fn remove_provider(
    cp: Cp,
    admin: Admin,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, name) = path.into_inner();
    let tenant = cp.tenant(&tenant).await?;
    cp.remove_identity_provider(&admin.actor, tenant.id, &name).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Fetch the provider's discovery document and keys, and report what was
/// found (200 either way: `ok` says whether its tokens could be checked).
#[utoipa::path(post, path = "/v1/tenants/{tenant}/identity-providers/{name}/test",
    params(("tenant" = String, Path, description = "id or slug"), ("name" = String, Path)),
    responses((status = 200, body = ProviderTest), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(name = %path.1))]
pub(crate) async fn test_provider(
    cp: Cp,
    _admin: Admin,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, name) = path.into_inner();
    let tenant = cp.tenant(&tenant).await?;
    let provider = cp.identity_provider(tenant.id, &name).await?;
    Ok(HttpResponse::Ok().json(cp.test_identity_provider(&provider.config).await))
}

/// The people who signed in to the tenant (through its identity providers),
/// in id order, a page at a time.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/users",
    params(("tenant" = String, Path, description = "id or slug"), UserPage),
    responses((status = 200, body = UserList), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub(crate) async fn list_users(
    cp: Cp,
    _admin: Admin,
    tenant: web::Path<String>,
    page: web::Query<UserPage>,
) -> Result<HttpResponse, ApiError> {
    let tenant = cp.tenant(&tenant).await?;
    let limit = page.limit();
    let users = cp.tenant_users(tenant.id, page.after, limit).await?;
    Ok(HttpResponse::Ok().json(UserList::page(users, limit)))
}

/// Erase one person of the tenant: their user record and pending sign-ins
/// (the audit keeps their id only). They can sign in again while the
/// tenant's provider lets them.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/users/{id}",
    params(("tenant" = String, Path, description = "id or slug"), ("id" = uuid::Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user = %path.1))]
pub(crate) async fn erase_user(
    cp: Cp,
    admin: Admin,
    path: web::Path<(String, uuid::Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, user) = path.into_inner();
    let tenant = cp.tenant(&tenant).await?;
    cp.erase_user(&admin.actor, tenant.id, user).await?;
    Ok(HttpResponse::NoContent().finish())
}

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/tenants/{tenant}/identity-providers", web::get().to(list_providers))
        .route("/tenants/{tenant}/identity-providers/{name}", web::put().to(put_provider))
        .route("/tenants/{tenant}/identity-providers/{name}", web::delete().to(remove_provider))
        .route("/tenants/{tenant}/identity-providers/{name}/test", web::post().to(test_provider))
        .route("/tenants/{tenant}/users", web::get().to(list_users))
        .route("/tenants/{tenant}/users/{id}", web::delete().to(erase_user));
}
