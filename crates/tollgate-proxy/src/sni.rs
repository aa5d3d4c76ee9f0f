//! Certificate selection by SNI host name for the TLS listener
//! (`listen.proxy_tls.certificates`): an exact name first, then a `*.` wildcard
//! covering exactly one label, then the default certificate. With no default,
//! a name nothing matches (or a ClientHello without SNI) gets no certificate
//! and rustls refuses the handshake with the fatal alert `access_denied`
//! (logged as `proxy_tls handshake failed`, error `unexpected error: no
//! server certificate chain resolved`, counted with `reason="other"`).
//!
//! The resolver is immutable: a reload builds a new one with the new files
//! ([`crate::tls_listener::server_config`]), so selection is a lookup in two
//! hash maps, with no lock and no allocation beyond lower-casing the name.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Picks the certificate for a ClientHello's SNI name.
#[derive(Debug, Default)]
pub struct SniResolver {
    /// Lower-case host name → certificate.
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Lower-case parent of a `*.` pattern (`example.org` for `*.example.org`) → certificate.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    pub fn new(default: Option<Arc<CertifiedKey>>) -> Self {
        Self {
            default,
            ..Self::default()
        }
    }

    /// Adds `host` (`name` or `*.parent`); a later entry for the same host replaces
    /// an earlier one (validation refuses duplicates before this).
    pub fn add(&mut self, host: &str, key: Arc<CertifiedKey>) {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        match host.strip_prefix("*.") {
            Some(parent) => self.wildcard.insert(parent.to_owned(), key),
            None => self.exact.insert(host, key),
        };
    }

    /// The certificate for `name` (the SNI value; `None` when the client sent none).
    pub fn select(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = name {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(k) = self.exact.get(&name) {
                return Some(k.clone());
            }
            // One label only: `a.example.org` matches `*.example.org`; the parent lookup
            // of `a.b.example.org` is `b.example.org`, so deeper names do not.
            if let Some((_, parent)) = name.split_once('.')
                && let Some(k) = self.wildcard.get(parent)
            {
                return Some(k.clone());
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.select(client_hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Arc<CertifiedKey> {
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        let kp = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&kp).unwrap();
        let der = rustls_pki_types::PrivateKeyDer::Pkcs8(kp.serialize_der().into());
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        Arc::new(CertifiedKey::from_der(vec![cert.der().clone()], der, &provider).unwrap())
    }

    #[test]
    fn exact_then_one_label_wildcard_then_default() {
        let (a, w, d) = (key("api.example.com"), key("*.example.org"), key("default"));
        let mut r = SniResolver::new(Some(d.clone()));
        r.add("API.example.com", a.clone());
        r.add("*.example.org", w.clone());
        let is = |got: Option<Arc<CertifiedKey>>, want: &Arc<CertifiedKey>| {
            Arc::ptr_eq(&got.unwrap(), want)
        };
        assert!(is(r.select(Some("api.EXAMPLE.com.")), &a));
        assert!(is(r.select(Some("x.example.org")), &w));
        assert!(is(r.select(Some("example.org")), &d));
        assert!(is(r.select(Some("a.b.example.org")), &d));
        assert!(is(r.select(Some("other.test")), &d));
        assert!(is(r.select(None), &d));
        let none = SniResolver::new(None);
        assert!(none.select(Some("api.example.com")).is_none());
    }
}
