//! Signed configuration bundles: what the control plane hands a gateway.
//!
//! A [`Bundle`] carries one group's configuration at one version, with an issue time, an expiry
//! and the id of the key that signed it; a [`SignedBundle`] adds an ed25519 signature. A gateway
//! pins the control plane's public key(s) at enrollment and accepts a bundle only when
//! [`verify`] passes: the signing key is one it knows ([`BundleError::UnknownKey`]), the
//! signature matches the exact bundle ([`BundleError::BadSignature`] — any tampered field fails),
//! and the bundle has not expired ([`BundleError::Expired`]). Version monotonicity (no rollback)
//! is the agent's job: it compares `version` with what it has applied.
//!
//! # Signed bytes (canonical form)
//! The signature covers `serde_json::to_vec(&bundle)`: a compact JSON object (no whitespace) with
//! the fields in the order they are declared on [`Bundle`] — `version`, `group`, `issued_at`,
//! `expires_at`, `key_id`, `config_yaml` — integers in decimal and strings escaped the way
//! serde_json escapes them. Both sides re-serialise the decoded [`Bundle`] rather than signing the
//! received text, so whitespace or key order on the wire never matters, and an unknown field
//! cannot be smuggled in (`deny_unknown_fields`). Reordering or renaming fields on [`Bundle`]
//! changes the signed bytes and is a protocol break.
//!
//! # Key ids
//! [`key_id`] is the first 16 hex characters of SHA-256 over the 32-byte public key, so keys can be
//! rotated and a gateway can hold several pinned keys.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// One group's configuration at one version. Field order is part of the signed form (see the
/// module docs); do not reorder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// Monotonic per group, starting at 1. A gateway never applies a lower version than it has.
    pub version: u64,
    /// The gateway group this bundle was published to.
    pub group: String,
    /// When the control plane signed it (unix seconds).
    pub issued_at: u64,
    /// After this instant (unix seconds) the bundle is refused as [`BundleError::Expired`].
    pub expires_at: u64,
    /// Id of the signing key ([`key_id`] of its public half).
    pub key_id: String,
    /// The configuration, as validated YAML text (what `tollgate validate` accepts).
    pub config_yaml: String,
}

/// A bundle with its detached ed25519 signature over the canonical bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedBundle {
    pub bundle: Bundle,
    /// Standard base64 (with padding) of the 64-byte signature.
    pub signature: String,
}

/// Why a bundle was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("bundle signed by unknown key {0:?}")]
    UnknownKey(String),
    #[error("bundle signature does not verify")]
    BadSignature,
    #[error("bundle expired at {expires_at} (now {now})")]
    Expired { expires_at: u64, now: u64 },
    #[error("bundle cannot be serialised: {0}")]
    Encoding(String),
}

/// The exact bytes a signature covers (see the module docs).
pub fn canonical_bytes(bundle: &Bundle) -> Result<Vec<u8>, BundleError> {
    serde_json::to_vec(bundle).map_err(|e| BundleError::Encoding(e.to_string()))
}

/// First 16 hex characters of SHA-256 over the raw public key.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    hex(&digest[..8])
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Signs `bundle` with `key`, stamping `key_id` into it first so the id is covered by the
/// signature.
pub fn sign(bundle: &Bundle, key: &SigningKey, key_id: &str) -> Result<SignedBundle, BundleError> {
    let mut bundle = bundle.clone();
    bundle.key_id = key_id.to_owned();
    let sig = key.sign(&canonical_bytes(&bundle)?);
    Ok(SignedBundle {
        bundle,
        signature: B64.encode(sig.to_bytes()),
    })
}

/// Checks a bundle against the pinned keys at `now` (unix seconds): known key, valid signature,
/// not expired — in that order, so an attacker learns nothing from the expiry of a forged bundle.
pub fn verify<'a>(
    signed: &'a SignedBundle,
    keys: &[(String, VerifyingKey)],
    now: u64,
) -> Result<&'a Bundle, BundleError> {
    let bundle = &signed.bundle;
    let key = keys
        .iter()
        .find(|(id, _)| *id == bundle.key_id)
        .map(|(_, k)| k)
        .ok_or_else(|| BundleError::UnknownKey(bundle.key_id.clone()))?;
    let raw = B64
        .decode(signed.signature.as_bytes())
        .map_err(|_| BundleError::BadSignature)?;
    let sig = Signature::from_slice(&raw).map_err(|_| BundleError::BadSignature)?;
    key.verify(&canonical_bytes(bundle)?, &sig)
        .map_err(|_| BundleError::BadSignature)?;
    if now >= bundle.expires_at {
        return Err(BundleError::Expired {
            expires_at: bundle.expires_at,
            now,
        });
    }
    Ok(bundle)
}

/// Encodes a public key for the wire (standard base64 of the 32 raw bytes).
pub fn public_key_b64(key: &VerifyingKey) -> String {
    B64.encode(key.as_bytes())
}

/// Decodes a public key from [`public_key_b64`] form.
pub fn parse_public_key(b64: &str) -> Result<VerifyingKey, BundleError> {
    let raw = B64
        .decode(b64.trim().as_bytes())
        .map_err(|_| BundleError::UnknownKey("malformed public key".into()))?;
    let arr: [u8; 32] = raw
        .as_slice()
        .try_into()
        .map_err(|_| BundleError::UnknownKey("public key is not 32 bytes".into()))?;
    VerifyingKey::from_bytes(&arr).map_err(|_| BundleError::UnknownKey("invalid public key".into()))
}

/// A fresh signing key from the OS random source.
pub fn generate_key() -> Result<SigningKey, getrandom::Error> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)?;
    Ok(SigningKey::from_bytes(&seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn bundle() -> Bundle {
        Bundle {
            version: 3,
            group: "acme".into(),
            issued_at: 1_000,
            expires_at: 2_000,
            key_id: String::new(),
            config_yaml: "apis: []\n".into(),
        }
    }

    fn pinned(k: &SigningKey) -> Vec<(String, VerifyingKey)> {
        let vk = k.verifying_key();
        vec![(key_id(&vk), vk)]
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let k = key(1);
        let id = key_id(&k.verifying_key());
        let signed = sign(&bundle(), &k, &id).unwrap();
        assert_eq!(signed.bundle.key_id, id);
        let got = verify(&signed, &pinned(&k), 1_500).unwrap();
        assert_eq!(got.version, 3);
        // Through the wire and back.
        let wire = serde_json::to_string(&signed).unwrap();
        let back: SignedBundle = serde_json::from_str(&wire).unwrap();
        assert!(verify(&back, &pinned(&k), 1_500).is_ok());
    }

    #[test]
    fn key_id_is_16_hex_of_sha256() {
        let vk = key(1).verifying_key();
        let id = key_id(&vk);
        assert_eq!(id.len(), 16);
        assert_eq!(id, hex(&Sha256::digest(vk.as_bytes()))[..16]);
    }

    #[test]
    fn canonical_bytes_follow_declared_order() {
        let mut b = bundle();
        b.key_id = "k".into();
        let s = String::from_utf8(canonical_bytes(&b).unwrap()).unwrap();
        assert_eq!(
            s,
            r#"{"version":3,"group":"acme","issued_at":1000,"expires_at":2000,"key_id":"k","config_yaml":"apis: []\n"}"#
        );
    }

    #[test]
    fn tampered_field_fails() {
        let k = key(1);
        let mut signed = sign(&bundle(), &k, &key_id(&k.verifying_key())).unwrap();
        signed.bundle.config_yaml.push_str("# extra\n");
        assert_eq!(
            verify(&signed, &pinned(&k), 1_500),
            Err(BundleError::BadSignature)
        );
        let mut signed = sign(&bundle(), &k, &key_id(&k.verifying_key())).unwrap();
        signed.bundle.expires_at = 9_999;
        assert_eq!(
            verify(&signed, &pinned(&k), 1_500),
            Err(BundleError::BadSignature)
        );
    }

    #[test]
    fn garbage_signature_fails() {
        let k = key(1);
        let mut signed = sign(&bundle(), &k, &key_id(&k.verifying_key())).unwrap();
        signed.signature = "not base64!".into();
        assert_eq!(
            verify(&signed, &pinned(&k), 1_500),
            Err(BundleError::BadSignature)
        );
        signed.signature = B64.encode([0u8; 10]);
        assert_eq!(
            verify(&signed, &pinned(&k), 1_500),
            Err(BundleError::BadSignature)
        );
    }

    #[test]
    fn unknown_key_and_wrong_key() {
        let k = key(1);
        let other = key(2);
        let signed = sign(&bundle(), &k, &key_id(&k.verifying_key())).unwrap();
        assert!(matches!(
            verify(&signed, &pinned(&other), 1_500),
            Err(BundleError::UnknownKey(_))
        ));
        // Signed by another key but claiming the pinned key's id.
        let forged = sign(&bundle(), &other, &key_id(&k.verifying_key())).unwrap();
        assert_eq!(
            verify(&forged, &pinned(&k), 1_500),
            Err(BundleError::BadSignature)
        );
    }

    #[test]
    fn expired_is_refused() {
        let k = key(1);
        let signed = sign(&bundle(), &k, &key_id(&k.verifying_key())).unwrap();
        assert!(verify(&signed, &pinned(&k), 1_999).is_ok());
        assert_eq!(
            verify(&signed, &pinned(&k), 2_000),
            Err(BundleError::Expired {
                expires_at: 2_000,
                now: 2_000
            })
        );
    }

    #[test]
    fn public_key_round_trips() {
        let vk = key(7).verifying_key();
        assert_eq!(parse_public_key(&public_key_b64(&vk)).unwrap(), vk);
        assert!(parse_public_key("AAAA").is_err());
    }

    #[test]
    fn generated_keys_differ() {
        let a = generate_key().unwrap();
        let b = generate_key().unwrap();
        assert_ne!(a.to_bytes(), b.to_bytes());
    }
}
