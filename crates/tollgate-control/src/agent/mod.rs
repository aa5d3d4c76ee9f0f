//! Gateway-side sync agent (managed gateways: `tollgate run --control-plane URL …`).
//!
//! What it does, in order:
//! 1. **Enroll** once: `POST /v1/enroll` with the one-time token; the credential and the control
//!    plane's bundle-signing key are stored in the state directory (0600, see [`store`]). When
//!    `--cp-public-key` is given the key returned by enrollment must equal it; otherwise the key
//!    is trusted on first use over the TLS channel pinned by `--cp-fingerprint` (or verified by
//!    the system roots).
//! 2. **Start from the backup** if one is on disk: its signature is verified with the pinned
//!    key; a tampered or foreign backup is refused (the gateway then behaves as never
//!    configured). An *expired* backup still serves — fail static means the last good config
//!    keeps enforcing while the control plane is unreachable, which is safer than serving
//!    nothing — but it is logged at error level at start and reported as the last error.
//! 3. **Long-poll** `GET /v1/gateway/config?after=<applied>&wait=30` forever. Errors back off
//!    exponentially (1 s doubling to 30 s, jittered to 50–100 % so a fleet does not reconnect in
//!    lock-step). Each bundle is checked ([`check`]: signature, expiry, group, version > applied)
//!    and applied through the same validate-and-swap path as a local reload
//!    (`Reloader::apply_text`); a refused bundle leaves the old config serving. An applied bundle
//!    is written atomically to the state directory as the next backup.
//! 4. **Report status** (`POST /v1/gateway/status`) after every apply or refusal and every 30 s.
//!
//! A gateway that has no backup and has never received a bundle does not start its listeners
//! (see `tollgate run`): it has no policy to enforce and no listen addresses of its own, so it
//! waits for the first valid bundle, logging that it is not configured.

pub mod buffer;
pub mod check;
pub mod client;
pub mod store;
pub mod usage;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ed25519_dalek::VerifyingKey;
use http::{Method, StatusCode};
use tollgate_policy::Policy;
use tollgate_proxy::reload::{Reloader, load_policy_text};
use tollgate_telemetry::Metrics;

use crate::bundle::{self, SignedBundle};
use crate::protocol::{ApiError, EnrollRequest, EnrollResponse, StatusReport};
use check::Reject;
use client::{Client, ClientError};
use store::{Enrollment, StateDir, StoreError};

/// Default long-poll hold requested from the control plane.
pub const DEFAULT_WAIT_SECS: u64 = 30;
/// Default interval of periodic status reports.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(30);
/// Ask for a fresh signature of the serving bundle when it expires within this (7 days).
pub const RENEW_BEFORE_SECS: u64 = 7 * 24 * 3600;
/// At most one renewal request per this interval.
pub const RENEW_RETRY: Duration = Duration::from_secs(3600);
/// Largest pause between attempts while the control plane is failing.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// How `tollgate run` configures the agent.
#[derive(Debug, Clone)]
pub struct Options {
    pub control_plane: String,
    pub enroll_token: Option<String>,
    pub state_dir: PathBuf,
    /// `--cp-public-key`: the bundle-signing key to pin.
    pub pinned_key: Option<VerifyingKey>,
    /// `--cp-fingerprint`: SHA-256 of the control plane's TLS certificate.
    pub fingerprint: Option<[u8; 32]>,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub wait_secs: u64,
    pub status_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("not enrolled: {0} has no enrollment yet, and no --enroll-token was given")]
    NoToken(String),
    #[error("enrollment refused by the control plane ({status}): {message}")]
    EnrollRefused { status: u16, message: String },
    #[error("enrollment answer is invalid: {0}")]
    EnrollInvalid(String),
    #[error(
        "the control plane's signing key {got} does not match the pinned --cp-public-key {want}"
    )]
    KeyMismatch { got: String, want: String },
}

/// A verified bundle with its compiled policy, ready to build the gateway from.
pub struct Ready {
    pub signed: SignedBundle,
    pub policy: Policy,
    /// Whether it came from the on-disk backup (not from the control plane just now).
    pub from_backup: bool,
}

#[derive(Debug, Default)]
struct Shared {
    applied: u64,
    last_error: Option<String>,
    /// The last refused bundle (version, signature), so the same refusal polled again is not
    /// counted and logged again.
    last_rejected: Option<(u64, String)>,
    connected: Option<bool>,
    /// `expires_at` of the bundle serving (and backed up).
    expires_at: u64,
    /// Whether `last_error` is the "expired backup" warning (cleared by a renewal).
    serving_expired: bool,
    /// When a renewal of the serving bundle's signature was last asked for.
    renew_asked: Option<std::time::Instant>,
}

pub struct Agent {
    client: Client,
    store: StateDir,
    enrollment: Enrollment,
    keys: Vec<(String, VerifyingKey)>,
    metrics: Arc<Metrics>,
    wait_secs: u64,
    status_interval: Duration,
    started_at: u64,
    shared: Mutex<Shared>,
    /// The usage pipeline, once started (usage.rs).
    usage: std::sync::OnceLock<usage::Pipeline>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("control_plane", &self.client.base())
            .field("gateway_id", &self.enrollment.gateway_id)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn unix_now_f64() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Exponential back-off with jitter: 1 s, 2 s, 4 s … capped, each drawn from 50–100 % of the step.
#[derive(Debug)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    fn new() -> Self {
        Backoff { attempt: 0 }
    }
    fn reset(&mut self) {
        self.attempt = 0;
    }
    fn next(&mut self) -> Duration {
        let step = Duration::from_secs(1)
            .saturating_mul(1u32 << self.attempt.min(10))
            .min(BACKOFF_CAP);
        self.attempt = self.attempt.saturating_add(1);
        let mut r = [0u8; 2];
        // Without randomness the delay is simply the full step.
        let frac = if getrandom::fill(&mut r).is_ok() {
            f64::from(u16::from_le_bytes(r)) / f64::from(u16::MAX)
        } else {
            1.0
        };
        step.mul_f64(0.5 + 0.5 * frac)
    }
}

impl Agent {
    /// Opens the state directory and enrolls when not enrolled yet. Connection failures during
    /// enrollment are retried with back-off; a refusal (used or unknown token) is fatal.
    pub async fn start(opts: Options, metrics: Arc<Metrics>) -> Result<Arc<Agent>, AgentError> {
        let store = StateDir::open(&opts.state_dir)?;
        let client = Client::new(&opts.control_plane, opts.fingerprint)?;
        let enrollment = match store.enrollment()? {
            Some(e) => {
                if e.control_plane.trim_end_matches('/') != client.base() {
                    tracing::warn!(control_plane.enrolled = %e.control_plane, control_plane.url = %client.base(), "the control plane URL differs from the one this gateway enrolled with; using the new URL with the stored credential");
                }
                if let Some(want) = &opts.pinned_key {
                    let got = &e.control_plane_key.public_key_b64;
                    if *got != bundle::public_key_b64(want) {
                        return Err(AgentError::KeyMismatch {
                            got: got.clone(),
                            want: bundle::public_key_b64(want),
                        });
                    }
                }
                tracing::info!(gateway.id = %e.gateway_id, gateway.group = %e.group, state.dir = %store.path().display(), "already enrolled; the enrollment token is not needed");
                e
            }
            None => enroll(&client, &store, &opts, &metrics).await?,
        };
        let key = bundle::parse_public_key(&enrollment.control_plane_key.public_key_b64)
            .map_err(|e| AgentError::EnrollInvalid(e.to_string()))?;
        let keys = vec![(bundle::key_id(&key), key)];
        Ok(Arc::new(Agent {
            client,
            store,
            enrollment,
            keys,
            metrics,
            wait_secs: opts.wait_secs,
            status_interval: opts.status_interval,
            started_at: unix_now(),
            shared: Mutex::new(Shared::default()),
            usage: std::sync::OnceLock::new(),
        }))
    }

    pub fn gateway_id(&self) -> &str {
        &self.enrollment.gateway_id
    }

    pub fn group(&self) -> &str {
        &self.enrollment.group
    }

    pub fn control_plane(&self) -> &str {
        self.client.base()
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        // A poisoned lock only means another task panicked mid-update of plain values.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The applied bundle version (0 = none).
    pub fn applied(&self) -> u64 {
        self.shared().applied
    }

    /// The backup from the state directory, verified and compiled, or `None` (no backup, or
    /// one that must not serve: bad signature, foreign key, other group, invalid config).
    pub fn backup(&self) -> Option<Ready> {
        let signed = match self.store.backup() {
            Ok(Some(s)) => s,
            Ok(None) => return None,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the backup bundle; ignoring it");
                return None;
            }
        };
        let now = unix_now();
        let b = match check::verify_signature(&signed, &self.keys, now) {
            Ok(b) => b,
            Err(e) => {
                self.metrics.config_bundle_rejected(e.reason());
                tracing::error!(error = %e, "the backup bundle is refused; it will not serve");
                return None;
            }
        };
        if b.group != self.enrollment.group {
            tracing::error!(bundle.group = %b.group, gateway.group = %self.enrollment.group, "the backup bundle belongs to another group; it will not serve");
            return None;
        }
        if now >= b.expires_at {
            let msg = format!(
                "serving an expired backup bundle (version {}, expired at {}): the control plane \
                 has not been reachable to renew it",
                b.version, b.expires_at
            );
            tracing::error!(
                bundle.version = b.version,
                bundle.expires_at = b.expires_at,
                "{msg}"
            );
            let mut s = self.shared();
            s.last_error = Some(msg);
            s.serving_expired = true;
        }
        match load_policy_text(&b.config_yaml, &origin(b.version), b.version) {
            Ok(policy) => Some(Ready {
                policy,
                from_backup: true,
                signed,
            }),
            Err(e) => {
                tracing::error!(bundle.version = b.version, error = %e, "the backup bundle does not validate with this build; it will not serve");
                None
            }
        }
    }

    /// Long-polls until the first acceptable bundle arrives (for a gateway with no backup).
    pub async fn first_bundle(&self) -> Ready {
        let mut backoff = Backoff::new();
        loop {
            match self.poll_once(false).await {
                Ok(Some(signed)) => match self.check(&signed) {
                    Ok(()) => {
                        let b = &signed.bundle;
                        match load_policy_text(&b.config_yaml, &origin(b.version), b.version) {
                            Ok(policy) => {
                                return Ready {
                                    policy,
                                    from_backup: false,
                                    signed,
                                };
                            }
                            Err(e) => self.refused(
                                &signed,
                                Reject::InvalidConfig {
                                    version: b.version,
                                    message: e.to_string(),
                                },
                            ),
                        }
                        tokio::time::sleep(backoff.next()).await;
                    }
                    Err(reject) => {
                        self.refused(&signed, reject);
                        tokio::time::sleep(backoff.next()).await;
                    }
                },
                Ok(None) => backoff.reset(),
                Err(()) => {
                    tracing::warn!(
                        "not configured: no bundle from the control plane yet; the proxy listener stays closed"
                    );
                    tokio::time::sleep(backoff.next()).await;
                }
            }
        }
    }

    /// Records that `signed` is now serving (the gateway was built from it): metrics, and the
    /// backup when it came from the control plane rather than from the backup itself.
    pub fn started_with(&self, signed: &SignedBundle, from_backup: bool) {
        let b = &signed.bundle;
        let lag = (!from_backup).then(|| unix_now_f64() - b.issued_at as f64);
        self.metrics.config_bundle_applied(b.version, lag);
        {
            let mut s = self.shared();
            s.applied = b.version;
            s.expires_at = b.expires_at;
        }
        if !from_backup {
            self.save_backup(signed);
        }
        self.usage_event("config_applied", &b.version.to_string());
        tracing::info!(bundle.version = b.version, bundle.from_backup = from_backup, gateway.group = %b.group, "serving control-plane configuration");
    }

    /// Runs the long-poll loop and the periodic status reports until the process ends.
    pub fn spawn(self: &Arc<Self>, reloader: Arc<Reloader>) -> tokio::task::JoinHandle<()> {
        let status = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(status.status_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                status.report_status().await;
            }
        });
        let this = Arc::clone(self);
        tokio::spawn(async move { this.sync_loop(reloader).await })
    }

    async fn sync_loop(self: Arc<Self>, reloader: Arc<Reloader>) {
        let mut backoff = Backoff::new();
        loop {
            let renew = self.renewal_due();
            match self.poll_once(renew).await {
                Ok(Some(signed)) if renew && signed.bundle.version == self.applied() => {
                    self.renew(&signed).await;
                    backoff.reset();
                }
                Ok(Some(signed)) => {
                    if self.apply(&signed, &reloader).await {
                        backoff.reset();
                    } else {
                        // The control plane will offer the same bundle again: do not spin on it.
                        tokio::time::sleep(backoff.next()).await;
                    }
                }
                Ok(None) => backoff.reset(),
                Err(()) => tokio::time::sleep(backoff.next()).await,
            }
        }
    }

    /// Whether to ask for a fresh signature of the serving version: it expires within
    /// [`RENEW_BEFORE_SECS`] (or has expired — a start from an old backup). The long-poll only
    /// returns versions newer than the applied one, so without this the backup on disk of a
    /// group whose configuration never changes would expire. Asked at most once per
    /// [`RENEW_RETRY`]; the control plane re-signs bundles past half their lifetime.
    fn renewal_due(&self) -> bool {
        let mut s = self.shared();
        let due = s.applied > 0
            && unix_now().saturating_add(RENEW_BEFORE_SECS) >= s.expires_at
            && s.renew_asked.is_none_or(|t| t.elapsed() >= RENEW_RETRY);
        if due {
            s.renew_asked = Some(std::time::Instant::now());
        }
        due
    }

    /// Stores a re-signed copy of the serving version (same version, same configuration, later
    /// expiry) as the backup. A different configuration under the same version is refused.
    async fn renew(&self, signed: &SignedBundle) {
        let applied = self.applied();
        let b = match check::check(
            signed,
            &self.keys,
            &self.enrollment.group,
            applied.saturating_sub(1),
            unix_now(),
        ) {
            Ok(b) => b,
            Err(reject) => {
                self.refused(signed, reject);
                return;
            }
        };
        let same =
            matches!(self.store.backup(), Ok(Some(cur)) if cur.bundle.config_yaml == b.config_yaml);
        if !same {
            self.refused(
                signed,
                Reject::Rollback {
                    version: b.version,
                    applied,
                },
            );
            return;
        }
        self.save_backup(signed);
        {
            let mut s = self.shared();
            s.expires_at = b.expires_at;
            if s.serving_expired {
                s.serving_expired = false;
                s.last_error = None;
            }
        }
        tracing::info!(
            bundle.version = b.version,
            bundle.expires_at = b.expires_at,
            "renewed the signature of the serving bundle"
        );
        self.report_status().await;
    }

    /// Checks and applies one bundle; true when it is now serving.
    async fn apply(&self, signed: &SignedBundle, reloader: &Arc<Reloader>) -> bool {
        // The control plane offers a refused bundle again on every poll until it publishes a
        // newer one: refuse it quietly instead of validating and logging it each time.
        let id = (signed.bundle.version, signed.signature.clone());
        if self.shared().last_rejected.as_ref() == Some(&id) {
            return false;
        }
        if let Err(reject) = self.check(signed) {
            self.refused(signed, reject);
            self.report_status().await;
            return false;
        }
        let b = &signed.bundle;
        match reloader
            .apply_text(b.config_yaml.clone(), origin(b.version), b.version)
            .await
        {
            Ok(_) => {
                self.metrics
                    .config_bundle_applied(b.version, Some(unix_now_f64() - b.issued_at as f64));
                {
                    let mut s = self.shared();
                    s.applied = b.version;
                    s.expires_at = b.expires_at;
                    s.serving_expired = false;
                    s.last_error = None;
                    s.last_rejected = None;
                }
                self.save_backup(signed);
                self.usage_event("config_applied", &b.version.to_string());
                tracing::info!(bundle.version = b.version, gateway.group = %b.group, "applied control-plane configuration");
                self.report_status().await;
                true
            }
            Err(message) => {
                self.refused(
                    signed,
                    Reject::InvalidConfig {
                        version: b.version,
                        message,
                    },
                );
                self.report_status().await;
                false
            }
        }
    }

    fn check(&self, signed: &SignedBundle) -> Result<(), Reject> {
        check::check(
            signed,
            &self.keys,
            &self.enrollment.group,
            self.applied(),
            unix_now(),
        )
        .map(|_| ())
    }

    fn refused(&self, signed: &SignedBundle, reject: Reject) {
        let id = (signed.bundle.version, signed.signature.clone());
        let mut s = self.shared();
        if s.last_rejected.as_ref() == Some(&id) {
            return;
        }
        s.last_rejected = Some(id);
        s.last_error = Some(reject.to_string());
        drop(s);
        self.metrics.config_bundle_rejected(reject.reason());
        tracing::error!(bundle.version = signed.bundle.version, bundle.reject_reason = reject.reason(), error = %reject, "config bundle refused; the current configuration keeps serving");
    }

    fn save_backup(&self, signed: &SignedBundle) {
        if let Err(e) = self.store.save_backup(signed) {
            tracing::error!(error = %e, "cannot write the backup bundle; a restart without the control plane would not have this version");
        }
    }

    fn set_connected(&self, connected: bool, detail: &str) {
        self.metrics.control_plane_connected(connected);
        let before = self.shared().connected.replace(connected);
        match (before, connected) {
            (Some(true) | None, false) => {
                tracing::error!(control_plane.url = %self.client.base(), error = %detail, "control plane unreachable; the current configuration keeps serving (fail static)")
            }
            (Some(false), true) => {
                tracing::info!(control_plane.url = %self.client.base(), "control plane reachable again")
            }
            (Some(false), false) => {
                tracing::warn!(control_plane.url = %self.client.base(), error = %detail, "control plane still unreachable")
            }
            _ => {}
        }
    }

    /// One long-poll: `Ok(Some)` a bundle body that parsed, `Ok(None)` nothing new (204), `Err`
    /// the control plane failed (already logged and counted; the caller backs off).
    async fn poll_once(&self, renew: bool) -> Result<Option<SignedBundle>, ()> {
        // A renewal asks for the serving version itself, which the control plane has: no hold.
        let (after, wait) = if renew {
            (self.applied().saturating_sub(1), 0)
        } else {
            (self.applied(), self.wait_secs)
        };
        let path = format!("/v1/gateway/config?after={after}&wait={wait}");
        // The server holds the request up to `wait`; allow for that plus a slow network.
        let timeout = Duration::from_secs(self.wait_secs + 15);
        let reply = self
            .client
            .call(
                Method::GET,
                &path,
                Some(&self.enrollment.credential),
                None,
                timeout,
            )
            .await;
        match reply {
            Ok(r) if r.status == StatusCode::OK => {
                self.set_connected(true, "");
                match check::parse(&r.body) {
                    Ok(signed) => Ok(Some(signed)),
                    Err(reject) => {
                        self.metrics.config_bundle_rejected(reject.reason());
                        tracing::error!(error = %reject, "config bundle refused; the current configuration keeps serving");
                        self.shared().last_error = Some(reject.to_string());
                        Err(())
                    }
                }
            }
            Ok(r) if r.status == StatusCode::NO_CONTENT => {
                self.set_connected(true, "");
                Ok(None)
            }
            Ok(r) => {
                let detail = format!("HTTP {}: {}", r.status.as_u16(), api_message(&r.body));
                if r.status == StatusCode::UNAUTHORIZED {
                    tracing::error!(gateway.id = %self.enrollment.gateway_id, "the control plane refused this gateway's credential (revoked?); the current configuration keeps serving");
                }
                self.set_connected(false, &detail);
                Err(())
            }
            Err(e) => {
                self.set_connected(false, &e.to_string());
                Err(())
            }
        }
    }

    /// Sends `POST /v1/gateway/status`; failures are only logged (the next report retries).
    pub async fn report_status(&self) {
        let report = {
            let s = self.shared();
            StatusReport {
                applied_version: s.applied,
                healthy: s.applied > 0 && s.last_error.is_none(),
                last_error: s.last_error.clone(),
                started_at: self.started_at,
            }
        };
        let Ok(body) = serde_json::to_vec(&report) else {
            return;
        };
        match self
            .client
            .call(
                Method::POST,
                "/v1/gateway/status",
                Some(&self.enrollment.credential),
                Some(body),
                Duration::from_secs(10),
            )
            .await
        {
            Ok(r) if r.status.is_success() => {}
            Ok(r) => tracing::debug!(status = r.status.as_u16(), "status report not accepted"),
            Err(e) => tracing::debug!(error = %e, "status report failed"),
        }
    }
}

fn origin(version: u64) -> String {
    format!("control-plane bundle v{version}")
}

fn api_message(body: &[u8]) -> String {
    match serde_json::from_slice::<ApiError>(body) {
        Ok(e) => format!("{}: {}", e.error, e.message),
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    }
}

async fn enroll(
    client: &Client,
    store: &StateDir,
    opts: &Options,
    metrics: &Metrics,
) -> Result<Enrollment, AgentError> {
    let token = opts
        .enroll_token
        .clone()
        .ok_or_else(|| AgentError::NoToken(store.path().display().to_string()))?;
    let req = EnrollRequest {
        token,
        name: opts.name.clone(),
        labels: opts.labels.clone(),
    };
    let body = serde_json::to_vec(&req).map_err(|e| AgentError::EnrollInvalid(e.to_string()))?;
    let mut backoff = Backoff::new();
    let resp = loop {
        match client
            .call(
                Method::POST,
                "/v1/enroll",
                None,
                Some(body.clone()),
                Duration::from_secs(15),
            )
            .await
        {
            Ok(r) if r.status == StatusCode::OK => {
                metrics.control_plane_connected(true);
                break serde_json::from_slice::<EnrollResponse>(&r.body)
                    .map_err(|e| AgentError::EnrollInvalid(e.to_string()))?;
            }
            Ok(r) if r.status.is_client_error() => {
                return Err(AgentError::EnrollRefused {
                    status: r.status.as_u16(),
                    message: api_message(&r.body),
                });
            }
            Ok(r) => {
                metrics.control_plane_connected(false);
                tracing::warn!(status = r.status.as_u16(), error = %api_message(&r.body), "enrollment failed; retrying");
            }
            Err(e) => {
                metrics.control_plane_connected(false);
                tracing::warn!(error = %e, "cannot reach the control plane to enroll; retrying");
            }
        }
        tokio::time::sleep(backoff.next()).await;
    };
    let key = bundle::parse_public_key(&resp.control_plane_key.public_key_b64)
        .map_err(|e| AgentError::EnrollInvalid(e.to_string()))?;
    if bundle::key_id(&key) != resp.control_plane_key.key_id {
        return Err(AgentError::EnrollInvalid(format!(
            "key id {} does not name the key sent",
            resp.control_plane_key.key_id
        )));
    }
    if let Some(want) = &opts.pinned_key
        && *want != key
    {
        return Err(AgentError::KeyMismatch {
            got: resp.control_plane_key.public_key_b64.clone(),
            want: bundle::public_key_b64(want),
        });
    }
    let e = Enrollment {
        control_plane: client.base().to_owned(),
        gateway_id: resp.gateway_id,
        credential: resp.credential,
        group: resp.group,
        control_plane_key: resp.control_plane_key,
    };
    store.save_enrollment(&e)?;
    tracing::info!(gateway.id = %e.gateway_id, gateway.group = %e.group, control_plane.key_id = %e.control_plane_key.key_id, "enrolled with the control plane");
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let mut b = Backoff::new();
        let first = b.next();
        assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
        for _ in 0..20 {
            let d = b.next();
            assert!(d <= BACKOFF_CAP);
        }
        let late = b.next();
        assert!(late >= BACKOFF_CAP / 2, "{late:?}");
        b.reset();
        assert!(b.next() <= Duration::from_secs(1));
    }
}
