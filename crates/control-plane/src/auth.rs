//! Who may use the admin listener ([`Admin`]): a member of staff signed in
//! by the operator's identity provider (a bearer JWT, `staff.rs`), holding
//! the role the route needs; or the shared admin token (automation and
//! break-glass, the actor `admin-token`, every role) unless it is switched
//! off. Also the comparison the console's sign-in and CSRF checks share.

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use futures::future::LocalBoxFuture;
use secrecy::ExposeSecret;

use tenantry_core::web::{ApiError, bearer};

use crate::plane::ControlPlane;
use crate::staff::{StaffPerson, StaffRole, route_role};

/// An authenticated administrator holding the route's role; `actor` is what
/// the audit log records.
pub struct Admin {
    pub actor: String,
    /// The member of staff, or none for the admin token.
    pub person: Option<StaffPerson>,
}

impl Admin {
    /// Whether the caller holds `role` (see [`crate::staff::holds`]).
    pub fn holds(&self, role: StaffRole) -> bool {
        self.person.as_ref().is_none_or(|p| crate::staff::holds(&p.roles, role))
    }

    /// 403 `forbidden` naming the staff role needed, unless held.
    pub fn needs(&self, role: StaffRole) -> Result<(), ApiError> {
        match &self.person {
            Some(p) if !crate::staff::holds(&p.roles, role) => {
                Err(ApiError::forbidden(crate::staff::lacking(&p.roles, role)))
            }
            _ => Ok(()),
        }
    }
}

/// Whether `bearer` is shaped like a JWT (three base64url parts).
fn is_jwt(bearer: &str) -> bool {
    bearer.split('.').count() == 3
}

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let cp = req.app_data::<web::Data<ControlPlane>>().cloned();
        let given = bearer(req).map(str::to_string);
        let needed = route_role(req.method().as_str(), req.match_pattern().as_deref().unwrap_or(""));
        let span = {
            use actix_web::HttpMessage;
            req.extensions().get::<tracing_actix_web::RootSpan>().map(|s| (*s).clone())
        };
        Box::pin(async move {
            let cp = cp.ok_or_else(|| ApiError::internal(&"control plane missing from app data"))?;
            let given = given
                .ok_or_else(|| ApiError::unauthorized("send `Authorization: Bearer <staff token or admin token>`"))?;
            let expected = cp.config().admin_token.expose_secret().as_bytes();
            let admin = if constant_time_eq(given.as_bytes(), expected) {
                if !cp.config().admin_token_enabled {
                    return Err(ApiError::unauthorized("the admin token is switched off on this control plane"));
                }
                Admin { actor: "admin-token".into(), person: None }
            } else if let (true, Some(staff)) = (is_jwt(&given), cp.staff.as_ref()) {
                let person = staff.verify(&given).await?;
                if let Some(span) = &span {
                    span.record("user", person.subject.as_str());
                }
                Admin { actor: person.actor(), person: Some(person) }
            } else {
                return Err(ApiError::unauthorized("missing or invalid admin token"));
            };
            admin.needs(needed)?;
            Ok(admin)
        })
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
