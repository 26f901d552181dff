//! Tenant API keys: `tnry_` and 40 hex digits (160 random bits). Only the
//! SHA-256 of a key is stored; the key itself is shown once, at creation.

use rand::RngCore;
use sha2::{Digest, Sha256};

const PREFIX: &str = "tnry_";

/// A freshly made key: the secret to hand out once, its hash to store, and a
/// short display prefix.
pub struct NewKey {
    pub secret: String,
    pub hash: Vec<u8>,
    pub display_prefix: String,
}

pub fn generate() -> NewKey {
    let mut bytes = [0u8; 20];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("{PREFIX}{}", hex::encode(bytes));
    NewKey { hash: hash(&secret).to_vec(), display_prefix: secret[..PREFIX.len() + 6].to_string(), secret }
}

/// SHA-256 of a presented key, or `None` when it is not shaped like one (so a
/// garbage header costs no registry lookup).
pub fn hash_presented(key: &str) -> Option<[u8; 32]> {
    let body = key.strip_prefix(PREFIX)?;
    (body.len() == 40 && body.bytes().all(|b| b.is_ascii_hexdigit())).then(|| hash(key))
}

fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_verify_and_garbage_does_not() {
        let k = generate();
        assert_eq!(hash_presented(&k.secret).map(|h| h.to_vec()), Some(k.hash.clone()));
        assert!(k.secret.starts_with(&k.display_prefix));
        assert_eq!(hash_presented("tnry_xyz"), None);
        assert_eq!(hash_presented(&k.secret.replace("tnry_", "abcd_")), None);
        assert_ne!(generate().secret, k.secret);
    }
}
