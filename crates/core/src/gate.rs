//! The tenant gate's keys and proofs (tenant schema 6,
//! `migrations/tenant/0006_vouched_context.sql`). The app proves to a backend
//! that it, not a statement injected into its connection, asks for a tenant:
//! every tenant transaction starts with `tenantry_gate(...)` carrying
//! HMAC-SHA256 under a gate key of the tenant, its epoch and a binding that
//! makes the proof good once (the backend's pid and this connection's gate
//! counter, or a single-use nonce and the time through a pooler). The control
//! plane installs the keys' HMAC pads on every backend, where only the owner
//! can read them; the app role never sees a key.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The first tenant schema whose backends verify the gate's proof.
pub const GATE_SCHEMA: i32 = 6;

/// Shortest gate key accepted, in characters (a generated secret).
pub const MIN_KEY_LEN: usize = 32;

/// SQLSTATE: the proof is not the app's (forged, replayed, unknown key).
pub const NOT_VOUCHED: &str = "TR003";
/// SQLSTATE: this connection's gate is not open, or its counter is elsewhere.
pub const GATE_CLOSED: &str = "TR004";

/// The gate keys of a process: `current` signs (the app) and is installed
/// (the control plane); `previous`, during a rotation, is installed too, so
/// apps still signing with it keep working until they have the new one.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateKeys {
    /// The key that signs. At least 32 characters.
    pub current: SecretString,
    /// The key being rotated out: verified, never used to sign. Default none.
    #[serde(default)]
    pub previous: Option<SecretString>,
}

impl GateKeys {
    /// Refuses keys shorter than [`MIN_KEY_LEN`].
    pub fn validate(&self, section: &str) -> Result<(), String> {
        for (name, key) in [("current", Some(&self.current)), ("previous", self.previous.as_ref())] {
            if let Some(key) = key
                && key.expose_secret().chars().count() < MIN_KEY_LEN
            {
                return Err(format!("{section}.gate.{name} must have at least {MIN_KEY_LEN} characters"));
            }
        }
        Ok(())
    }

    /// The signing key.
    pub fn signer(&self) -> GateKey {
        GateKey::new(&self.current)
    }

    /// Every key a backend must accept: current first.
    pub fn installed(&self) -> Vec<GateKey> {
        std::iter::once(&self.current).chain(self.previous.as_ref()).map(GateKey::new).collect()
    }
}

/// One gate key, with the id backends know it by.
#[derive(Clone)]
pub struct GateKey {
    kid: i32,
    key: Vec<u8>,
}

impl std::fmt::Debug for GateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

/// HMAC-SHA256 hashes a key longer than its 64-byte block first (RFC 2104).
const BLOCK: usize = 64;

impl GateKey {
    fn new(secret: &SecretString) -> Self {
        let key = secret.expose_secret().as_bytes().to_vec();
        let digest = Sha256::digest(&key);
        let kid = i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
        GateKey { kid, key }
    }

    /// The id a backend stores this key under (from its SHA-256, so every
    /// process derives the same one).
    pub fn kid(&self) -> i32 {
        self.kid
    }

    /// The HMAC pads a backend stores (key XOR 0x36, key XOR 0x5c, the key
    /// zero-padded to a block), so it computes HMAC from two `sha256()` calls.
    pub fn pads(&self) -> (Vec<u8>, Vec<u8>) {
        let mut block = if self.key.len() > BLOCK { Sha256::digest(&self.key).to_vec() } else { self.key.clone() };
        block.resize(BLOCK, 0);
        (block.iter().map(|b| b ^ 0x36).collect(), block.iter().map(|b| b ^ 0x5c).collect())
    }

    fn mac(&self, message: &str) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        mac.update(message.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// The proof for a transaction on a direct connection: backend `pid`,
    /// gate counter at `n`.
    pub fn direct(&self, tenant: Uuid, epoch: i64, pid: u32, n: i64) -> Vec<u8> {
        self.mac(&format!("gate|{tenant}|{epoch}|{pid}|{n}"))
    }

    /// The proof for a transaction through a pooler: a fresh `nonce` and the
    /// time in milliseconds since the Unix epoch.
    pub fn pooled(&self, tenant: Uuid, epoch: i64, nonce: Uuid, at_ms: i64) -> Vec<u8> {
        self.mac(&format!("pooled|{tenant}|{epoch}|{nonce}|{at_ms}"))
    }
}

/// How one gate call is bound to its transaction.
#[derive(Debug, Clone, Copy)]
pub enum Binding {
    /// A direct connection: the backend's pid and the counter value to use.
    Direct { pid: u32, n: i64 },
    /// Through a pooler.
    Pooled { nonce: Uuid, at_ms: i64 },
}

impl Binding {
    /// A fresh pooled binding: a random nonce, now.
    pub fn pooled_now() -> Self {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        Binding::Pooled { nonce: Uuid::new_v4(), at_ms }
    }
}

/// One gate call, `tenantry_gate(...)`, as SQL with its values written in:
/// a writing transaction's (`read` false: the gate takes the fence lock and
/// checks residency) or a one-statement read's (`read` true: its statement
/// checks residency over `tenantry_admitted` and passes the answer). Through
/// a pooler the message must start with [`claim`] of the same binding. Every
/// value is typed (uuid, integers, hex bytea), so writing them into the text
/// cannot inject anything.
pub fn call(key: &GateKey, tenant: Uuid, epoch: i64, binding: Binding, read: bool) -> String {
    let admitted = if read {
        format!("EXISTS (SELECT 1 FROM tenantry_admitted g WHERE g.tenant_id = '{tenant}'::uuid AND g.epoch = {epoch})")
    } else {
        "NULL".to_string()
    };
    let kid = key.kid();
    match binding {
        Binding::Direct { pid, n } => format!(
            "tenantry_gate('{tenant}'::uuid, {epoch}::bigint, {kid}, {n}, NULL, NULL, '\\x{proof}'::bytea, {admitted})",
            proof = hex::encode(key.direct(tenant, epoch, pid, n)),
        ),
        Binding::Pooled { nonce, .. } => {
            format!(
                "tenantry_gate('{tenant}'::uuid, {epoch}::bigint, {kid}, NULL, '{nonce}'::uuid, NULL, NULL, {admitted})"
            )
        }
    }
}

/// The start of a message through a pooler: its proof claimed in a
/// transaction of its own, which commits (so no rollback of what follows
/// makes the proof good again), on the server session the rest of the
/// message runs on. It returns no row (the claim is true or raises), so the
/// message's rows are its read's. Empty for a direct binding.
pub fn claim(key: &GateKey, tenant: Uuid, epoch: i64, binding: Binding) -> String {
    let Binding::Pooled { nonce, at_ms } = binding else { return String::new() };
    format!(
        "BEGIN; SELECT 1 WHERE tenantry_gate_claim('{tenant}'::uuid, {epoch}::bigint, {kid}, '{nonce}'::uuid, \
         {at_ms}, '\\x{proof}'::bytea) IS NOT TRUE; COMMIT; ",
        kid = key.kid(),
        proof = hex::encode(key.pooled(tenant, epoch, nonce, at_ms)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_turn_two_sha256_calls_into_the_libraries_hmac() {
        for len in [32, 64, 100] {
            let key = GateKey::new(&SecretString::from("k".repeat(len)));
            let (ipad, opad) = key.pads();
            let message = "gate|00000000-0000-0000-0000-000000000001|3|4242|17";
            let inner = Sha256::new().chain_update(&ipad).chain_update(message.as_bytes()).finalize();
            let outer = Sha256::new().chain_update(&opad).chain_update(inner).finalize();
            assert_eq!(outer.to_vec(), key.mac(message), "key of {len} bytes");
        }
    }

    #[test]
    fn short_keys_are_refused_and_both_keys_are_installed_current_first() {
        let keys = GateKeys { current: "c".repeat(32).into(), previous: Some("p".repeat(40).into()) };
        assert!(keys.validate("app").is_ok());
        let installed = keys.installed();
        assert_eq!(installed.len(), 2);
        assert_eq!(installed[0].kid(), keys.signer().kid());
        let short = GateKeys { current: "c".repeat(31).into(), previous: None };
        assert!(short.validate("app").unwrap_err().contains("app.gate.current"));
    }
}
