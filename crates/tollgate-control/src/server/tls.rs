//! The control plane's HTTPS identity. With `--tls-cert`/`--tls-key` those files are served; without
//! them a self-signed certificate (names `localhost`, `127.0.0.1`, `::1` and the host name) is
//! generated once into `<data-dir>/tls/` and reused, and its SHA-256 fingerprint is printed at start
//! so gateways (`--cp-fingerprint`) and operators (`tollgate cp --ca-fingerprint`) can pin it.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};

use super::ServerError;

/// The TLS server config and the leaf certificate's fingerprint (lower-case hex SHA-256 of DER).
pub struct Identity {
    pub config: Arc<ServerConfig>,
    pub fingerprint: String,
}

pub fn load_or_generate(
    data_dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Identity, ServerError> {
    let (cert_path, key_path) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf()),
        (None, None) => {
            let dir = data_dir.join("tls");
            let c = dir.join("cert.pem");
            let k = dir.join("key.pem");
            if !c.exists() || !k.exists() {
                generate(&dir, &c, &k)?;
            }
            (c, k)
        }
        _ => {
            return Err(ServerError::Tls(
                "--tls-cert and --tls-key must be given together".into(),
            ));
        }
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ServerError::Tls(format!("{}: {e}", cert_path.display())))?;
    let leaf = certs
        .first()
        .ok_or_else(|| ServerError::Tls(format!("{}: no certificate", cert_path.display())))?;
    let fingerprint = crate::bundle::hex(&Sha256::digest(leaf.as_ref()));
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| ServerError::Tls(format!("{}: {e}", key_path.display())))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Identity {
        config: Arc::new(config),
        fingerprint,
    })
}

fn generate(dir: &Path, cert_path: &Path, key_path: &Path) -> Result<(), ServerError> {
    std::fs::create_dir_all(dir)?;
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        let h = h.trim();
        if !h.is_empty() && !names.iter().any(|n| n == h) {
            names.push(h.to_owned());
        }
    }
    let ck = rcgen::generate_simple_self_signed(names)
        .map_err(|e| ServerError::Tls(format!("cannot generate a certificate: {e}")))?;
    super::write_private(key_path, ck.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(cert_path, ck.cert.pem())?;
    tracing::info!(tls.cert = %cert_path.display(), "generated a self-signed control plane certificate");
    Ok(())
}
