//! Staff: the operator's own people, signed in to the admin API by a bearer
//! token of the operator's identity provider (`control_plane.staff`), each
//! holding the staff roles their claims map to. Every admin route needs one
//! role ([`ROUTE_ROLES`]; a read needs `viewer`), and the audit names the
//! verified person ([`StaffPerson::actor`]), never a typed name. The shared
//! admin token stays for automation and break-glass as its own actor,
//! `admin-token`, holding every role, and can be switched off
//! (`control_plane.admin_token_enabled = false`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use tenantry_core::identity::ProviderConfig;
use tenantry_core::keysets::{self, KeyError, KeySet, KeySets, LEEWAY_SECS, claim_values};
use tenantry_core::web::ApiError;

/// What a member of staff may do on the admin API. `viewer` reads; the
/// others each hold their own writes (and read); `admin` holds everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StaffRole {
    /// Reads: tenants, operations, usage, the audit log.
    Viewer,
    /// Creates tenants, promotes them, issues and revokes their API keys.
    SalesOps,
    /// Moves and demotes tenants; migrations, backends, estates, limits.
    Operator,
    /// Everything: erasure, identity providers and users, release with drop.
    Admin,
}

impl StaffRole {
    pub const ALL: [StaffRole; 4] = [StaffRole::Viewer, StaffRole::SalesOps, StaffRole::Operator, StaffRole::Admin];

    pub fn parse(s: &str) -> Option<StaffRole> {
        StaffRole::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StaffRole::Viewer => "viewer",
            StaffRole::SalesOps => "sales_ops",
            StaffRole::Operator => "operator",
            StaffRole::Admin => "admin",
        }
    }
}

/// The role each admin route that is not a plain read needs, by method and
/// route pattern. A `GET` not listed needs `viewer`; any other method not
/// listed needs `admin` (a new route is closed until it is given a role).
pub const ROUTE_ROLES: &[(&str, &str, StaffRole)] = &[
    ("POST", "/v1/tenants", StaffRole::SalesOps),
    ("POST", "/v1/tenants/{tenant}/promote", StaffRole::SalesOps),
    ("POST", "/v1/tenants/{tenant}/api-keys", StaffRole::SalesOps),
    ("DELETE", "/v1/tenants/{tenant}/api-keys/{key_id}", StaffRole::SalesOps),
    ("POST", "/v1/tenants/{tenant}/move", StaffRole::Operator),
    ("POST", "/v1/tenants/{tenant}/demote", StaffRole::Operator),
    ("PATCH", "/v1/tenants/{tenant}/settings", StaffRole::Operator),
    ("PATCH", "/v1/tiers/{tier}/settings", StaffRole::Operator),
    ("POST", "/v1/backends/{id}/retire", StaffRole::Operator),
    ("PUT", "/v1/backends/{id}/pooler", StaffRole::Operator),
    ("DELETE", "/v1/backends/{id}/pooler", StaffRole::Operator),
    ("POST", "/v1/migrations/apply", StaffRole::Operator),
    ("POST", "/v1/operations/{id}/cancel", StaffRole::Operator),
    ("POST", "/v1/estates", StaffRole::Operator),
    ("DELETE", "/v1/estates/{id}", StaffRole::Operator),
    ("POST", "/v1/estates/{id}/adopt", StaffRole::Operator),
    ("POST", "/v1/estates/{id}/adopt-all", StaffRole::Operator),
    ("POST", "/v1/estates/{id}/revert", StaffRole::Operator),
    // With `drop`, `admin` (checked by the handler).
    ("POST", "/v1/estates/{id}/release", StaffRole::Operator),
    ("DELETE", "/v1/tenants/{tenant}", StaffRole::Admin),
    // A tenant's data, whole.
    ("GET", "/v1/tenants/{tenant}/export", StaffRole::Admin),
    ("GET", "/v1/tenants/{tenant}/users", StaffRole::Admin),
    ("DELETE", "/v1/tenants/{tenant}/users/{id}", StaffRole::Admin),
    ("PUT", "/v1/tenants/{tenant}/identity-providers/{name}", StaffRole::Admin),
    ("DELETE", "/v1/tenants/{tenant}/identity-providers/{name}", StaffRole::Admin),
    ("POST", "/v1/tenants/{tenant}/identity-providers/{name}/test", StaffRole::Admin),
    // The console's pages and forms.
    ("POST", "/console/logout", StaffRole::Viewer),
    ("GET", "/console/tenants/new", StaffRole::SalesOps),
    ("POST", "/console/tenants", StaffRole::SalesOps),
    ("POST", "/console/tenants/{slug}/keys", StaffRole::SalesOps),
    ("POST", "/console/tenants/{slug}/keys/{key}/revoke", StaffRole::SalesOps),
    ("GET", "/console/tenants/{slug}/promote", StaffRole::SalesOps),
    ("POST", "/console/tenants/{slug}/promote", StaffRole::SalesOps),
    ("POST", "/console/tenants/{slug}/settings", StaffRole::Operator),
    ("GET", "/console/tenants/{slug}/move", StaffRole::Operator),
    ("POST", "/console/tenants/{slug}/move", StaffRole::Operator),
    ("GET", "/console/tenants/{slug}/demote", StaffRole::Operator),
    ("POST", "/console/tenants/{slug}/demote", StaffRole::Operator),
    ("POST", "/console/operations/{id}/cancel", StaffRole::Operator),
    ("POST", "/console/estates/{id}/adopt", StaffRole::Operator),
    ("POST", "/console/estates/{id}/revert", StaffRole::Operator),
    // With `drop`, `admin` (checked by the handler).
    ("POST", "/console/estates/{id}/release", StaffRole::Operator),
    ("POST", "/console/migrations/apply", StaffRole::Operator),
    ("GET", "/console/tenants/{slug}/export", StaffRole::Admin),
    ("GET", "/console/tenants/{slug}/people", StaffRole::Admin),
    ("POST", "/console/tenants/{slug}/people/{id}/erase", StaffRole::Admin),
    ("POST", "/console/tenants/{slug}/people/providers", StaffRole::Admin),
    ("POST", "/console/tenants/{slug}/people/providers/{name}/remove", StaffRole::Admin),
    ("GET", "/console/tenants/{slug}/erase", StaffRole::Admin),
    ("POST", "/console/tenants/{slug}/erase", StaffRole::Admin),
];

/// Whether a member of staff holding `roles` may act as `needed`: `admin`
/// holds every role, any role reads.
pub fn holds(roles: &[StaffRole], needed: StaffRole) -> bool {
    roles.contains(&StaffRole::Admin) || roles.contains(&needed) || (needed == StaffRole::Viewer && !roles.is_empty())
}

/// 403's words: the role needed and the roles held.
pub fn lacking(roles: &[StaffRole], needed: StaffRole) -> String {
    let held: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    format!(
        "this needs the `{}` staff role; you hold {}",
        needed.as_str(),
        if held.is_empty() { "none".to_string() } else { held.join(", ") }
    )
}

/// The role `method` on `pattern` needs (see [`ROUTE_ROLES`]).
pub fn route_role(method: &str, pattern: &str) -> StaffRole {
    match ROUTE_ROLES.iter().find(|(m, p, _)| *m == method && *p == pattern) {
        Some((.., role)) => *role,
        None if method == "GET" => StaffRole::Viewer,
        None => StaffRole::Admin,
    }
}

/// The operator's identity provider (`[control_plane.staff]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaffConfig {
    /// The `iss` of staff tokens: https (http only on loopback).
    pub issuer: String,
    /// The `aud` a staff token must carry (the console's client id, or the
    /// admin API's audience at the provider).
    pub audience: String,
    /// Default: the issuer's discovery document's `jwks_uri`.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// The claim listing a person's groups or roles at the provider.
    pub role_claim: String,
    /// The provider's group or role -> staff role. A person holding none of
    /// them is refused everything.
    pub role_map: BTreeMap<String, StaffRole>,
    /// The console's client at the provider, for its sign-in (authorization
    /// code with PKCE; the ID token's `aud`). Default: none (no console
    /// sign-in through the provider).
    #[serde(default)]
    pub client_id: Option<String>,
    /// That client's secret, if the provider treats it as confidential.
    #[serde(default)]
    pub client_secret: Option<secrecy::SecretString>,
}

impl StaffConfig {
    fn provider(&self) -> ProviderConfig {
        ProviderConfig {
            issuer: self.issuer.trim_end_matches('/').to_string(),
            audience: self.audience.clone(),
            jwks_uri: self.jwks_uri.clone(),
            org_claim: None,
            org_value: None,
            tenants_claim: None,
            role_claim: Some(self.role_claim.clone()),
            role_map: BTreeMap::new(),
            email_domains: vec![],
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        self.provider().validate().map_err(|e| format!("control_plane.staff: {e}"))?;
        if self.role_map.is_empty() {
            return Err("control_plane.staff.role_map must map at least one group to a staff role".into());
        }
        Ok(())
    }
}

/// A member of staff, as their token says.
#[derive(Debug, Clone)]
pub struct StaffPerson {
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    pub roles: Vec<StaffRole>,
}

impl StaffPerson {
    /// What the audit log and the operations record: the verified person.
    pub fn actor(&self) -> String {
        match &self.email {
            Some(e) => format!("{e} (sub {} at {})", self.subject, self.issuer),
            None => format!("sub {} at {}", self.subject, self.issuer),
        }
    }
}

/// How long a staff token that held is taken again without its signature checked.
const VERIFIED_TTL: Duration = Duration::from_secs(10);

/// A staff token that held: who, until when (`exp` and skew), by which key set.
type Verified = (StaffPerson, u64, Arc<KeySet>);

/// The staff token checker.
pub struct Staff {
    config: StaffConfig,
    provider: ProviderConfig,
    keys: KeySets,
    verified: Cache<[u8; 32], Arc<Verified>>,
}

fn invalid(why: impl Into<String>) -> ApiError {
    ApiError::invalid_token(why)
}

impl Staff {
    pub fn new(config: StaffConfig) -> Self {
        Staff {
            provider: config.provider(),
            config,
            keys: KeySets::new(Duration::from_secs(30)),
            verified: Cache::builder().max_capacity(10_000).time_to_live(VERIFIED_TTL).build(),
        }
    }

    /// The member of staff `token` signs in: RS256, ES256 or EdDSA by a key
    /// of the operator's provider; `iss`, `aud`, `exp`, `nbf` (60 s skew),
    /// `sub`; 401 `invalid_token` otherwise, 503 when the provider does not
    /// answer.
    pub async fn verify(&self, token: &str) -> Result<StaffPerson, ApiError> {
        self.cached(token, &self.config.audience, None).await
    }

    /// The member of staff an ID token from the console's sign-in names: as
    /// [`Staff::verify`], addressed to the console's client and carrying the
    /// sign-in's `nonce`.
    pub async fn verify_id_token(&self, token: &str, nonce: &str) -> Result<StaffPerson, ApiError> {
        let client = self.config.client_id.as_deref().ok_or_else(|| invalid("no console client is configured"))?;
        self.cached(token, client, Some(nonce)).await
    }

    /// The console client's settings and the provider's endpoints, for a
    /// sign-in: (client id, authorization endpoint, token endpoint).
    pub async fn console_client(&self) -> Result<(String, String, String), String> {
        let client = self.config.client_id.clone().ok_or("no console client is configured")?;
        let d = tenantry_core::identity::discover(&tenantry_core::identity::http_client(), &self.provider).await?;
        let authorize = d.authorization_endpoint.ok_or("the provider names no authorization_endpoint")?;
        let token = d.token_endpoint.ok_or("the provider names no token_endpoint")?;
        tenantry_core::identity::provider_url("authorization_endpoint", &authorize)?;
        tenantry_core::identity::provider_url("token_endpoint", &token)?;
        Ok((client, authorize, token))
    }

    /// The console client's secret, if any.
    pub fn client_secret(&self) -> Option<&secrecy::SecretString> {
        self.config.client_secret.as_ref()
    }

    async fn cached(&self, token: &str, audience: &str, nonce: Option<&str>) -> Result<StaffPerson, ApiError> {
        use sha2::Digest as _;
        let hash: [u8; 32] =
            sha2::Sha256::new().chain_update(audience).chain_update([0]).chain_update(token).finalize().into();
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(hit) = self.verified.get(&hash)
            && now <= hit.1
            && hit.2.is_current()
            && nonce.is_none()
        {
            return Ok(hit.0.clone());
        }
        let (alg, kid) = keysets::header(token).map_err(invalid)?;
        let found = self.keys.key(&self.provider, &kid).await.map_err(|e| match e {
            KeyError::UnknownKid => invalid("no key of the staff identity provider has this token's `kid`"),
            KeyError::Unavailable(e) => {
                tracing::warn!(error = %e, "the staff identity provider's keys are unavailable");
                ApiError::unavailable("identity_provider_unavailable", "the staff identity provider does not answer", 5)
            }
        })?;
        let claims = keysets::claims(token, alg, &found, &self.provider.issuer, &[audience]).map_err(invalid)?;
        if let Some(nonce) = nonce
            && claims.get("nonce").and_then(Value::as_str) != Some(nonce)
        {
            return Err(invalid("the ID token is not this sign-in's (its nonce differs)"));
        }
        let mut roles: Vec<StaffRole> = claim_values(&claims, &self.config.role_claim)
            .iter()
            .filter_map(|g| self.config.role_map.get(*g).copied())
            .collect();
        roles.sort();
        roles.dedup();
        let person = StaffPerson {
            issuer: self.provider.issuer.clone(),
            subject: claims.get("sub").and_then(Value::as_str).unwrap_or_default().to_string(),
            email: claims.get("email").and_then(Value::as_str).map(str::to_string),
            roles,
        };
        let until = claims.get("exp").and_then(Value::as_u64).unwrap_or(0).saturating_add(LEEWAY_SECS);
        self.verified.insert(hash, Arc::new((person.clone(), until, found.set)));
        Ok(person)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_need_a_viewer_and_unlisted_writes_need_an_admin() {
        assert_eq!(route_role("GET", "/v1/tenants"), StaffRole::Viewer);
        assert_eq!(route_role("POST", "/v1/tenants"), StaffRole::SalesOps);
        assert_eq!(route_role("GET", "/v1/tenants/{tenant}/export"), StaffRole::Admin);
        assert_eq!(route_role("POST", "/v1/something-new"), StaffRole::Admin);
    }
}
