//! Console sign-in: a member of staff through the operator's identity provider
//! (`sso.rs`; the session holds their staff roles and names them in the
//! audit), or the admin token plus a name (every role). The
//! browser keeps a random 256-bit id in an HttpOnly, SameSite=Strict cookie;
//! the registry keeps its SHA-256, the actor (the person, or `admin-token
//! (console)`: what the audit log records), a per-session CSRF token, and an expiry. Signing out revokes
//! the row, so a copied cookie stops working at once.

use std::future::Future;
use std::pin::Pin;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use rand::RngCore;
use sea_orm::{ConnectionTrait, FromQueryResult};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::plane::ControlPlane;
use crate::plane::SIGN_IN_ATTEMPTS;
use crate::registry::audit;
use crate::registry::stmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use actix_web::http::StatusCode;
use tenantry_core::web::ApiError;

/// Why a console request did not render its page.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("sign in first")]
    SignIn { next: String },
    #[error("this form has expired or did not come from the console: reload the page and try again")]
    Csrf,
    #[error("{1}")]
    Status(StatusCode, String),
    #[error("{0}")]
    Internal(String),
}

impl From<Error> for ConsoleError {
    fn from(e: Error) -> Self {
        let api = ApiError::from(e);
        ConsoleError::Status(api.status, api.message)
    }
}

pub const COOKIE: &str = "tenantry_session";
/// The actor of a console session opened with the admin token.
pub const TOKEN_ACTOR: &str = "admin-token (console)";
/// A session lasts this long from sign-in.
pub const SESSION_HOURS: i64 = 12;

/// A signed-in console user.
#[derive(Debug, Clone, FromQueryResult)]
pub struct Session {
    pub actor: String,
    pub csrf: String,
    id_hash: Vec<u8>,
    /// A member of staff's roles; none for the admin token (every role).
    roles: Option<Vec<String>>,
}

impl Session {
    /// The staff roles held, or none for an admin-token session.
    pub fn roles(&self) -> Option<Vec<crate::staff::StaffRole>> {
        self.roles.as_ref().map(|r| r.iter().filter_map(|r| crate::staff::StaffRole::parse(r)).collect())
    }

    /// 403 naming the staff role needed, unless held.
    pub fn needs(&self, role: crate::staff::StaffRole) -> Result<(), ConsoleError> {
        match self.roles() {
            Some(roles) if !crate::staff::holds(&roles, role) => {
                Err(ConsoleError::Status(StatusCode::FORBIDDEN, crate::staff::lacking(&roles, role)))
            }
            _ => Ok(()),
        }
    }

    /// The CSRF token of a submitted form must be this session's.
    pub fn check(&self, presented: &str) -> Result<(), ConsoleError> {
        if crate::auth::constant_time_eq(presented.as_bytes(), self.csrf.as_bytes()) {
            Ok(())
        } else {
            Err(ConsoleError::Csrf)
        }
    }

    /// The name typed at sign-in.
    pub fn name(&self) -> &str {
        self.actor.strip_prefix("console:").unwrap_or(&self.actor)
    }
}

pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

pub(crate) fn hash(cookie: &str) -> Vec<u8> {
    Sha256::digest(cookie.as_bytes()).to_vec()
}

/// 1-64 of letters, digits and `.`, `_`, `-`, `@`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || ".-_@".contains(c))
}

/// What identifies the admin token a session signed in with, never the token.
fn fingerprint(token: &[u8]) -> Vec<u8> {
    Sha256::new().chain_update(b"tenantry console session|").chain_update(token).finalize().to_vec()
}

impl ControlPlane {
    /// Checks the admin token and opens a session for `name`: the cookie value
    /// and the session. A refusal is counted (`tenantry_admin_console_sign_ins_refused_total`)
    /// and logged with the client's address, never audited under the name it
    /// gave (which nobody verified); a client address gets
    /// [`SIGN_IN_ATTEMPTS`] attempts a minute.
    pub async fn console_sign_in(
        &self,
        token: &str,
        name: &str,
        client: Option<std::net::IpAddr>,
    ) -> Result<(String, Session), Error> {
        if let Some(ip) = client {
            let attempts = self.sign_in_attempts.get_with(ip, async { Arc::new(AtomicU32::new(0)) }).await;
            if attempts.fetch_add(1, Ordering::Relaxed) >= SIGN_IN_ATTEMPTS {
                return Err(Error::Busy {
                    code: "too_many_sign_ins",
                    message: "too many sign-in attempts from this address; wait a minute".into(),
                });
            }
        }
        if !valid_name(name) {
            return Err(Error::invalid("invalid_name", "your name: 1-64 letters, digits, `.`, `_`, `-` or `@`"));
        }
        let expected = self.config().admin_token.expose_secret().as_bytes().to_vec();
        if !self.config().admin_token_enabled {
            return Err(Error::Invalid {
                code: "admin_token_off",
                message: "the admin token is switched off on this control plane".into(),
            });
        }
        if !crate::auth::constant_time_eq(token.trim().as_bytes(), &expected) {
            self.sign_ins_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(client = ?client, "console sign-in refused: not the admin token");
            // Slows guessing down; the token's entropy does the rest.
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            return Err(Error::Invalid { code: "wrong_token", message: "that is not the admin token".into() });
        }
        // The admin token's session is the token's actor, never the name
        // typed beside it (which the sign-in's audit entry keeps, as given).
        let actor = TOKEN_ACTOR.to_string();
        let cookie = random_token();
        let session = Session { actor: actor.clone(), csrf: random_token(), id_hash: hash(&cookie), roles: None };
        self.registry()
            .execute_raw(stmt(
                "INSERT INTO console_sessions (id_hash, actor, csrf, expires_at, token_fingerprint) \
                 VALUES ($1, $2, $3, now() + make_interval(hours => $4), $5)",
                vec![
                    session.id_hash.clone().into(),
                    actor.clone().into(),
                    session.csrf.clone().into(),
                    (SESSION_HOURS as i32).into(),
                    fingerprint(&expected).into(),
                ],
            ))
            .await?;
        // Expired sessions are of no use to anyone.
        self.registry()
            .execute_raw(stmt("DELETE FROM console_sessions WHERE expires_at < now() - interval '1 day'", vec![]))
            .await?;
        audit(self.registry(), &actor, "console.sign_in", None, json!({"name_given": name})).await?;
        Ok((cookie, session))
    }

    /// Opens a session for a member of staff the provider signed in (the
    /// sign-in itself is `sso.rs`): the cookie value and the session.
    pub async fn console_staff_session(&self, person: &crate::staff::StaffPerson) -> Result<(String, Session), Error> {
        let cookie = random_token();
        let roles: Vec<String> = person.roles.iter().map(|r| r.as_str().to_string()).collect();
        let session =
            Session { actor: person.actor(), csrf: random_token(), id_hash: hash(&cookie), roles: Some(roles.clone()) };
        self.registry()
            .execute_raw(stmt(
                "INSERT INTO console_sessions (id_hash, actor, csrf, expires_at, roles) \
                 VALUES ($1, $2, $3, now() + make_interval(hours => $4), $5)",
                vec![
                    session.id_hash.clone().into(),
                    session.actor.clone().into(),
                    session.csrf.clone().into(),
                    (SESSION_HOURS as i32).into(),
                    roles.into(),
                ],
            ))
            .await?;
        audit(self.registry(), &session.actor, "console.sign_in", None, json!({"by": "identity provider"})).await?;
        Ok((cookie, session))
    }

    /// Refused console sign-ins since this process started.
    pub fn console_sign_ins_refused(&self) -> u64 {
        self.sign_ins_refused.load(Ordering::Relaxed)
    }

    /// The live session a cookie names, if any.
    pub async fn console_session(&self, cookie: &str) -> Result<Option<Session>, Error> {
        // Live: not revoked, not expired, signed in with today's admin token,
        // used within the idle time (and so kept alive, once a minute at most).
        let token = fingerprint(self.config().admin_token.expose_secret().as_bytes());
        Ok(Session::find_by_statement(stmt(
            "UPDATE console_sessions SET last_seen_at = CASE \
                 WHEN last_seen_at < now() - interval '1 minute' THEN now() ELSE last_seen_at END \
             WHERE id_hash = $1 AND revoked_at IS NULL AND expires_at > now() \
               AND (roles IS NOT NULL OR (token_fingerprint = $2 AND $4)) \
               AND last_seen_at > now() - make_interval(mins => $3) \
             RETURNING actor, csrf, id_hash, roles",
            vec![
                hash(cookie).into(),
                token.into(),
                (self.config().console_idle_minutes as i32).into(),
                self.config().admin_token_enabled.into(),
            ],
        ))
        .one(self.registry())
        .await?)
    }

    pub async fn console_sign_out(&self, session: &Session) -> Result<(), Error> {
        self.registry()
            .execute_raw(stmt(
                "UPDATE console_sessions SET revoked_at = now() WHERE id_hash = $1",
                vec![session.id_hash.clone().into()],
            ))
            .await?;
        audit(self.registry(), &session.actor, "console.sign_out", None, json!({})).await?;
        Ok(())
    }
}

impl FromRequest for Session {
    type Error = ConsoleError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ConsoleError>>>>;

    /// Signed out (no cookie, unknown, revoked or expired): back to sign-in,
    /// then on to where the user was going.
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let cp = req.app_data::<web::Data<ControlPlane>>().cloned();
        let cookie = req.cookie(COOKIE).map(|c| c.value().to_string());
        let needed = crate::staff::route_role(req.method().as_str(), req.match_pattern().as_deref().unwrap_or(""));
        let next = if req.method() == actix_web::http::Method::GET {
            req.uri().path_and_query().map_or_else(|| "/console".to_string(), |p| p.as_str().to_string())
        } else {
            "/console".to_string()
        };
        Box::pin(async move {
            let cp = cp.ok_or_else(|| ConsoleError::Internal("control plane missing".into()))?;
            let Some(cookie) = cookie else { return Err(ConsoleError::SignIn { next }) };
            match cp.console_session(&cookie).await? {
                Some(s) => {
                    s.needs(needed)?;
                    Ok(s)
                }
                None => Err(ConsoleError::SignIn { next }),
            }
        })
    }
}

/// Only paths inside the console (never another site) after sign-in.
pub(crate) fn safe_next(next: &str) -> &str {
    let inside = next.starts_with("/console") && !next.starts_with("//") && !next.contains('\\');
    if inside && !next.chars().any(char::is_control) { next } else { "/console" }
}

pub(crate) fn is_tls(req: &HttpRequest) -> bool {
    req.connection_info().scheme() == "https"
}

#[derive(Deserialize)]
pub(crate) struct Next {
    pub(crate) next: Option<String>,
}

/// The session cookie: HttpOnly, SameSite=Strict, `Secure` unless turned
/// off for plain HTTP.
pub(crate) fn session_cookie(cp: &ControlPlane, req: &HttpRequest, value: String) -> Cookie<'static> {
    Cookie::build(COOKIE, value)
        .path("/console")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(cp.config().console_secure_cookie || is_tls(req))
        .max_age(actix_web::cookie::time::Duration::hours(SESSION_HOURS))
        .finish()
}
