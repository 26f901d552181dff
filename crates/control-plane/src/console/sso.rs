//! Staff sign in to the console through the operator's identity provider:
//! OpenID Connect's authorization code flow with PKCE (S256).
//!
//! `GET /console/sso/login` keeps a started sign-in in the registry
//! (`console_sign_ins`: hashes of its `state` and of a browser cookie it is
//! bound to, its PKCE verifier and nonce, where to go after; ten minutes) and
//! sends the browser to the provider. `GET /console/sso/callback` takes the
//! sign-in once (the right state, from the same browser, in time), exchanges
//! the code and verifier for tokens at the provider's token endpoint, checks
//! the ID token (signature, issuer, the console client as audience, expiry,
//! the nonce) and opens a session holding the person's staff roles; the
//! audit names the person. The session cookie is SameSite=Strict, which a
//! browser does not send on a navigation another site started, so the
//! callback answers with a page that moves on by itself (same-site).

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine as _;
use sea_orm::ConnectionTrait;
use secrecy::ExposeSecret;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::session::{ConsoleError, Next, hash, is_tls, random_token, safe_next, session_cookie};
use super::views::{html, page};
use crate::registry::stmt;

type Cp = web::Data<crate::plane::ControlPlane>;
type Page = Result<HttpResponse, ConsoleError>;

/// The cookie binding a started sign-in to its browser.
const BROWSER_COOKIE: &str = "tenantry_sso";
/// A started sign-in lasts this long.
const SIGN_IN_MINUTES: i32 = 10;

/// Whether staff can sign in through the provider here.
pub(crate) fn offered(cp: &crate::plane::ControlPlane) -> bool {
    cp.config().staff.as_ref().is_some_and(|s| s.client_id.is_some())
}

fn callback_url(req: &HttpRequest) -> String {
    let info = req.connection_info();
    format!("{}://{}/console/sso/callback", info.scheme(), info.host())
}

fn refused(status: StatusCode, why: impl Into<String>) -> ConsoleError {
    ConsoleError::Status(status, why.into())
}

/// `GET /console/sso/login?next=`: off to the provider.
pub(crate) async fn start(cp: Cp, req: HttpRequest, q: web::Query<Next>) -> Page {
    let staff = cp.staff.as_ref().filter(|_| offered(&cp)).ok_or_else(|| {
        refused(StatusCode::NOT_FOUND, "this control plane signs no staff in through an identity provider")
    })?;
    let (client, authorize, _) = staff.console_client().await.map_err(|e| {
        tracing::warn!(error = %e, "the staff identity provider cannot start a sign-in");
        refused(StatusCode::SERVICE_UNAVAILABLE, "the identity provider does not answer; try again shortly")
    })?;
    let (browser, state, verifier, nonce) = (random_token(), random_token(), random_token(), random_token());
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let next = safe_next(q.next.as_deref().unwrap_or("/console")).to_string();
    cp.registry()
        .execute_raw(stmt(
            "WITH gone AS (DELETE FROM console_sign_ins WHERE expires_at < now()) \
             INSERT INTO console_sign_ins (state_hash, browser_hash, verifier, nonce, next, expires_at) \
             VALUES ($1, $2, $3, $4, $5, now() + make_interval(mins => $6))",
            vec![
                hash(&state).into(),
                hash(&browser).into(),
                verifier.into(),
                nonce.clone().into(),
                next.into(),
                SIGN_IN_MINUTES.into(),
            ],
        ))
        .await
        .map_err(crate::error::Error::from)?;
    let mut url = url::Url::parse(&authorize).map_err(|e| ConsoleError::Internal(e.to_string()))?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &client)
        .append_pair("redirect_uri", &callback_url(&req))
        .append_pair("scope", "openid email profile")
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    // Lax: sent back on the provider's top-level redirect to the callback.
    let cookie = Cookie::build(BROWSER_COOKIE, browser)
        .path("/console/sso")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(cp.config().console_secure_cookie || is_tls(&req))
        .max_age(actix_web::cookie::time::Duration::minutes(SIGN_IN_MINUTES.into()))
        .finish();
    Ok(HttpResponse::SeeOther()
        .insert_header((actix_web::http::header::LOCATION, url.to_string()))
        .cookie(cookie)
        .finish())
}

#[derive(Deserialize)]
pub(crate) struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Tokens {
    id_token: String,
}

/// `GET /console/sso/callback?code&state`: the provider's answer.
pub(crate) async fn callback(cp: Cp, req: HttpRequest, q: web::Query<Callback>) -> Page {
    let staff = cp.staff.as_ref().filter(|_| offered(&cp)).ok_or_else(|| {
        refused(StatusCode::NOT_FOUND, "this control plane signs no staff in through an identity provider")
    })?;
    if let Some(e) = &q.error {
        return Err(refused(StatusCode::UNAUTHORIZED, format!("the identity provider refused the sign-in: {e}")));
    }
    let (Some(code), Some(state)) = (&q.code, &q.state) else {
        return Err(refused(StatusCode::BAD_REQUEST, "the provider's answer has no code or state"));
    };
    let browser = req.cookie(BROWSER_COOKIE).map(|c| c.value().to_string()).unwrap_or_default();
    let started = cp
        .registry()
        .query_one_raw(stmt(
            "DELETE FROM console_sign_ins WHERE state_hash = $1 AND browser_hash = $2 AND expires_at > now() \
             RETURNING verifier, nonce, next",
            vec![hash(state).into(), hash(&browser).into()],
        ))
        .await
        .map_err(crate::error::Error::from)?
        .ok_or_else(|| {
            refused(StatusCode::BAD_REQUEST, "this sign-in has expired or was not started in this browser: start again")
        })?;
    let get = |c: &str| started.try_get::<String>("", c).map_err(|e| ConsoleError::Internal(e.to_string()));
    let (verifier, nonce, next) = (get("verifier")?, get("nonce")?, get("next")?);
    let unavailable = |e: String| {
        tracing::warn!(error = %e, "the staff identity provider's token exchange failed");
        refused(StatusCode::BAD_GATEWAY, "the identity provider did not complete the sign-in; start again")
    };
    let (client, _, token_endpoint) = staff.console_client().await.map_err(unavailable)?;
    let redirect = callback_url(&req);
    let mut form =
        vec![("grant_type", "authorization_code"), ("code", code), ("redirect_uri", &redirect), ("client_id", &client)];
    form.push(("code_verifier", &verifier));
    let secret = staff.client_secret().map(|s| s.expose_secret().to_string());
    if let Some(secret) = &secret {
        form.push(("client_secret", secret));
    }
    let res = tenantry_core::identity::http_client()
        .post(&token_endpoint)
        .form(&form)
        .send()
        .await
        .map_err(|e| unavailable(e.without_url().to_string()))?;
    if !res.status().is_success() {
        return Err(unavailable(format!("the token endpoint answered {}", res.status())));
    }
    let tokens: Tokens = res.json().await.map_err(|e| unavailable(e.without_url().to_string()))?;
    let person = staff
        .verify_id_token(&tokens.id_token, &nonce)
        .await
        .map_err(|e| refused(StatusCode::UNAUTHORIZED, format!("the sign-in does not hold: {}", e.message)))?;
    if person.roles.is_empty() {
        return Err(refused(StatusCode::FORBIDDEN, "your account holds no staff role on this control plane"));
    }
    let (cookie, _) = cp.console_staff_session(&person).await?;
    let next = safe_next(&next).to_string();
    let markup = page(
        "Signed in",
        None,
        super::views::Nav::None,
        maud::html! {
            section.narrow {
                h1 { "Signed in" }
                p { "Signed in as " (person.email.as_deref().unwrap_or(&person.subject)) ". "
                    a #continue href=(next) { "Continue" } }
            }
        },
    );
    let mut res = html(StatusCode::OK, markup);
    res.headers_mut().insert(
        actix_web::http::header::REFRESH,
        actix_web::http::header::HeaderValue::from_str(&format!("0; url={next}"))
            .map_err(|e| ConsoleError::Internal(e.to_string()))?,
    );
    res.add_cookie(&session_cookie(&cp, &req, cookie)).map_err(|e| ConsoleError::Internal(e.to_string()))?;
    let mut gone = Cookie::build(BROWSER_COOKIE, "").path("/console/sso").finish();
    gone.make_removal();
    res.add_cookie(&gone).map_err(|e| ConsoleError::Internal(e.to_string()))?;
    Ok(res)
}
