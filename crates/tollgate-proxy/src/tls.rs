//! The rustls client configuration for upstream TLS: aws-lc-rs, the system's
//! trusted roots plus an optional extra PEM CA file, and ALPN offering `h2`
//! (when enabled) and `http/1.1`.

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Why the upstream TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("upstream.ca_file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error(
        "no trusted root certificates: the system store is empty and no upstream.ca_file is set"
    )]
    NoRoots,
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

pub fn client_config(cfg: &tollgate_config::Upstream) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    // Unreadable individual system certificates are skipped, as every TLS
    // client does; an empty result is caught below.
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = &cfg.ca_file {
        let bad = |message: String| TlsConfigError::CaFile {
            path: path.clone(),
            message,
        };
        let iter = CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))?;
        let mut added = 0usize;
        for cert in iter {
            let cert = cert.map_err(|e| bad(e.to_string()))?;
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(bad("contains no PEM certificates".to_owned()));
        }
    }
    if roots.is_empty() {
        return Err(TlsConfigError::NoRoots);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = if cfg.http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(config))
}
