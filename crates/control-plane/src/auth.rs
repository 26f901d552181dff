//! Who may use the admin listener: the admin API's bearer token
//! ([`Admin`]) and the comparison the console's sign-in and CSRF checks share.

use std::future::{Ready, ready};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use secrecy::ExposeSecret;

use tenantry_core::web::{ApiError, bearer};

use crate::plane::ControlPlane;

/// An authenticated administrator; `actor` is what the audit log records.
pub struct Admin {
    pub actor: String,
}

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let expected = req
            .app_data::<web::Data<ControlPlane>>()
            .map(|cp| cp.config().admin_token.expose_secret().as_bytes().to_vec());
        let ok = match (bearer(req), expected) {
            (Some(given), Some(expected)) => constant_time_eq(given.as_bytes(), &expected),
            _ => false,
        };
        ready(if ok {
            Ok(Admin { actor: "admin-token".into() })
        } else {
            Err(ApiError::unauthorized("missing or invalid admin token"))
        })
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
