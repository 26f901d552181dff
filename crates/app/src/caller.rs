//! Who a request is: the `Tenant` extractor of every `/v1` route. A bearer
//! API key (`tnry_...`) is its tenant's admin; a bearer JWT is a person
//! signed in by one of the tenant's identity providers (`tokens.rs`), with
//! the role their claims map to. The tenant's status is checked, its
//! in-flight slot taken, and the request's span and metrics tagged.

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use futures::future::LocalBoxFuture;

use tenantry_core::TenantStatus;
use tenantry_core::identity::Role;
use tenantry_core::registry::KeyOwner;
use tenantry_core::web::{ApiError, bearer};

use crate::Resolver;

/// The authenticated tenant of a request, admitted under its limits (the
/// concurrency permit, if any, is held until the request ends), and who is
/// asking: an API key's holder or a person signed in by the tenant's
/// identity provider.
pub struct Tenant(
    pub std::sync::Arc<KeyOwner>,
    // Held for its Drop: releases the tenant's in-flight slot when the request ends.
    #[allow(dead_code)] Option<tokio::sync::OwnedSemaphorePermit>,
    pub Caller,
);

/// Who is asking, with which role: an API key's holder, or the person a
/// token signed in (shared with the token cache, not copied per request).
#[derive(Debug, Clone)]
pub struct Caller {
    pub person: Option<std::sync::Arc<crate::tokens::Person>>,
    pub role: Role,
}

impl Caller {
    /// `api-key`, or the token's `sub`.
    pub fn subject(&self) -> &str {
        self.person.as_ref().map_or("api-key", |p| p.subject.as_str())
    }
}

impl Tenant {
    /// 403 `forbidden` naming the role needed, unless the caller holds it.
    pub(crate) fn needs(&self, role: Role) -> Result<(), ApiError> {
        if self.2.role >= role {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "this needs the `{}` role; you are a `{}`",
            role.as_str(),
            self.2.role.as_str()
        )))
    }
}

impl FromRequest for Tenant {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let resolver = req.app_data::<web::Data<Resolver>>().cloned();
        let key = bearer(req).map(str::to_string);
        let wanted = req.headers().get("x-tenant").and_then(|v| v.to_str().ok()).map(str::to_string);
        let req = req.clone();
        Box::pin(async move {
            let resolver = resolver.ok_or_else(|| ApiError::internal(&"resolver missing from app data"))?;
            let key = key.ok_or_else(|| {
                ApiError::unauthorized("send `Authorization: Bearer <API key or identity provider token>`")
            })?;
            let (owner, caller) = if crate::tokens::Tokens::is_token(&key) {
                let (owner, p) = resolver.sign_in(&key, wanted.as_deref()).await?;
                (owner, Caller { role: p.role, person: Some(p) })
            } else {
                let owner = resolver.authenticate(&key).await?;
                let role = owner.key_role;
                (owner, Caller { person: None, role })
            };
            match owner.status {
                TenantStatus::Active => {}
                TenantStatus::Provisioning => {
                    return Err(ApiError::unavailable("tenant_provisioning", "the tenant is being provisioned", 2));
                }
                TenantStatus::Suspended => {
                    return Err(ApiError::new(
                        actix_web::http::StatusCode::FORBIDDEN,
                        "tenant_suspended",
                        "the tenant is suspended",
                    ));
                }
                TenantStatus::Reverted => {
                    return Err(ApiError::new(
                        actix_web::http::StatusCode::FORBIDDEN,
                        "tenant_reverted",
                        "the tenant went back to the legacy system it was adopted from",
                    ));
                }
                // From the moment an erasure starts the tenant is gone, as if it
                // had never existed.
                TenantStatus::Erasing | TenantStatus::Erased => {
                    return Err(ApiError::not_found("tenant"));
                }
                _ => {
                    return Err(ApiError::unauthorized("missing, unknown or revoked API key"));
                }
            }
            let span = tracing::Span::current();
            span.record("tenant_id", tracing::field::display(owner.tenant_id));
            span.record("user", caller.subject());
            span.record("tier", owner.tier.as_str());
            {
                use actix_web::HttpMessage;
                let mut ext = req.extensions_mut();
                ext.insert(tenantry_core::metrics::TierLabel(owner.tier.as_str()));
                ext.insert(crate::usage::TenantTag(owner.tenant_id));
            }
            let permit = resolver.admit(&owner)?;
            Ok(Tenant(owner, permit, caller))
        })
    }
}
