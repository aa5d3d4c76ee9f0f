//! Configuration reload. A reload (file change, SIGHUP, `POST /admin/reload`)
//! loads and validates the new configuration off the hot path, compiles it into
//! a [`Policy`], builds the runtime pieces that depend on it, and swaps the
//! gateway's [`Active`] atomically. Requests in flight keep the `Arc<Active>`
//! they started with. An invalid configuration is rejected: the old one keeps
//! serving, and the error is kept for the admin API, logged and counted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde::Serialize;
use tollgate_config::{ConfigError, ConfigErrors, Loaded};
use tollgate_policy::Policy;

use crate::state::{Active, Gateway};

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// A YAML file or a directory of YAML files.
    Path(PathBuf),
    /// The configuration compiled into the binary.
    Embedded,
    /// Signed bundles from a control plane (managed gateway). Bundles arrive through
    /// [`Reloader::apply_text`]; a local reload (SIGHUP, `POST /admin/reload`) is refused,
    /// because the control plane, not the local operator, decides what this gateway serves.
    Managed { control_plane: String },
}

impl ConfigSource {
    pub fn describe(&self) -> String {
        match self {
            Self::Path(p) => p.display().to_string(),
            Self::Embedded => "<embedded default>".to_owned(),
            Self::Managed { control_plane } => format!("control plane {control_plane}"),
        }
    }

    fn load(&self) -> Result<Loaded, ConfigErrors> {
        match self {
            Self::Path(p) => tollgate_config::load_file(p),
            Self::Embedded => tollgate_config::embedded_default(),
            Self::Managed { control_plane } => Err(ConfigErrors(vec![ConfigError {
                file: self.describe(),
                line: 1,
                column: 1,
                path: String::new(),
                message: format!(
                    "this gateway is managed by the control plane {control_plane}: \
                     publish a new configuration there instead of reloading locally"
                ),
            }])),
        }
    }
}

/// Loads, validates and compiles a configuration. Semantic errors found while
/// compiling (bad patterns, unreadable secrets) are located in the source like
/// parse errors, so `tollgate validate` and a reload report them identically.
pub fn load_policy(source: &ConfigSource, version: u64) -> Result<Policy, ConfigErrors> {
    compile_loaded(source.load()?, version)
}

/// Like [`load_policy`] for configuration text that is not in a file (a control-plane
/// bundle); `origin` names it in error locations.
pub fn load_policy_text(yaml: &str, origin: &str, version: u64) -> Result<Policy, ConfigErrors> {
    compile_loaded(tollgate_config::load_str(yaml, origin)?, version)
}

fn compile_loaded(loaded: Loaded, version: u64) -> Result<Policy, ConfigErrors> {
    let Loaded {
        config,
        source: map,
    } = loaded;
    Policy::compile(Arc::new(config), version).map_err(|errors| {
        ConfigErrors(
            errors
                .into_iter()
                .map(|e| map.locate(&e.path, e.message))
                .collect(),
        )
    })
}

/// What the admin API shows about configuration state.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadStatus {
    pub source: String,
    pub version: u64,
    /// Unix seconds when the current version was applied.
    pub applied_at: u64,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// The most recent failed reload's errors, cleared by the next success.
    pub last_error: Option<String>,
    /// Unix seconds of the most recent failed reload.
    pub last_error_at: Option<u64>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub struct Reloader {
    source: ConfigSource,
    gateway: Arc<Gateway>,
    own_listeners: Vec<SocketAddr>,
    next_version: AtomicU64,
    status: ArcSwap<ReloadStatus>,
    /// One reload at a time; concurrent triggers queue behind it.
    lock: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// `initial_version` is the version of the policy the gateway was built with.
    pub fn new(
        source: ConfigSource,
        gateway: Arc<Gateway>,
        own_listeners: Vec<SocketAddr>,
        initial_version: u64,
    ) -> Arc<Self> {
        let status = ReloadStatus {
            source: source.describe(),
            version: initial_version,
            applied_at: unix_now(),
            reloads_ok: 0,
            reloads_failed: 0,
            last_error: None,
            last_error_at: None,
        };
        gateway.metrics.config_applied(initial_version);
        Arc::new(Self {
            source,
            gateway,
            own_listeners,
            next_version: AtomicU64::new(initial_version + 1),
            status: ArcSwap::from_pointee(status),
            lock: tokio::sync::Mutex::new(()),
        })
    }

    pub fn status(&self) -> Arc<ReloadStatus> {
        self.status.load_full()
    }

    pub fn source(&self) -> &ConfigSource {
        &self.source
    }

    /// Reloads now. Returns the new version, or the errors (one per line) when
    /// the new configuration was rejected and the old one kept.
    pub async fn reload(self: &Arc<Self>, trigger: &'static str) -> Result<u64, String> {
        let _one_at_a_time = self.lock.lock().await;
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        let this = Arc::clone(self);
        // Parsing, secret files and compilation are blocking work: keep them off the reactor.
        let built = tokio::task::spawn_blocking(move || {
            let policy = load_policy(&this.source, version).map_err(|e| e.to_string())?;
            this.build(policy)
        })
        .await;
        self.finish(built, version, trigger)
    }

    /// Applies configuration text (a verified control-plane bundle) through the same
    /// validate-and-swap path as [`Reloader::reload`]: on any error the old configuration
    /// keeps serving. `version` is the bundle's version, so the admin API, the metrics and
    /// the control plane all name the same number. The caller enforces ordering (no rollback).
    pub async fn apply_text(
        self: &Arc<Self>,
        yaml: String,
        origin: String,
        version: u64,
    ) -> Result<u64, String> {
        let _one_at_a_time = self.lock.lock().await;
        let this = Arc::clone(self);
        let built = tokio::task::spawn_blocking(move || {
            let policy = load_policy_text(&yaml, &origin, version).map_err(|e| e.to_string())?;
            this.build(policy)
        })
        .await;
        self.finish(built, version, "control_plane")
    }

    fn finish(
        &self,
        built: Result<Result<Active, String>, tokio::task::JoinError>,
        version: u64,
        trigger: &'static str,
    ) -> Result<u64, String> {
        let result = match built {
            Ok(r) => r,
            Err(e) => Err(format!("reload task failed: {e}")),
        };
        match result {
            Ok(active) => {
                self.gateway.active.store(Arc::new(active));
                self.gateway
                    .active
                    .load()
                    .groups
                    .start(&self.gateway.metrics);
                self.gateway.sync_state();
                self.gateway.sync_tracer();
                self.gateway.metrics.config_applied(version);
                self.status.rcu(|s| ReloadStatus {
                    version,
                    applied_at: unix_now(),
                    reloads_ok: s.reloads_ok + 1,
                    last_error: None,
                    last_error_at: None,
                    ..(**s).clone()
                });
                tracing::info!(config.version = version, config.source = %self.source.describe(), reload.trigger = trigger, "configuration reloaded");
                Ok(version)
            }
            Err(message) => {
                self.gateway.metrics.config_reload_failed();
                self.status.rcu(|s| ReloadStatus {
                    reloads_failed: s.reloads_failed + 1,
                    last_error: Some(message.clone()),
                    last_error_at: Some(unix_now()),
                    ..(**s).clone()
                });
                tracing::error!(config.source = %self.source.describe(), reload.trigger = trigger, error = %message, "configuration rejected; previous configuration keeps serving");
                Err(message)
            }
        }
    }

    fn build(&self, policy: Policy) -> Result<Active, String> {
        let current = self.gateway.active.load_full();
        warn_restart_only(current.policy.config(), policy.config());
        Active::build_counted(
            policy,
            &self.own_listeners,
            Some(&current),
            Some(&self.gateway.metrics),
        )
        .map_err(|e| e.to_string())
    }
}

/// Settings the gateway reads once at start: a reload that changes them is applied otherwise but
/// says, once per reload, which of them wait for a restart. The TLS listener's files are not among
/// them (they are re-read, tls_listener.rs, and watched, [`spawn_file_watcher`]); only its address is.
fn warn_restart_only(old: &tollgate_config::Config, new: &tollgate_config::Config) {
    let tls_addr = |l: &tollgate_config::Listen| l.proxy_tls.as_ref().map(|t| t.addr);
    let (ol, nl) = (&old.listen, &new.listen);
    let changed = [
        (
            "listen addresses",
            (ol.proxy, ol.admin, tls_addr(ol)) != (nl.proxy, nl.admin, tls_addr(nl)),
        ),
        ("state.dir", old.state.dir != new.state.dir),
        ("cache.max_bytes", old.cache != new.cache),
    ];
    for (what, _) in changed.iter().filter(|(_, c)| *c) {
        tracing::warn!(
            config.setting = what,
            "changed in the new configuration; it takes effect only after a restart"
        );
    }
}

/// Reloads on SIGHUP until the process ends.
pub fn spawn_sighup(reloader: Arc<Reloader>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = reloader.reload("sighup").await;
        }
    });
    Ok(())
}

/// How often the configuration file's metadata is checked for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Watches the configuration file (or directory) and reloads when its content
/// changes. It polls metadata every [`WATCH_INTERVAL`] rather than using
/// inotify: polling sees every way a file can change (in-place writes, editor
/// renames, Kubernetes ConfigMap symlink swaps) and costs nothing per request,
/// whereas a directory watch would wake on every write to any neighbouring
/// file, such as an access log kept beside the configuration. The content is
/// hashed only when the metadata changed, and a reload happens only when the
/// content did. Returns the task's handle.
///
/// The TLS listener's certificate and key files (`listen.proxy_tls`, as the
/// active configuration names them) are watched the same way: replacing one
/// reloads (trigger `tls_file_change`), and a certificate that fails to load
/// is a rejected reload — the previous certificates keep serving.
pub fn spawn_file_watcher(reloader: Arc<Reloader>) -> Option<tokio::task::JoinHandle<()>> {
    let ConfigSource::Path(path) = reloader.source().clone() else {
        return None;
    };
    Some(tokio::spawn(async move {
        let tls = |r: &Reloader| tls_files(&r.gateway);
        let mut stamp = metadata_stamp(&path);
        let mut content = fingerprint(&path);
        let mut tls_stamp = extra_stamp(&tls(&reloader));
        let mut tls_content = extra_fingerprint(&tls(&reloader));
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = metadata_stamp(&path);
            let tls_now = extra_stamp(&tls(&reloader));
            if now == stamp && tls_now == tls_stamp {
                continue;
            }
            stamp = now;
            tls_stamp = tls_now;
            let hashed = fingerprint(&path);
            let tls_hashed = extra_fingerprint(&tls(&reloader));
            let trigger = if hashed != content {
                "file_change"
            } else if tls_hashed != tls_content {
                "tls_file_change"
            } else {
                continue;
            };
            content = hashed;
            let _ = reloader.reload(trigger).await;
            // The reload may name other TLS files: watch those from now on.
            tls_stamp = extra_stamp(&tls(&reloader));
            tls_content = extra_fingerprint(&tls(&reloader));
        }
    }))
}

/// The TLS listener's certificate and key files in the active configuration.
fn tls_files(gateway: &Gateway) -> Vec<PathBuf> {
    let active = gateway.active.load();
    active
        .policy
        .config()
        .listen
        .proxy_tls
        .as_ref()
        .map(crate::tls_listener::watched_files)
        .unwrap_or_default()
}

/// Per file: modification time, length and identity (`None` while missing).
fn extra_stamp(files: &[PathBuf]) -> Vec<Option<(SystemTime, u64, u64)>> {
    use std::os::unix::fs::MetadataExt;
    files
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len(), m.ino()))
        })
        .collect()
}

/// Content fingerprint of `files` (a missing file hashes as missing).
fn extra_fingerprint(files: &[PathBuf]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in files {
        p.hash(&mut h);
        std::fs::read(p).ok().hash(&mut h);
    }
    h.finish()
}

/// Modification time, length and identity of the file (or of each entry of a
/// directory), following symlinks.
fn metadata_stamp(path: &Path) -> Option<Vec<(PathBuf, SystemTime, u64, u64)>> {
    use std::os::unix::fs::MetadataExt;
    let one = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((p.to_path_buf(), m.modified().ok()?, m.len(), m.ino()))
    };
    files(path)?.iter().map(|p| one(p)).collect()
}

/// The file itself, or the configuration files of a directory (the same list
/// the loader merges, so changes to other entries never trigger a reload).
fn files(path: &Path) -> Option<Vec<PathBuf>> {
    if !path.is_dir() {
        return Some(vec![path.to_path_buf()]);
    }
    tollgate_config::load::dir_files(path).ok()
}

/// A cheap content fingerprint so touching a file without changing it does not
/// bump the configuration version.
fn fingerprint(path: &Path) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in files(path)? {
        p.hash(&mut h);
        std::fs::read(&p).ok()?.hash(&mut h);
    }
    Some(h.finish())
}
