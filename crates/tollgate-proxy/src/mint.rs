//! The interception CA and the leaf certificates it mints.
//!
//! `tollgate ca init` calls [`generate_ca`] / [`write_ca`]: an ECDSA P-256 CA
//! (the key type every rustls, OpenSSL, Java and Node client accepts), valid
//! for 10 years, path length 0 (it can sign leaves, not other CAs), written as
//! `ca.crt` and `ca.key` (mode 0600).
//!
//! [`Minter`] signs one leaf per host — SAN = the host name (or IP address),
//! ECDSA P-256, `serverAuth`, valid from one hour ago (clock skew) for
//! `tls_intercept.leaf_ttl` — and keeps it in a bounded cache, so a host's
//! certificate is minted once and reused until half its lifetime has passed.
//! When the cache is full the oldest minted entry is dropped.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The CA's subject common name.
pub const CA_COMMON_NAME: &str = "Tollgate Interception CA";
/// File names `tollgate ca init` writes in its directory.
pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";

/// Why a CA could not be created or loaded, or a leaf not minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    #[error("the CA certificate is not valid PEM: {0}")]
    CaCertPem(String),
    #[error("the CA key is not a valid PEM private key: {0}")]
    CaKeyPem(String),
    #[error("the CA key does not belong to the CA certificate")]
    KeyMismatch,
    #[error("{0} already exists (use --force to replace it)")]
    Exists(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A CA certificate and its private key, PEM-encoded.
pub struct CaPem {
    pub cert_pem: String,
    pub key_pem: String,
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// Creates a new interception CA (ECDSA P-256, 10 years, path length 0).
pub fn generate_ca() -> Result<CaPem, MintError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Tollgate");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now() - time::Duration::hours(1);
    params.not_after = now() + time::Duration::days(3650);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let cert = params.self_signed(&key)?;
    Ok(CaPem {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Writes a new CA to `dir/ca.crt` and `dir/ca.key` (mode 0600, created with
/// that mode so the key is never readable by others). Refuses to replace
/// existing files unless `force`. Returns the two paths.
pub fn write_ca(dir: &Path, force: bool) -> Result<(PathBuf, PathBuf), MintError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MintError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    if !force {
        for p in [&cert_path, &key_path] {
            if p.exists() {
                return Err(MintError::Exists(p.clone()));
            }
        }
    }
    let ca = generate_ca()?;
    write_private(&key_path, ca.key_pem.as_bytes()).map_err(io(&key_path))?;
    std::fs::write(&cert_path, ca.cert_pem.as_bytes()).map_err(io(&cert_path))?;
    Ok((cert_path, key_path))
}

#[cfg(unix)]
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file (`--force`) keeps its old mode on open: set it again.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, data)
}

struct Cached {
    key: Arc<CertifiedKey>,
    fresh_until: Instant,
}

/// Bounded map host → leaf, evicting in minting order.
struct LeafCache {
    map: HashMap<String, Cached>,
    order: VecDeque<String>,
    capacity: usize,
}

/// Signs leaf certificates with the interception CA.
pub struct Minter {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
    ttl: Duration,
    cache: Mutex<LeafCache>,
    minted: AtomicU64,
}

impl Minter {
    /// Loads the CA from PEM and checks the key belongs to the certificate.
    pub fn new(
        cert_pem: &str,
        key_pem: &str,
        ttl: Duration,
        capacity: usize,
    ) -> Result<Self, MintError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let ca_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| MintError::CaCertPem(e.to_string()))?;
        let key_der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| MintError::CaKeyPem(e.to_string()))?;
        let signer = provider.key_provider.load_private_key(key_der)?;
        CertifiedKey::new(vec![ca_der.clone()], signer)
            .keys_match()
            .map_err(|_| MintError::KeyMismatch)?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| MintError::CaKeyPem(e.to_string()))?;
        let issuer = Issuer::from_ca_cert_der(&ca_der, key)
            .map_err(|e| MintError::CaCertPem(e.to_string()))?;
        Ok(Self {
            issuer,
            ca_der,
            provider,
            ttl,
            cache: Mutex::new(LeafCache {
                map: HashMap::new(),
                order: VecDeque::new(),
                capacity: capacity.max(1),
            }),
            minted: AtomicU64::new(0),
        })
    }

    /// The crypto provider the leaves' keys were loaded with.
    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    /// How many leaves were minted since start (cache hits do not count).
    pub fn minted(&self) -> u64 {
        self.minted.load(Ordering::Relaxed)
    }

    /// The leaf for `host` (a lower-case DNS name or an IP address), from the
    /// cache or freshly minted. The cache lock is held while minting (well
    /// under a millisecond) so concurrent handshakes for one host mint once.
    pub fn leaf(&self, host: &str) -> Result<Arc<CertifiedKey>, MintError> {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = cache.map.get(host)
            && Instant::now() < c.fresh_until
        {
            return Ok(c.key.clone());
        }
        let key = Arc::new(self.mint(host)?);
        self.minted.fetch_add(1, Ordering::Relaxed);
        let entry = Cached {
            key: key.clone(),
            fresh_until: Instant::now() + self.ttl / 2,
        };
        if cache.map.insert(host.to_owned(), entry).is_none() {
            cache.order.push_back(host.to_owned());
        }
        while cache.map.len() > cache.capacity {
            let Some(oldest) = cache.order.pop_front() else {
                break;
            };
            cache.map.remove(&oldest);
        }
        Ok(key)
    }

    fn mint(&self, host: &str) -> Result<CertifiedKey, MintError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.to_owned().try_into()?),
        };
        params.subject_alt_names = vec![san];
        params.distinguished_name.push(DnType::CommonName, host);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now() - time::Duration::hours(1);
        let ttl = time::Duration::try_from(self.ttl).unwrap_or(time::Duration::days(1));
        params.not_after = now() + ttl;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signer = self.provider.key_provider.load_private_key(der)?;
        Ok(CertifiedKey::new(
            vec![cert.der().clone(), self.ca_der.clone()],
            signer,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mints_once_per_host_and_bounds_the_cache() {
        let ca = generate_ca().unwrap();
        let m = Minter::new(&ca.cert_pem, &ca.key_pem, Duration::from_secs(3600), 2).unwrap();
        let a = m.leaf("a.example").unwrap();
        let a2 = m.leaf("a.example").unwrap();
        assert!(Arc::ptr_eq(&a, &a2));
        assert_eq!(m.minted(), 1);
        m.leaf("b.example").unwrap();
        m.leaf("127.0.0.1").unwrap();
        assert_eq!(m.minted(), 3);
        // a.example was the oldest and was evicted: minted again.
        m.leaf("a.example").unwrap();
        assert_eq!(m.minted(), 4);
    }

    #[test]
    fn refuses_a_key_of_another_ca() {
        let a = generate_ca().unwrap();
        let b = generate_ca().unwrap();
        let err = Minter::new(&a.cert_pem, &b.key_pem, Duration::from_secs(3600), 2)
            .err()
            .unwrap();
        assert!(matches!(err, MintError::KeyMismatch), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn write_ca_makes_a_private_key_and_refuses_to_overwrite() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (crt, key) = write_ca(dir.path(), false).unwrap();
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(
            std::fs::read_to_string(&crt)
                .unwrap()
                .contains("BEGIN CERTIFICATE")
        );
        assert!(matches!(
            write_ca(dir.path(), false),
            Err(MintError::Exists(_))
        ));
        let before = std::fs::read(&key).unwrap();
        write_ca(dir.path(), true).unwrap();
        assert_ne!(before, std::fs::read(&key).unwrap());
    }
}
