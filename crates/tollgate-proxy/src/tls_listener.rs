//! The TLS proxy listener (`listen.proxy_tls`): the same hyper service as the
//! plain listener (forward proxy, CONNECT and routes) behind a rustls
//! acceptor offering ALPN `h2` and `http/1.1`, optionally authenticating
//! clients by certificate.
//!
//! Client certificates (`client_auth: optional | required`) are verified by
//! rustls' WebPKI verifier against `client_ca`, with the configured CRLs: a
//! revoked end-entity certificate fails the handshake. Only the client's own
//! certificate is checked against the CRLs, and a certificate whose issuer
//! published no configured CRL is accepted (its status is unknown, not
//! revoked). The verified certificate's subject CN, DNS and URI SANs travel
//! with the connection to the identify stage (`identify: { client_cert }`).
//!
//! What a client sees when refused — all at the TLS layer, before any HTTP,
//! so no `tollgate-error` and no access-log line (an `info` log line
//! `proxy_tls handshake failed` names the peer and the reason):
//! - no certificate while `client_auth: required` → the handshake fails
//!   (TLS 1.3: alert `certificate_required` after the client's Finished, so
//!   the first read fails);
//! - a certificate that does not chain to `client_ca`, is expired or is
//!   revoked by a CRL → fatal alert (`unknown_ca`, `certificate_expired`,
//!   `certificate_revoked`);
//! - handshake not finished within `server.header_read_timeout` → closed.
//!
//! Every failed handshake counts in `tollgate_tls_handshake_failures_total{reason}`.
//!
//! Certificates: the default `cert`/`key` and the SNI entries of
//! `certificates`, selected per handshake by [`crate::sni::SniResolver`].
//!
//! Reload: the certificates, keys, client CA and CRLs are re-read into a new
//! rustls configuration for every configuration ([`Active::proxy_tls`]); each
//! new connection takes the current one, connections already open keep
//! theirs. The configuration file watcher also watches the certificate and
//! key files ([`watched_files`]) and reloads when one changes. A reload that removes `listen.proxy_tls` makes the listener close
//! new connections at once; the address itself is bound at start.

use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tollgate_config::{ClientCertAuth, ProxyTls, SecretRef};
use tollgate_policy::ClientCert;

use crate::framing::Sniffer;
use crate::handler::ConnCtx;
use crate::sni::SniResolver;
use crate::state::{Active, Gateway};

/// Why the TLS listener's configuration could not be built (a configuration
/// build error located at [`ProxyTlsError::key_path`]).
#[derive(Debug, thiserror::Error)]
pub enum ProxyTlsError {
    #[error("listen.proxy_tls.cert {path}: {message}")]
    Cert { path: String, message: String },
    #[error("listen.proxy_tls.key: {0}")]
    Key(String),
    #[error("listen.proxy_tls.client_ca {path}: {message}")]
    ClientCa { path: String, message: String },
    #[error("listen.proxy_tls.crls[{index}] {path}: {message}")]
    Crl {
        index: usize,
        path: String,
        message: String,
    },
    #[error("listen.proxy_tls.certificates[{index}].cert {path}: {message}")]
    SniCert {
        index: usize,
        path: String,
        message: String,
    },
    #[error("listen.proxy_tls.certificates[{index}].key: {message}")]
    SniKey { index: usize, message: String },
    #[error("listen.proxy_tls: {0}")]
    Rustls(String),
}

impl ProxyTlsError {
    /// The configuration key the failure belongs to.
    pub fn key_path(&self) -> &'static str {
        match self {
            Self::Cert { .. } => "listen.proxy_tls.cert",
            Self::Key(_) => "listen.proxy_tls.key",
            Self::ClientCa { .. } => "listen.proxy_tls.client_ca",
            Self::Crl { .. } => "listen.proxy_tls.crls",
            Self::SniCert { .. } => "listen.proxy_tls.certificates.cert",
            Self::SniKey { .. } => "listen.proxy_tls.certificates.key",
            Self::Rustls(_) => "listen.proxy_tls",
        }
    }
}

/// `key`: `${file:..}` / `${env:..}` hold the PEM; a plain value is a path
/// unless it is itself a PEM block (as for `tls_intercept.ca_key`).
fn read_key(r: &SecretRef) -> Result<PrivateKeyDer<'static>, String> {
    let resolved = r.resolve().map_err(|e| e.to_string())?;
    let pem = match r {
        SecretRef::Literal(path) if !resolved.expose().contains("-----BEGIN") => {
            std::fs::read_to_string(path)
                .map(tollgate_config::Secret::new)
                .map_err(|e| format!("{path}: {e}"))?
        }
        _ => resolved,
    };
    // The parser's message never contains key material.
    PrivateKeyDer::from_pem_slice(pem.expose().as_bytes())
        .map_err(|e| format!("not a PEM private key ({e})"))
}

/// The files a reload re-reads for `cfg` (certificates and file-held keys), so the
/// configuration watcher can reload when one of them changes.
pub fn watched_files(cfg: &ProxyTls) -> Vec<std::path::PathBuf> {
    let key_file = |k: &SecretRef| match k {
        SecretRef::Literal(p) if !p.contains("-----BEGIN") => Some(p.clone()),
        SecretRef::File(p) => Some(p.clone()),
        _ => None,
    };
    let mut files: Vec<String> = cfg.cert.iter().cloned().collect();
    files.extend(cfg.key.as_ref().and_then(key_file));
    for c in &cfg.certificates {
        files.push(c.cert.clone());
        files.extend(key_file(&c.key));
    }
    files.into_iter().map(std::path::PathBuf::from).collect()
}

/// A certificate chain and its key, checked to belong together.
fn certified_key(
    provider: &rustls::crypto::CryptoProvider,
    cert: &str,
    key: &SecretRef,
    cert_err: impl Fn(String) -> ProxyTlsError,
    key_err: impl Fn(String) -> ProxyTlsError,
) -> Result<Arc<CertifiedKey>, ProxyTlsError> {
    let chain = read_certs(cert).map_err(&cert_err)?;
    let key = read_key(key).map_err(&key_err)?;
    CertifiedKey::from_der(chain, key, provider)
        .map(Arc::new)
        .map_err(|e| {
            key_err(format!(
                "does not match the certificate or is unusable ({e})"
            ))
        })
}

fn read_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("contains no PEM certificates".to_owned());
    }
    Ok(certs)
}

/// A CRL file: PEM (`-----BEGIN X509 CRL-----`, several allowed) or one DER CRL.
fn read_crls(path: &str) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let pem = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if !pem.is_empty() {
        return Ok(pem);
    }
    if bytes.first() == Some(&0x30) {
        return Ok(vec![CertificateRevocationListDer::from(bytes)]);
    }
    Err("contains no CRL (PEM or DER)".to_owned())
}

/// Builds the rustls server configuration for `cfg`, reading every file.
pub fn server_config(cfg: &ProxyTls) -> Result<Arc<ServerConfig>, ProxyTlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let default = match (&cfg.cert, &cfg.key) {
        (Some(cert), Some(key)) => Some(certified_key(
            &provider,
            cert,
            key,
            |message| ProxyTlsError::Cert {
                path: cert.clone(),
                message,
            },
            ProxyTlsError::Key,
        )?),
        // Validation refuses one without the other.
        _ => None,
    };
    let mut resolver = SniResolver::new(default);
    for (index, c) in cfg.certificates.iter().enumerate() {
        let key = certified_key(
            &provider,
            &c.cert,
            &c.key,
            |message| ProxyTlsError::SniCert {
                index,
                path: c.cert.clone(),
                message,
            },
            |message| ProxyTlsError::SniKey { index, message },
        )?;
        for host in &c.hosts {
            resolver.add(host, key.clone());
        }
    }
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ProxyTlsError::Rustls(e.to_string()))?;
    let builder = match (cfg.client_auth, &cfg.client_ca) {
        (ClientCertAuth::None, _) | (_, None) => builder.with_no_client_auth(),
        (auth, Some(ca)) => {
            let bad = |message: String| ProxyTlsError::ClientCa {
                path: ca.clone(),
                message,
            };
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca).map_err(bad)? {
                roots.add(cert).map_err(|e| bad(e.to_string()))?;
            }
            let mut crls = Vec::new();
            for (index, path) in cfg.crls.iter().enumerate() {
                crls.extend(read_crls(path).map_err(|message| ProxyTlsError::Crl {
                    index,
                    path: path.clone(),
                    message,
                })?);
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .with_crls(crls)
                    // The CRLs are about client certificates; an issuer without a
                    // configured CRL leaves its certificates' status unknown, not revoked.
                    .only_check_end_entity_revocation()
                    .allow_unknown_revocation_status();
            if auth == ClientCertAuth::Optional {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier.build().map_err(|e| match e {
                rustls::server::VerifierBuilderError::InvalidCrl(e) => ProxyTlsError::Crl {
                    index: 0,
                    path: cfg.crls.join(", "),
                    message: format!("invalid CRL ({e:?})"),
                },
                other => bad(other.to_string()),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The facts identify can match, read from a verified client certificate.
/// A certificate x509-parser cannot read yields no facts (it was verified,
/// so this does not happen in practice); the connection then identifies as
/// if it had presented none.
pub fn cert_facts(der: &[u8]) -> ClientCert {
    let mut facts = ClientCert::default();
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return facts;
    };
    for cn in cert.subject().iter_common_name() {
        if let Ok(s) = cn.as_str() {
            facts.subject_cn.push(s.to_owned());
        }
    }
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => {
                    facts.dns.push((*d).to_owned());
                }
                x509_parser::extensions::GeneralName::URI(u) => facts.uri.push((*u).to_owned()),
                _ => {}
            }
        }
    }
    facts
}

/// The metric label for a failed handshake (a fixed set).
fn failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    match e.get_ref().and_then(|i| i.downcast_ref::<Error>()) {
        Some(Error::NoCertificatesPresented) => "no_certificate",
        Some(Error::InvalidCertificate(CertificateError::Revoked)) => "revoked",
        Some(Error::InvalidCertificate(_)) => "bad_certificate",
        _ => "other",
    }
}

/// The TLS configuration new connections use, if the active config has one.
fn current(gateway: &Gateway) -> Option<Arc<ServerConfig>> {
    let active: Arc<Active> = gateway.active.load_full();
    active.proxy_tls.clone()
}

/// Serves the TLS listener until shutdown is triggered. Draining the
/// connections is left to [`crate::serve_proxy`], which waits on the same
/// shutdown tracker.
pub async fn serve_proxy_tls(listener: TcpListener, gateway: Arc<Gateway>) {
    let server_cfg = gateway.active.load().policy.config().server.clone();
    let builder = Arc::new(crate::server::builder(&server_cfg));
    let handshake_timeout = server_cfg.header_read_timeout.get();
    let limit = Arc::new(Semaphore::new(server_cfg.max_connections.max(1)));
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "TLS proxy listener has no local address");
            return;
        }
    };
    let stop = gateway.shutdown.triggered();
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = &mut stop => break,
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = &mut stop => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Taken per connection so a reload's new certificate applies at once.
        let Some(tls_cfg) = current(&gateway) else {
            tracing::debug!(net.peer = %peer, "listen.proxy_tls was removed; closing");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let track = gateway.shutdown.tracker().track();
        let gateway = gateway.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls_cfg);
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    gateway.metrics.tls_handshake_failed(failure_reason(&e));
                    tracing::info!(net.peer = %peer, error = %e, "proxy_tls handshake failed");
                    return;
                }
                Err(_) => {
                    gateway.metrics.tls_handshake_failed("timeout");
                    tracing::info!(
                        net.peer = %peer,
                        error = "timed out",
                        "proxy_tls handshake failed"
                    );
                    return;
                }
            };
            let client_cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| Arc::new(cert_facts(c)));
            let (stream, framing) = Sniffer::new(tls);
            let ctx = Arc::new(ConnCtx {
                gateway,
                peer,
                local,
                framing,
                tunnel: None,
                client_cert,
            });
            crate::server::serve_connection(stream, ctx, builder, permit, track).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_come_from_the_subject_and_sans() {
        let mut params = rcgen::CertificateParams::new(vec!["svc.example".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "svc-a");
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://example.org/ns/a".try_into().unwrap(),
        ));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let facts = cert_facts(cert.der());
        assert_eq!(facts.subject_cn, ["svc-a"]);
        assert_eq!(facts.dns, ["svc.example"]);
        assert_eq!(facts.uri, ["spiffe://example.org/ns/a"]);
        assert_eq!(cert_facts(b"not a certificate"), ClientCert::default());
    }
}
