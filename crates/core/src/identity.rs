//! People: the roles a tenant's users hold, and a tenant's identity
//! providers (OIDC issuers whose tokens sign the tenant's users in), as the
//! registry keeps them and both sides read them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a tenant's user may do, each role including the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads.
    Viewer,
    /// Reads; creates and updates issues and maintenance schedules; changes
    /// an asset's status and location (what the field app does).
    Technician,
    /// And creates, updates and deletes assets.
    Manager,
    /// And the tenant's users.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Technician, Role::Manager, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Technician => "technician",
            Role::Manager => "manager",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// A tenant's identity provider, as configured (`PUT
/// /v1/tenants/{tenant}/identity-providers/{name}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// The `iss` of its tokens: an https URL (http only on loopback).
    pub issuer: String,
    /// The `aud` its tokens must carry for Tenantry.
    pub audience: String,
    /// Where its signing keys are; default: the `jwks_uri` of the issuer's
    /// discovery document (`<issuer>/.well-known/openid-configuration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// For an issuer serving many tenants: the claim naming the
    /// organisation (`org_id`), and this tenant's value of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_claim: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_value: Option<String>,
    /// For users of several tenants (consultants): the list claim naming,
    /// by slug, the tenants a token signs its holder in to (`tenants`). Each
    /// tenant at the issuer is then its own organisation; not with
    /// `org_claim`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants_claim: Option<String>,
    /// The claim holding the user's role(s) in the provider's words
    /// (a string or a list of strings), mapped through `role_map`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_claim: Option<String>,
    /// The provider's role name -> Tenantry's role. A user whose claims map
    /// to no role is a `viewer`; to several, the highest.
    #[serde(default)]
    pub role_map: BTreeMap<String, Role>,
    /// If given, only users whose `email` is in one of these domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub email_domains: Vec<String>,
}

/// Longest issuer, audience, claim name or URL accepted.
const MAX_TEXT: usize = 512;

impl ProviderConfig {
    /// The configuration checked, in words: URLs https (http only for a
    /// loopback host), an organisation claim with its value, bounded texts.
    pub fn validate(&self) -> Result<(), String> {
        provider_url("issuer", &self.issuer)?;
        if let Some(u) = &self.jwks_uri {
            provider_url("jwks_uri", u)?;
        }
        let texts = [
            ("audience", Some(&self.audience)),
            ("org_claim", self.org_claim.as_ref()),
            ("org_value", self.org_value.as_ref()),
            ("tenants_claim", self.tenants_claim.as_ref()),
            ("role_claim", self.role_claim.as_ref()),
        ];
        for (field, value) in texts {
            if let Some(v) = value
                && (v.trim().is_empty() || v.len() > MAX_TEXT || v.chars().any(char::is_control))
            {
                return Err(format!("`{field}` must be 1 to {MAX_TEXT} printable characters"));
            }
        }
        if self.org_claim.is_some() != self.org_value.is_some() {
            return Err("`org_claim` and `org_value` go together: the claim naming the organisation, and this \
                        tenant's value of it"
                .into());
        }
        if self.tenants_claim.is_some() && self.org_claim.is_some() {
            return Err("`tenants_claim` and `org_claim` are two ways to share an issuer: give one".into());
        }
        if !self.role_map.is_empty() && self.role_claim.is_none() {
            return Err("`role_map` needs `role_claim`, the claim it maps".into());
        }
        if self.role_map.len() > 100 || self.role_map.keys().any(|k| k.is_empty() || k.len() > MAX_TEXT) {
            return Err("`role_map` takes at most 100 non-empty role names".into());
        }
        for d in &self.email_domains {
            let ok = !d.is_empty()
                && d.len() <= 253
                && d.split('.').all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
            if !ok {
                return Err(format!("`email_domains`: `{d}` is not a domain name"));
            }
        }
        Ok(())
    }

    /// The provider's discovery document: `<issuer>/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer.trim_end_matches('/'))
    }
}

/// The algorithms a provider's tokens may be signed with: RS256, ES256 and
/// EdDSA. Never `none`, never an HMAC (whose "secret" an attacker could take
/// to be the provider's public key).
pub const ALGORITHMS: [jsonwebtoken::Algorithm; 3] =
    [jsonwebtoken::Algorithm::RS256, jsonwebtoken::Algorithm::ES256, jsonwebtoken::Algorithm::EdDSA];

/// The fields of a provider's discovery document Tenantry reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub jwks_uri: String,
    /// Where a browser signs in (authorization code flow).
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    /// Where a code is exchanged for tokens.
    #[serde(default)]
    pub token_endpoint: Option<String>,
}

/// How long a provider has to answer one request.
pub const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The HTTP client that talks to identity providers: verified TLS (the
/// system's roots), bounded time, no redirects (a key set comes from where it
/// is configured or discovered, nowhere else).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(FETCH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client with default TLS builds")
}

async fn fetch_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    field: &str,
    url: &str,
) -> Result<T, String> {
    provider_url(field, url)?;
    let res = http.get(url).send().await.map_err(|e| format!("{url}: {}", without_url(&e)))?;
    if !res.status().is_success() {
        return Err(format!("{url} answered {}", res.status()));
    }
    // Bounded: a key set or discovery document is a few kB.
    let body = res.bytes().await.map_err(|e| format!("{url}: {}", without_url(&e)))?;
    if body.len() > 256 * 1024 {
        return Err(format!("{url}: the document is over 256 kB"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url}: not a valid document: {e}"))
}

fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(u) = e.url() {
        text = text.replace(&format!(" for url ({u})"), "");
    }
    if e.is_timeout() { "did not answer in time".into() } else { text }
}

/// The provider's discovery document; its `issuer` must be the configured one.
pub async fn discover(http: &reqwest::Client, config: &ProviderConfig) -> Result<Discovery, String> {
    let d: Discovery = fetch_json(http, "issuer", &config.discovery_url()).await?;
    if d.issuer.trim_end_matches('/') != config.issuer.trim_end_matches('/') {
        return Err(format!("the discovery document names issuer `{}`, not `{}`", d.issuer, config.issuer));
    }
    Ok(d)
}

/// The key set at `uri`.
pub async fn fetch_keys(http: &reqwest::Client, uri: &str) -> Result<jsonwebtoken::jwk::JwkSet, String> {
    fetch_json(http, "jwks_uri", uri).await
}

/// Where a provider's keys are: configured, or from its discovery document.
pub async fn keys_uri(http: &reqwest::Client, config: &ProviderConfig) -> Result<String, String> {
    match &config.jwks_uri {
        Some(u) => Ok(u.clone()),
        None => Ok(discover(http, config).await?.jwks_uri),
    }
}

/// The algorithm a key of the set is for, if Tenantry accepts it: a key with
/// a `kid`, for signing, of a type matching an accepted algorithm.
pub fn signing_algorithm(key: &jsonwebtoken::jwk::Jwk) -> Option<jsonwebtoken::Algorithm> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, KeyAlgorithm, PublicKeyUse};
    key.common.key_id.as_ref()?;
    if matches!(key.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let by_type = match &key.algorithm {
        AlgorithmParameters::RSA(_) => jsonwebtoken::Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => jsonwebtoken::Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => jsonwebtoken::Algorithm::EdDSA,
        _ => return None,
    };
    let stated = match key.common.key_algorithm {
        None => return Some(by_type),
        Some(KeyAlgorithm::RS256) => jsonwebtoken::Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => jsonwebtoken::Algorithm::ES256,
        Some(KeyAlgorithm::EdDSA) => jsonwebtoken::Algorithm::EdDSA,
        Some(_) => return None,
    };
    (stated == by_type).then_some(by_type)
}

/// An issuer or key-set URL: https, or http to a loopback host (tests and the
/// dev stack); no credentials, query or fragment.
pub fn provider_url(field: &str, text: &str) -> Result<url::Url, String> {
    let u = url::Url::parse(text).map_err(|e| format!("`{field}` is not a URL: {e}"))?;
    let loopback = match u.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    };
    match u.scheme() {
        "https" if u.host().is_some() => {}
        "http" if loopback => {}
        "http" => return Err(format!("`{field}` must be https (plain http only for a loopback host)")),
        _ => return Err(format!("`{field}` must be an https URL")),
    }
    if !u.username().is_empty() || u.password().is_some() || u.query().is_some() || u.fragment().is_some() {
        return Err(format!("`{field}` must carry no credentials, query or fragment"));
    }
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(issuer: &str) -> ProviderConfig {
        ProviderConfig {
            issuer: issuer.into(),
            audience: "tenantry".into(),
            jwks_uri: None,
            org_claim: None,
            org_value: None,
            tenants_claim: None,
            role_claim: None,
            role_map: BTreeMap::new(),
            email_domains: vec![],
        }
    }

    #[test]
    fn issuers_are_https_or_loopback_http_and_claims_go_together() {
        assert!(config("https://login.example.com/realms/acme").validate().is_ok());
        assert!(config("http://127.0.0.1:9400").validate().is_ok());
        assert!(config("http://localhost:9400").validate().is_ok());
        assert!(config("http://[::1]:9400").validate().is_ok());
        for bad in ["http://login.example.com", "ftp://x", "https://u:p@x.example", "https://x.example/?a=1", "x"] {
            assert!(config(bad).validate().is_err(), "{bad}");
        }
        let mut c = config("https://x.example");
        c.org_claim = Some("org_id".into());
        assert!(c.validate().unwrap_err().contains("go together"));
        c.org_value = Some("org_1".into());
        assert!(c.validate().is_ok());
        c.role_map.insert("field".into(), Role::Technician);
        assert!(c.validate().unwrap_err().contains("role_claim"));
        c.role_claim = Some("roles".into());
        c.email_domains = vec!["acme.example".into(), "bad domain".into()];
        assert!(c.validate().unwrap_err().contains("bad domain"));
        assert!(Role::Admin > Role::Manager && Role::Technician > Role::Viewer);
        assert_eq!(Role::parse("manager"), Some(Role::Manager));
    }
}
