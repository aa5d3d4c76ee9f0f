//! Signed session cookies and CSRF tokens.
//!
//! A session cookie is `v1.<subject>.<expires>.<mac>` where `mac` is HMAC-SHA256 over the rest
//! under a server key. The subject is never a secret itself (the control plane uses the
//! SHA-256 of the operator token, which is what it stores; the gateway a fixed name, with the
//! admin token folded into the key so rotating the token ends every session). The cookie is
//! `HttpOnly` (no script can read it), `SameSite=Strict` and `Secure` over HTTPS. Each POST form
//! carries a CSRF token derived from the cookie (HMAC under the same key with another label),
//! checked in constant time, so a request forged by another site fails even where SameSite is
//! not honoured.

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for i in 0..64 {
        ipad[i] ^= k[i];
        opad[i] ^= k[i];
    }
    let inner = Sha256::new()
        .chain_update(ipad)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(opad)
        .chain_update(inner)
        .finalize()
        .into()
}

fn hex(bytes: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(D[(b >> 4) as usize] as char);
        s.push(D[(b & 15) as usize] as char);
    }
    s
}

/// The key sessions are signed with.
#[derive(Clone)]
pub struct SessionKey([u8; 32]);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(***)")
    }
}

impl SessionKey {
    /// A key derived from a long-lived secret for one purpose (e.g. the control plane's
    /// signing-key seed, so every replica sharing that key accepts the same sessions).
    pub fn derive(secret: &[u8], purpose: &str) -> SessionKey {
        SessionKey(hmac_sha256(secret, purpose.as_bytes()))
    }

    /// A fresh random key (sessions end when the process restarts).
    pub fn random() -> Result<SessionKey, getrandom::Error> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k)?;
        Ok(SessionKey(k))
    }

    /// This key with extra material folded in (e.g. the current admin token).
    pub fn with(&self, extra: &[u8]) -> SessionKey {
        SessionKey(hmac_sha256(&self.0, extra))
    }

    /// A cookie value for `subject` (no `.` allowed in it) valid until `expires` (unix s).
    pub fn seal(&self, subject: &str, expires: u64) -> Option<String> {
        if subject.is_empty() || subject.contains(['.', ';', ',', ' ', '"', '\\']) {
            return None;
        }
        let body = format!("v1.{subject}.{expires}");
        let mac = hex(&hmac_sha256(&self.0, body.as_bytes()));
        Some(format!("{body}.{mac}"))
    }

    /// The subject of a valid, unexpired cookie value.
    pub fn open<'a>(&self, value: &'a str, now: u64) -> Option<&'a str> {
        let (body, mac) = value.rsplit_once('.')?;
        let want = hex(&hmac_sha256(&self.0, body.as_bytes()));
        if !bool::from(want.as_bytes().ct_eq(mac.as_bytes())) {
            return None;
        }
        let mut parts = body.split('.');
        let (Some("v1"), Some(subject), Some(exp), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let exp: u64 = exp.parse().ok()?;
        (now < exp).then_some(subject)
    }

    /// The CSRF token forms of this session carry.
    pub fn csrf(&self, cookie_value: &str) -> String {
        let mut msg = b"csrf:".to_vec();
        msg.extend_from_slice(cookie_value.as_bytes());
        hex(&hmac_sha256(&self.0, &msg))
    }

    /// Whether `presented` is this session's CSRF token (constant time).
    pub fn check_csrf(&self, cookie_value: &str, presented: &str) -> bool {
        self.csrf(cookie_value)
            .as_bytes()
            .ct_eq(presented.as_bytes())
            .into()
    }
}

/// A `Set-Cookie` value for a session cookie scoped to `path`.
pub fn set_cookie(name: &str, value: &str, path: &str, max_age: u64, secure: bool) -> String {
    format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

/// A `Set-Cookie` value that deletes the cookie.
pub fn clear_cookie(name: &str, path: &str, secure: bool) -> String {
    set_cookie(name, "", path, 0, secure)
}

/// The value of cookie `name` in a `Cookie` request header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn seal_and_open() {
        let k = SessionKey::derive(b"secret", "dashboard");
        let v = k.seal("abc123", 100).unwrap_or_default();
        assert_eq!(k.open(&v, 99), Some("abc123"));
        assert_eq!(k.open(&v, 100), None, "expired");
        let other = SessionKey::derive(b"secret", "gateway");
        assert_eq!(other.open(&v, 1), None, "another key");
        let tampered = v.replacen("abc123", "abc124", 1);
        assert_eq!(k.open(&tampered, 1), None);
        let longer = v.replacen(".100.", ".999.", 1);
        assert_eq!(k.open(&longer, 1), None);
        assert_eq!(k.seal("a.b", 1), None);
        assert_eq!(k.open("garbage", 1), None);
    }

    #[test]
    fn csrf_is_bound_to_the_session() {
        let k = SessionKey::derive(b"s", "p");
        let t = k.csrf("cookie-a");
        assert!(k.check_csrf("cookie-a", &t));
        assert!(!k.check_csrf("cookie-b", &t));
        assert!(!k.check_csrf("cookie-a", ""));
        assert!(!k.with(b"rotated").check_csrf("cookie-a", &t));
    }

    #[test]
    fn cookies() {
        assert_eq!(
            cookie("a=1; tg_session=xyz; b=2", "tg_session"),
            Some("xyz")
        );
        assert_eq!(cookie("a=1", "tg_session"), None);
        let c = set_cookie("s", "v", "/ui", 60, true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Secure"));
        assert!(!set_cookie("s", "v", "/ui", 60, false).contains("Secure"));
    }
}
