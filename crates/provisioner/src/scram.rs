//! SCRAM-SHA-256 secrets (RFC 5802, RFC 7677) computed here rather than by the
//! server: a role's password never reaches PostgreSQL, its log or its
//! statistics in clear, and the iteration count is ours to choose.
//!
//! Why choose it: PBKDF2's iterations are paid by the *client* on every
//! connection start (the server stores the derived keys). For a password a
//! person picked they slow an offline guesser down; for a machine-generated
//! secret of 128 bits or more there is nothing to slow down, and the 4,096
//! rounds PostgreSQL 15 applies cost each connection start several ms of the
//! app's CPU. The app role's count is therefore a setting
//! (`control_plane.app_scram_iterations`); every other role keeps 4,096.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// PostgreSQL 15's count, used for every role that has no reason for another.
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// The secret `CREATE ROLE ... PASSWORD` accepts as already encrypted:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, with a fresh
/// 16-byte salt. The password is SASLprep-normalised first when it can be, as
/// the server would (and as clients do when they log in).
pub fn scram_secret(password: &str, iterations: u32) -> String {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    secret_with_salt(password, iterations.max(1), &salt)
}

fn secret_with_salt(password: &str, iterations: u32, salt: &[u8]) -> String {
    let prepared = stringprep::saslprep(password).map(|p| p.into_owned()).unwrap_or_else(|_| password.to_string());
    let salted = hi(prepared.as_bytes(), salt, iterations);
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored_key),
        STANDARD.encode(server_key)
    )
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// Hi(password, salt, i): PBKDF2 with HMAC-SHA-256 and one output block.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &first);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        out.iter_mut().zip(u.iter()).for_each(|(o, x)| *o ^= x);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's example: user "user", password "pencil", salt
    /// "W22ZaJ0SNY7soEsUEjb6gQ==", 4,096 iterations; its ClientProof and
    /// ServerSignature follow from these keys.
    #[test]
    fn the_rfc_7677_example_gives_its_keys() {
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let secret = secret_with_salt("pencil", 4096, &salt);
        let (head, keys) = secret.rsplit_once('$').unwrap();
        assert_eq!(head, "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==");
        let (stored, server) = keys.split_once(':').unwrap();
        let server_key = STANDARD.decode(server).unwrap();
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
            s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let signature = hmac(&server_key, auth_message.as_bytes());
        assert_eq!(STANDARD.encode(signature), "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
        let stored_key = STANDARD.decode(stored).unwrap();
        let client_signature = hmac(&stored_key, auth_message.as_bytes());
        let proof = STANDARD.decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=").unwrap();
        let client_key: Vec<u8> = proof.iter().zip(client_signature.iter()).map(|(p, s)| p ^ s).collect();
        assert_eq!(Sha256::digest(&client_key)[..], stored_key[..]);
    }

    #[test]
    fn each_secret_has_its_own_salt_and_the_count_asked_for() {
        let a = scram_secret("same", 16);
        let b = scram_secret("same", 16);
        assert!(a.starts_with("SCRAM-SHA-256$16:"), "{a}");
        assert_ne!(a, b);
    }
}
