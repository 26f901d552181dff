//! Tenant users signed in by their own identity provider: a bearer JWT
//! checked against the provider's keys, and the tenant and role it names.
//!
//! A token is read in this order, and refused at the first thing wrong
//! (401 `invalid_token`, `WWW-Authenticate: Bearer error="invalid_token"`):
//! its header (RS256, ES256 or EdDSA, with a `kid`: never `none`, never an
//! HMAC); its unverified `iss`, which picks the tenants' providers of that
//! issuer (none: refused); the provider's key of that `kid` (the issuer's key
//! set cached, fetched again on an unknown `kid` at most once every `app.token_key_refetch_secs`, 30 s by default); the
//! signature with that key, whose own type must be the header's algorithm;
//! `iss`, `aud` (the provider's audience), `exp` and `nbf` with 60 s of skew.
//! Then the tenant: each provider of the issuer whose organisation the token
//! names (an issuer without one names its one tenant); several: the request's
//! `X-Tenant` picks one (400 naming the choices without it, 403 for a tenant
//! the token does not name). A provider whose keys cannot be fetched answers
//! 503 for its own tokens only.
//!
//! A token that holds is kept, by its sha-256 (and the `X-Tenant` asked
//! for), for [`VERIFIED_TTL`] and never past its `exp`: a client's next
//! requests cost a hash and a look-up, not a signature check, and a provider
//! removed stops its tokens within that time. Each check that is not a cache
//! hit is a sign-in (the resolver records it, `signins.rs`). An issuer the registry does not
//! know is remembered as unknown for [`PROVIDERS_TTL`], and its look-up takes
//! a turn shared with unknown API keys: a flood of made-up issuers costs
//! bounded registry work and memory.

use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use serde_json::Value;
use uuid::Uuid;

use tenantry_core::identity::Role;
use tenantry_core::keysets::{self, FoundKey, KeyError, KeySet, KeySets, LEEWAY_SECS, claim_values};
use tenantry_core::registry::{KeyOwner, RegistryReader, TenantProvider};
use tenantry_core::web::ApiError;

/// How long the providers of an issuer are kept before being read again.
const PROVIDERS_TTL: Duration = Duration::from_secs(10);
/// How long a token that held is taken again without its signature checked.
pub const VERIFIED_TTL: Duration = PROVIDERS_TTL;
/// How long a request waits for a turn to look an unknown issuer up.
const LOOKUP_WAIT: Duration = Duration::from_secs(2);

/// Who a token signed in, for one tenant.
#[derive(Debug, Clone)]
pub struct Person {
    pub tenant_id: Uuid,
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub role: Role,
}

/// A token that held: who it signed in, until when, with which key set.
struct Verified {
    person: Arc<Person>,
    until: u64,
    keys: Arc<KeySet>,
}

/// The token checker: providers and key sets cached per issuer, tenants by id.
pub struct Tokens {
    registry: RegistryReader,
    owners: Cache<Uuid, Arc<KeyOwner>>,
    providers: Cache<String, Arc<Vec<TenantProvider>>>,
    keys: KeySets,
    /// sha-256 of (token, wanted tenant) -> who it signed in, until `exp`.
    verified: Cache<[u8; 32], Arc<Verified>>,
    /// Turns of registry look-ups of uncached issuers (shared with API keys).
    lookups: Arc<tokio::sync::Semaphore>,
    /// Issuers looked up in the registry (not cached, not known unknown).
    issuer_lookups: std::sync::atomic::AtomicU64,
}

fn invalid(why: impl Into<String>) -> ApiError {
    ApiError::invalid_token(why)
}

/// The claims of a token, read without checking anything (to find its issuer).
fn unverified_claims(token: &str) -> Result<serde_json::Map<String, Value>, ApiError> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).ok_or_else(|| invalid("not a JWT"))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| invalid("the token's claims are not base64url"))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(invalid("the token's claims are not a JSON object")),
    }
}

/// Whether the claim `name` is `value` or a list holding it.
fn claim_names(claims: &serde_json::Map<String, Value>, name: &str, value: &str) -> bool {
    claim_values(claims, name).contains(&value)
}

impl Tokens {
    /// `ttl`: how long a tenant's status and settings are kept (the app's
    /// cache time, as for API keys).
    /// `lookups`: the turns of registry look-ups of unknown credentials.
    pub fn new(
        registry: RegistryReader,
        ttl: Duration,
        refetch_every: Duration,
        lookups: Arc<tokio::sync::Semaphore>,
    ) -> Self {
        Tokens {
            verified: Cache::builder().max_capacity(100_000).time_to_live(VERIFIED_TTL).build(),
            lookups,
            issuer_lookups: Default::default(),
            registry,
            owners: Cache::builder().max_capacity(100_000).time_to_live(ttl).build(),
            providers: Cache::builder().max_capacity(10_000).time_to_live(PROVIDERS_TTL).build(),
            keys: KeySets::new(refetch_every),
        }
    }

    /// Issuers looked up in the registry since start.
    pub fn issuer_lookups(&self) -> u64 {
        self.issuer_lookups.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether `bearer` is shaped like a JWT (three base64url parts).
    pub fn is_token(bearer: &str) -> bool {
        bearer.split('.').count() == 3 && !bearer.starts_with("tnry_")
    }

    async fn providers(&self, issuer: &str) -> Result<Arc<Vec<TenantProvider>>, ApiError> {
        if let Some(p) = self.providers.get(issuer) {
            return Ok(p);
        }
        let Ok(Ok(_turn)) = tokio::time::timeout(LOOKUP_WAIT, self.lookups.clone().acquire_owned()).await else {
            return Err(ApiError::unavailable(
                "busy",
                "too many unknown credentials are being checked; retry shortly",
                1,
            ));
        };
        if let Some(p) = self.providers.get(issuer) {
            return Ok(p);
        }
        self.issuer_lookups.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let found = Arc::new(self.registry.providers_for_issuer(issuer).await.map_err(|e| ApiError::internal(&e))?);
        self.providers.insert(issuer.to_string(), found.clone());
        Ok(found)
    }

    /// The provider's key `kid`, in words when there is none.
    async fn key(&self, provider: &TenantProvider, kid: &str) -> Result<FoundKey, ApiError> {
        self.keys.key(&provider.config, kid).await.map_err(|e| match e {
            KeyError::UnknownKid => invalid("no key of the provider has this token's `kid`"),
            KeyError::Unavailable(e) => {
                tracing::warn!(issuer = %provider.config.issuer, error = %e, "identity provider keys unavailable");
                ApiError::unavailable(
                    "identity_provider_unavailable",
                    format!("the identity provider `{}` of this tenant does not answer; retry shortly", provider.name),
                    5,
                )
            }
        })
    }

    /// The person `token` signs in and their tenant (its status and settings).
    /// `true` with a sign-in: the token was checked now, not taken from the
    /// cache.
    pub async fn sign_in(
        &self,
        token: &str,
        wanted: Option<&str>,
    ) -> Result<(Arc<KeyOwner>, Arc<Person>, bool), ApiError> {
        let (person, fresh) = self.checked(token, wanted).await?;
        if let Some(owner) = self.owners.get(&person.tenant_id) {
            return Ok((owner, person, fresh));
        }
        let owner = self
            .registry
            .tenant_owner(person.tenant_id)
            .await
            .map_err(|e| ApiError::internal(&e))?
            .ok_or_else(|| ApiError::not_found("tenant"))?;
        let owner = Arc::new(owner);
        self.owners.insert(person.tenant_id, owner.clone());
        Ok((owner, person, fresh))
    }

    /// [`Tokens::verify`] (and `true`), or what it said of this token a
    /// moment ago.
    async fn checked(&self, token: &str, wanted: Option<&str>) -> Result<(Arc<Person>, bool), ApiError> {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(token.as_bytes());
        h.update([0]);
        h.update(wanted.unwrap_or_default().as_bytes());
        let hash: [u8; 32] = h.finalize().into();
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(hit) = self.verified.get(&hash)
            && now <= hit.until
            && hit.keys.is_current()
        {
            return Ok((hit.person.clone(), false));
        }
        let (person, exp, keys) = self.verify_with(token, wanted).await?;
        let person = Arc::new(person);
        let until = exp.saturating_add(LEEWAY_SECS);
        self.verified.insert(hash, Arc::new(Verified { person: person.clone(), until, keys }));
        Ok((person, true))
    }

    /// The person `token` signs in, for the tenant `wanted` names (a slug,
    /// from `X-Tenant`) when the token names several.
    pub async fn verify(&self, token: &str, wanted: Option<&str>) -> Result<Person, ApiError> {
        Ok(self.verify_with(token, wanted).await?.0)
    }

    /// [`Tokens::verify`], with the token's `exp` and the key set it held by.
    async fn verify_with(&self, token: &str, wanted: Option<&str>) -> Result<(Person, u64, Arc<KeySet>), ApiError> {
        let (alg, kid) = keysets::header(token).map_err(invalid)?;
        let claims = unverified_claims(token)?;
        let issuer = claims.get("iss").and_then(Value::as_str).ok_or_else(|| invalid("the token has no `iss`"))?;
        let providers = self.providers(issuer).await?;
        // The providers (tenants) this token's organisation claims name.
        let named: Vec<&TenantProvider> = providers
            .iter()
            .filter(|p| match (&p.config.org_claim, &p.config.org_value, &p.config.tenants_claim) {
                (Some(c), Some(v), _) => claim_names(&claims, c, v),
                (_, _, Some(c)) => claim_names(&claims, c, &p.slug),
                _ => true,
            })
            .collect();
        let Some(first) = named.first() else {
            return Err(invalid("no tenant's identity provider takes tokens of this issuer (and organisation)"));
        };
        // One issuer, one key set: the first provider's settings find it.
        let found = self.key(first, &kid).await?;
        let audiences: Vec<&str> = named.iter().map(|p| p.config.audience.as_str()).collect();
        let verified = keysets::claims(token, alg, &found, issuer, &audiences).map_err(invalid)?;
        let keys = found.set;
        // Its audience picks among the named providers.
        let named: Vec<&TenantProvider> =
            named.into_iter().filter(|p| claim_names(&verified, "aud", &p.config.audience)).collect();
        let provider = match (named.as_slice(), wanted) {
            ([only], None) => *only,
            (_, Some(slug)) => match named.iter().find(|p| p.slug == slug) {
                Some(p) => *p,
                // Another organisation's tenant at this issuer: not this user's.
                None if providers.iter().any(|p| p.slug == slug) => {
                    return Err(ApiError::forbidden(format!("this token does not sign anyone in to tenant `{slug}`")));
                }
                None => return Err(invalid(format!("tenant `{slug}` takes no tokens of this issuer"))),
            },
            (_, None) => {
                let choices: Vec<&str> = named.iter().map(|p| p.slug.as_str()).collect();
                return Err(ApiError::bad_request(
                    "tenant_required",
                    format!("this token names several tenants: send `X-Tenant` with one of {}", choices.join(", ")),
                ));
            }
        };
        let email = verified.get("email").and_then(Value::as_str).map(str::to_string);
        let domains = &provider.config.email_domains;
        if !domains.is_empty() {
            let domain = email.as_deref().and_then(|e| e.rsplit_once('@')).map(|(_, d)| d.to_ascii_lowercase());
            if !domain.is_some_and(|d| domains.contains(&d)) {
                return Err(ApiError::forbidden("this tenant signs in only users of its email domains"));
            }
        }
        let role = provider
            .config
            .role_claim
            .as_ref()
            .map(|c| {
                let held = claim_values(&verified, c);
                held.iter().filter_map(|h| provider.config.role_map.get(*h)).copied().max().unwrap_or(Role::Viewer)
            })
            .unwrap_or(Role::Viewer);
        let exp = verified.get("exp").and_then(Value::as_u64).unwrap_or(0);
        let person = Person {
            tenant_id: provider.tenant_id,
            issuer: issuer.to_string(),
            subject: verified.get("sub").and_then(Value::as_str).unwrap_or_default().to_string(),
            email,
            name: verified.get("name").and_then(Value::as_str).map(str::to_string),
            role,
        };
        Ok((person, exp, keys))
    }
}
