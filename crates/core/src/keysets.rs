//! Identity providers' signing keys, cached per key-set address, for both
//! listeners (tenant users' tokens on the app, staff tokens on the admin
//! API). An issuer's key-set address is discovered once (or configured); a
//! set is fetched again on an unknown `kid` at most once every
//! `refetch_every`, one fetch at a time per set, and after [`KEYS_TTL`]
//! whatever. A fetch that replaces a set marks the old one not current, so a
//! token verified with it (and cached by a caller) is checked again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use moka::sync::Cache;

use crate::identity::{ProviderConfig, fetch_keys, keys_uri, signing_algorithm};

/// A key set is read again after this long even when every `kid` is known.
pub const KEYS_TTL: Duration = Duration::from_secs(3600);
/// Skew allowed on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 60;

/// One fetched key set: (kid, algorithm, key).
pub struct KeySet {
    keys: Vec<(String, Algorithm, Arc<DecodingKey>)>,
    current: AtomicBool,
}

impl KeySet {
    /// Whether no later fetch has replaced it.
    pub fn is_current(&self) -> bool {
        self.current.load(Ordering::Relaxed)
    }
}

/// Why no key was found.
#[derive(Debug)]
pub enum KeyError {
    /// The provider did not answer (or answered nonsense), in words.
    Unavailable(String),
    /// No key of the provider's set has this `kid`.
    UnknownKid,
}

/// A key of one provider's set, with the set it came from.
pub struct FoundKey {
    pub algorithm: Algorithm,
    pub key: Arc<DecodingKey>,
    pub set: Arc<KeySet>,
}

pub struct KeySets {
    http: reqwest::Client,
    sets: Cache<String, Arc<KeySet>>,
    /// Issuer -> its key set's address, from its discovery document.
    discovered: Cache<String, String>,
    /// Per key-set address: when it was last fetched, and a lock so that one
    /// fetch at a time goes to a provider.
    fetches: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Instant>>>>>,
    refetch_every: Duration,
}

impl KeySets {
    pub fn new(refetch_every: Duration) -> Self {
        KeySets {
            http: crate::identity::http_client(),
            sets: Cache::builder().max_capacity(10_000).time_to_live(KEYS_TTL).build(),
            discovered: Cache::builder().max_capacity(10_000).time_to_live(KEYS_TTL).build(),
            fetches: Mutex::new(HashMap::new()),
            refetch_every,
        }
    }

    /// The key `kid` of `provider`'s set.
    pub async fn key(&self, provider: &ProviderConfig, kid: &str) -> Result<FoundKey, KeyError> {
        let uri = match (provider.jwks_uri.clone(), self.discovered.get(&provider.issuer)) {
            (Some(u), _) | (None, Some(u)) => u,
            (None, None) => {
                let u = keys_uri(&self.http, provider).await.map_err(KeyError::Unavailable)?;
                self.discovered.insert(provider.issuer.clone(), u.clone());
                u
            }
        };
        let find = |set: &Arc<KeySet>| {
            set.keys.iter().find(|(k, ..)| k == kid).map(|(_, a, d)| FoundKey {
                algorithm: *a,
                key: d.clone(),
                set: set.clone(),
            })
        };
        if let Some(found) = self.sets.get(&uri).as_ref().and_then(find) {
            return Ok(found);
        }
        let gate = {
            let mut all = self.fetches.lock().unwrap_or_else(|p| p.into_inner());
            all.entry(uri.clone()).or_default().clone()
        };
        let mut last = gate.lock().await;
        // Fetched by another request meanwhile?
        if let Some(found) = self.sets.get(&uri).as_ref().and_then(find) {
            return Ok(found);
        }
        if last.is_some_and(|t| t.elapsed() < self.refetch_every) && self.sets.contains_key(&uri) {
            return Err(KeyError::UnknownKid);
        }
        *last = Some(Instant::now());
        let fetched = fetch_keys(&self.http, &uri).await.map_err(KeyError::Unavailable)?;
        let keys = fetched
            .keys
            .iter()
            .filter_map(|k| {
                let alg = signing_algorithm(k)?;
                Some((k.common.key_id.clone()?, alg, Arc::new(DecodingKey::from_jwk(k).ok()?)))
            })
            .collect();
        let set = Arc::new(KeySet { keys, current: true.into() });
        if let Some(old) = self.sets.get(&uri) {
            old.current.store(false, Ordering::Relaxed);
        }
        self.sets.insert(uri, set.clone());
        find(&set).ok_or(KeyError::UnknownKid)
    }
}

/// A token's header, read before its key is found: an accepted algorithm
/// (RS256, ES256, EdDSA: never `none`, never an HMAC) and the `kid`. The
/// refusal in words.
pub fn header(token: &str) -> Result<(Algorithm, String), String> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| "not a JWT".to_string())?;
    if !crate::identity::ALGORITHMS.contains(&header.alg) {
        return Err(format!("tokens signed with {:?} are refused: RS256, ES256 or EdDSA", header.alg));
    }
    let kid = header.kid.ok_or("the token's header has no `kid`")?;
    Ok((header.alg, kid))
}

/// The claims of `token`, whose header named `algorithm`, checked with the
/// key found for it: the key's own type is that algorithm, the signature,
/// `iss`, one of `audiences`, `exp`, `nbf` (60 s of skew) and a `sub`. The
/// refusal in words.
pub fn claims(
    token: &str,
    algorithm: Algorithm,
    found: &FoundKey,
    issuer: &str,
    audiences: &[&str],
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    if found.algorithm != algorithm {
        return Err("the token's algorithm is not its key's".into());
    }
    let v = validation(algorithm, issuer, audiences);
    jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &found.key, &v)
        .map(|d| d.claims)
        .map_err(|e| format!("the token does not hold: {e}"))
}

fn validation(algorithm: Algorithm, issuer: &str, audiences: &[&str]) -> Validation {
    let mut v = Validation::new(algorithm);
    v.leeway = LEEWAY_SECS;
    v.validate_nbf = true;
    v.set_issuer(&[issuer]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.set_audience(audiences);
    v
}

/// The claim `name` as a list of strings (a string is a list of one).
pub fn claim_values<'a>(claims: &'a serde_json::Map<String, serde_json::Value>, name: &str) -> Vec<&'a str> {
    match claims.get(name) {
        Some(serde_json::Value::String(s)) => vec![s.as_str()],
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(serde_json::Value::as_str).collect(),
        _ => vec![],
    }
}
