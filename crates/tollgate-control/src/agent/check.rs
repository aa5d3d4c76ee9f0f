//! Whether a received bundle may be applied: signed by a pinned key, untampered, not expired,
//! for this gateway's group, and newer than what is applied (no rollback). A refused bundle is
//! logged, counted in `tollgate_config_bundle_rejected_total{reason}` and reported to the
//! control plane as the last error; the configuration already serving stays.

use ed25519_dalek::VerifyingKey;

use crate::bundle::{self, Bundle, BundleError, SignedBundle};

/// Why a bundle was refused. [`Reject::reason`] is the bounded metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("bundle is not valid JSON for the protocol: {0}")]
    Malformed(String),
    #[error("bundle signed by key {0:?}, which is not the pinned control-plane key")]
    UnknownKey(String),
    #[error("bundle signature does not verify (tampered or unsigned)")]
    BadSignature,
    #[error("bundle version {version} expired at {expires_at} (now {now})")]
    Expired {
        version: u64,
        expires_at: u64,
        now: u64,
    },
    #[error("bundle is for group {got:?}, this gateway belongs to {want:?}")]
    WrongGroup { got: String, want: String },
    #[error(
        "bundle version {version} is not newer than the applied version {applied} (rollback refused)"
    )]
    Rollback { version: u64, applied: u64 },
    #[error("bundle version {version} failed validation: {message}")]
    InvalidConfig { version: u64, message: String },
}

impl Reject {
    /// One of `tollgate_telemetry`'s bundle reject reasons.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::UnknownKey(_) => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Expired { .. } => "expired",
            Self::WrongGroup { .. } => "wrong_group",
            Self::Rollback { .. } => "rollback",
            Self::InvalidConfig { .. } => "invalid_config",
        }
    }
}

/// Parses a bundle from the wire.
pub fn parse(body: &[u8]) -> Result<SignedBundle, Reject> {
    serde_json::from_slice(body).map_err(|e| Reject::Malformed(e.to_string()))
}

/// Checks signature (against `keys`), expiry at `now`, group and version > `applied`.
pub fn check<'a>(
    signed: &'a SignedBundle,
    keys: &[(String, VerifyingKey)],
    group: &str,
    applied: u64,
    now: u64,
) -> Result<&'a Bundle, Reject> {
    let b = verify_signature(signed, keys, now)?;
    if now >= b.expires_at {
        return Err(Reject::Expired {
            version: b.version,
            expires_at: b.expires_at,
            now,
        });
    }
    if b.group != group {
        return Err(Reject::WrongGroup {
            got: b.group.clone(),
            want: group.to_owned(),
        });
    }
    if b.version <= applied {
        return Err(Reject::Rollback {
            version: b.version,
            applied,
        });
    }
    Ok(b)
}

/// Key and signature only; expiry is left to the caller (a backup may be served expired, see
/// the agent's module docs).
pub fn verify_signature<'a>(
    signed: &'a SignedBundle,
    keys: &[(String, VerifyingKey)],
    now: u64,
) -> Result<&'a Bundle, Reject> {
    match bundle::verify(signed, keys, now) {
        Ok(b) => Ok(b),
        // `verify` checks the signature before the expiry, so an expired error means the
        // signature is good.
        Err(BundleError::Expired { .. }) => Ok(&signed.bundle),
        Err(BundleError::UnknownKey(k)) => Err(Reject::UnknownKey(k)),
        Err(BundleError::BadSignature) => Err(Reject::BadSignature),
        Err(BundleError::Encoding(m)) => Err(Reject::Malformed(m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[9; 32])
    }

    fn keys() -> Vec<(String, VerifyingKey)> {
        let vk = key().verifying_key();
        vec![(bundle::key_id(&vk), vk)]
    }

    fn signed(version: u64, group: &str, expires_at: u64) -> SignedBundle {
        let b = Bundle {
            version,
            group: group.into(),
            issued_at: 100,
            expires_at,
            key_id: String::new(),
            config_yaml: "apis: []\n".into(),
        };
        bundle::sign(&b, &key(), &bundle::key_id(&key().verifying_key())).unwrap()
    }

    #[test]
    fn accepts_newer_bundle_for_own_group() {
        let s = signed(2, "acme", 1_000);
        assert_eq!(check(&s, &keys(), "acme", 1, 500).unwrap().version, 2);
    }

    #[test]
    fn refusals_carry_their_reason() {
        let s = signed(2, "acme", 1_000);
        let r = |res: Result<&Bundle, Reject>| res.unwrap_err().reason();
        assert_eq!(r(check(&s, &keys(), "acme", 2, 500)), "rollback");
        assert_eq!(r(check(&s, &keys(), "acme", 3, 500)), "rollback");
        assert_eq!(r(check(&s, &keys(), "acme", 1, 1_000)), "expired");
        assert_eq!(r(check(&s, &keys(), "other", 1, 500)), "wrong_group");
        let mut t = s.clone();
        t.bundle.config_yaml.push_str("# tampered\n");
        assert_eq!(r(check(&t, &keys(), "acme", 1, 500)), "bad_signature");
        let mut u = s.clone();
        u.signature = String::new();
        assert_eq!(r(check(&u, &keys(), "acme", 1, 500)), "bad_signature");
        let other = SigningKey::from_bytes(&[1; 32]).verifying_key();
        let foreign = vec![(bundle::key_id(&other), other)];
        assert_eq!(r(check(&s, &foreign, "acme", 1, 500)), "unknown_key");
        assert_eq!(parse(b"{}").unwrap_err().reason(), "malformed");
    }

    #[test]
    fn expired_backup_still_has_a_valid_signature() {
        let s = signed(2, "acme", 1_000);
        assert!(verify_signature(&s, &keys(), 5_000).is_ok());
        let mut t = s.clone();
        t.bundle.version = 9;
        assert_eq!(
            verify_signature(&t, &keys(), 5_000),
            Err(Reject::BadSignature)
        );
    }
}
