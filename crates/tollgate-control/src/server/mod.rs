//! `tollgate control-plane`: the HTTPS server gateways enroll with and pull signed config from,
//! and operators manage the fleet through (see [`crate::protocol`] for the API).
//!
//! Start-up, in order: create the data directory; open the store and run migrations; load or
//! create the ed25519 bundle-signing key (`<data-dir>/signing.key`, mode 0600); load or generate
//! the TLS identity; on the very first start create an `admin` operator token (returned once in
//! [`Running::admin_token`] for the CLI to print; only its hash is stored); bind and serve.
//!
//! Long-polls: each group has a `tokio::sync::watch` channel carrying its assigned version; a
//! publish sends on it, which wakes every gateway of the group holding a
//! `GET /v1/gateway/config` at once. With PostgreSQL the publish also NOTIFYs, and every
//! replica's LISTEN task wakes its own long-polls (see [`pg`]).

pub mod alerts;
mod api;
mod dashboard;
mod pg;
mod pg_tls;
pub(crate) mod rollout;
mod store;
mod tls;
pub mod usage;

pub use rollout::canary_bucket;
pub use store::{Operator, Role, Store, StoreError};

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::SigningKey;
use hyper_util::rt::TokioIo;
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::protocol::ControlPlaneKey;

/// How long a signed bundle stays valid after it is issued. Long, because a gateway that cannot
/// reach the control plane keeps serving from its backup; the expiry bounds how long a bundle
/// captured by an attacker could be replayed to a fresh gateway.
pub const BUNDLE_TTL_SECS: u64 = 30 * 24 * 3600;
/// How long an enrollment token can be used.
pub const ENROLLMENT_TTL_SECS: u64 = 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("signing key: {0}")]
    Key(String),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

/// Options of `tollgate control-plane`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub database_url: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// A started control plane.
#[derive(Debug)]
pub struct Running {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// Lower-case hex SHA-256 of the served TLS certificate (DER).
    pub fingerprint: String,
    /// Set on the first start only: the `admin` operator token, to print once.
    pub admin_token: Option<String>,
    /// The bundle-signing public key gateways pin.
    pub key: ControlPlaneKey,
    task: tokio::task::JoinHandle<()>,
    /// PostgreSQL LISTEN task (cross-replica wake-ups).
    listener_task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting connections (connections already open finish their current request).
    pub fn stop(self) {
        self.task.abort();
        if let Some(t) = self.listener_task {
            t.abort();
        }
    }

    /// Serves until the accept loop ends (it only ends on a fatal error or [`Running::stop`]).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Shared by every request.
pub(crate) struct AppState {
    pub store: Store,
    pub signing: SigningKey,
    pub key: ControlPlaneKey,
    /// Per group: the assigned version, for long-poll wake-ups.
    pub watchers: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl AppState {
    /// A receiver for the group's version channel (created on first use).
    pub fn subscribe(&self, group: &str) -> Option<watch::Receiver<u64>> {
        let mut map = self.watchers.lock().ok()?;
        Some(
            map.entry(group.to_owned())
                .or_insert_with(|| watch::channel(0).0)
                .subscribe(),
        )
    }

    /// Wakes every long-poll (each re-reads its group's assigned version): used while
    /// cross-replica notifications may be missed.
    pub fn wake_all(&self) {
        if let Ok(map) = self.watchers.lock() {
            for tx in map.values() {
                tx.send_modify(|_| {});
            }
        }
    }

    /// Wakes every long-poll of the group.
    pub fn notify(&self, group: &str, version: u64) {
        if let Ok(mut map) = self.watchers.lock() {
            map.entry(group.to_owned())
                .or_insert_with(|| watch::channel(0).0)
                .send_replace(version);
        }
    }
}

/// Starts the control plane and returns once it is listening.
pub async fn start(cfg: ServerConfig) -> Result<Running, ServerError> {
    std::fs::create_dir_all(&cfg.data_dir)?;
    let store = Store::open(&cfg.data_dir, cfg.database_url.as_deref()).await?;
    let signing = load_or_create_key(&cfg.data_dir.join("signing.key"))?;
    let vk = signing.verifying_key();
    let key = ControlPlaneKey {
        key_id: crate::bundle::key_id(&vk),
        public_key_b64: crate::bundle::public_key_b64(&vk),
    };
    let identity = tls::load_or_generate(
        &cfg.data_dir,
        cfg.tls_cert.as_deref(),
        cfg.tls_key.as_deref(),
    )?;
    let admin_token = if store.operator_count().await? == 0 {
        let token = random_token("tgop_")?;
        match store
            .create_operator(
                "admin".into(),
                Role::Admin,
                hash_token(&token),
                None,
                "system".into(),
            )
            .await
        {
            Ok(()) => Some(token),
            // Another replica on the same database created it first: it prints the token.
            Err(StoreError::Conflict(_)) => None,
            Err(e) => return Err(e.into()),
        }
    } else {
        None
    };
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| ServerError::Bind(cfg.listen, e))?;
    let addr = listener.local_addr()?;
    let state = Arc::new(AppState {
        store,
        signing,
        key: key.clone(),
        watchers: Mutex::new(HashMap::new()),
    });
    // PostgreSQL: publishes on other replicas wake this replica's long-polls.
    let weak = Arc::downgrade(&state);
    let listener_task = state.store.listen(Arc::new(move |w| {
        if let Some(state) = weak.upgrade() {
            match w {
                pg::Wake::Group(group, version) => state.notify(&group, version),
                pg::Wake::All => state.wake_all(),
            }
        }
    }));
    // Alert rules on stored usage (alerts.rs); the task ends with the server.
    alerts::spawn(Arc::downgrade(&state));
    let router = api::router(state);
    let acceptor = tokio_rustls::TlsAcceptor::from(identity.config);
    tracing::info!(
        listen.addr = %addr,
        tls.fingerprint = %identity.fingerprint,
        signing.key_id = %key.key_id,
        "control plane listening"
    );
    let task = tokio::spawn(accept_loop(listener, acceptor, router));
    Ok(Running {
        addr,
        fingerprint: identity.fingerprint,
        admin_token,
        key,
        task,
        listener_task,
    })
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    router: axum::Router,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Usually EMFILE: back off briefly instead of spinning.
                tracing::warn!(error = %e, "control plane accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            // A client that never finishes the handshake must not hold a task forever.
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(peer.addr = %peer, error = %e, "control plane TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |req| {
                let mut router = router.clone();
                tower_service::Service::call(&mut router, req)
            });
            // A client that never sends its request head must not hold a task either.
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(peer.addr = %peer, error = %e, "control plane connection ended");
            }
        });
    }
}

/// Writes a complete, restorable copy of a SQLite control plane's data directory to `out` (a new
/// directory, mode 0700): a consistent snapshot of `control-plane.db` (`VACUUM INTO`, safe
/// while a control plane is serving from `data_dir`), `signing.key` and, when present, the
/// generated `tls/` identity. Restore: stop the control plane and start it with
/// `--data-dir <out>` (or copy the files back). PostgreSQL deployments use `pg_dump`.
pub fn backup(data_dir: &Path, out: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::DirBuilderExt as _;
    let db = data_dir.join("control-plane.db");
    if !db.exists() {
        return Err(ServerError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{}: no SQLite database here", db.display()),
        )));
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(out)
        .map_err(|e| {
            ServerError::Io(std::io::Error::new(
                e.kind(),
                format!(
                    "{}: {e} (the backup directory must not exist)",
                    out.display()
                ),
            ))
        })?;
    store::sqlite_snapshot(&db, &out.join("control-plane.db"))?;
    let key = std::fs::read(data_dir.join("signing.key"))?;
    write_private(&out.join("signing.key"), &key)?;
    let tls = data_dir.join("tls");
    if tls.is_dir() {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(out.join("tls"))?;
        std::fs::write(
            out.join("tls/cert.pem"),
            std::fs::read(tls.join("cert.pem"))?,
        )?;
        write_private(
            &out.join("tls/key.pem"),
            &std::fs::read(tls.join("key.pem"))?,
        )?;
    }
    Ok(())
}

/// Loads the signing key seed (base64) or creates one with mode 0600.
fn load_or_create_key(path: &Path) -> Result<SigningKey, ServerError> {
    if path.exists() {
        let text = std::fs::read_to_string(path)?;
        let raw = B64
            .decode(text.trim().as_bytes())
            .map_err(|e| ServerError::Key(format!("{}: {e}", path.display())))?;
        let seed: [u8; 32] = raw
            .as_slice()
            .try_into()
            .map_err(|_| ServerError::Key(format!("{}: not a 32-byte seed", path.display())))?;
        return Ok(SigningKey::from_bytes(&seed));
    }
    let key = crate::bundle::generate_key().map_err(|e| ServerError::Key(e.to_string()))?;
    write_private(path, B64.encode(key.to_bytes()).as_bytes())?;
    tracing::info!(signing.key = %path.display(), "created the bundle signing key");
    Ok(key)
}

/// Writes a secret file readable by the owner only (created with mode 0600, never widened).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// A 256-bit random token with a recognisable prefix (so a leaked one can be found by grep).
pub(crate) fn random_token(prefix: &str) -> Result<String, ServerError> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| ServerError::Key(e.to_string()))?;
    Ok(format!("{prefix}{}", crate::bundle::hex(&raw)))
}

/// Hex SHA-256 of a token (see [`store`] for why an unsalted hash is right here).
pub(crate) fn hash_token(token: &str) -> String {
    crate::bundle::hex(&Sha256::digest(token.as_bytes()))
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
