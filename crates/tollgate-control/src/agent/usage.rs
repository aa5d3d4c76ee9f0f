//! Usage upload of a managed gateway: every `interval` the proxy's aggregator
//! ([`tollgate_proxy::usage::Usage`]) is drained into one batch, which is written to the
//! durable buffer ([`super::buffer`]) *before* any upload is tried; then the buffered batches
//! are sent oldest first (`POST /v1/gateway/usage`) and each is deleted only once the control
//! plane acknowledged it. While the control plane is unreachable the batches wait on disk (up
//! to the bound) and are replayed in order afterwards; the control plane's (gateway, seq)
//! record makes a replay of an already stored batch a no-op.
//!
//! Between uploads the aggregator is also drained to the buffer every [`PERSIST_INTERVAL`]
//! (5 s, or `interval` when shorter), each drain as its own batch; the control plane sums
//! batches of the same minute into the same rows, so this only bounds what a crash can lose.
//!
//! What can still be lost: the usage recorded since the last drain when the process is killed
//! (SIGKILL, power loss): at most `min(interval, PERSIST_INTERVAL)` of usage, plus a request
//! still in flight (a graceful stop drains everything, see [`Agent::flush_usage`]); and
//! batches evicted past the bound (counted).

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use tollgate_proxy::state::Gateway;
use tollgate_proxy::usage::{LimitRow, Usage, limit_rows};

use super::Agent;
use super::buffer::Buffer;
use crate::protocol::UsageBatch;

/// Default drain/upload interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// How often usage recorded in memory is written to the on-disk buffer between uploads: the
/// most usage a gateway crash (SIGKILL) can lose.
pub const PERSIST_INTERVAL: Duration = Duration::from_secs(5);
/// Default bound of the on-disk buffer (64 MiB: weeks of a busy gateway's aggregated usage).
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Most rows (and events) per batch (the control plane accepts up to 10 000).
pub const BATCH_ROWS: usize = 5_000;
/// Name of the buffer directory inside the state directory.
pub const DIR: &str = "usage";

/// Usage pipeline settings (`tollgate run --usage-interval / --usage-buffer-max-bytes`).
#[derive(Debug, Clone, Copy)]
pub struct UsageOptions {
    pub interval: Duration,
    pub max_bytes: u64,
}

impl Default for UsageOptions {
    fn default() -> Self {
        UsageOptions {
            interval: DEFAULT_INTERVAL,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// The running pipeline (kept by the agent for [`Agent::flush_usage`]).
pub(super) struct Pipeline {
    usage: Arc<Usage>,
    buffer: Arc<Buffer>,
    /// Minute of the last batch that carried only limit rows (idle gateways report once a
    /// minute, not every interval).
    last_limits_minute: std::sync::atomic::AtomicU64,
}

impl Agent {
    /// Opens the buffer under the state directory and starts the drain/upload loop. Usage of
    /// the proxy is recorded into `usage` from now on (the caller stores it in the gateway).
    pub fn spawn_usage(
        self: &Arc<Self>,
        usage: Arc<Usage>,
        gateway: Arc<Gateway>,
        opts: UsageOptions,
    ) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let dir = self.store.path().join(DIR);
        let buffer = Arc::new(Buffer::open(
            &dir,
            opts.max_bytes,
            Arc::clone(&self.metrics),
        )?);
        let (batches, bytes) = buffer.size();
        if batches > 0 {
            tracing::info!(
                usage.buffered_batches = batches,
                usage.buffered_bytes = bytes,
                "usage batches buffered from an earlier run; replaying them to the control plane"
            );
        }
        let _ = self.usage.set(Pipeline {
            usage,
            buffer: Arc::clone(&buffer),
            last_limits_minute: std::sync::atomic::AtomicU64::new(0),
        });
        let this = Arc::clone(self);
        Ok(tokio::spawn(async move {
            let mut tick = tokio::time::interval(opts.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Drains to disk between uploads (bounds the crash loss window); not needed when
            // the upload interval is that short already.
            let persist_every = PERSIST_INTERVAL.min(opts.interval);
            let mut persist = tokio::time::interval_at(
                tokio::time::Instant::now() + persist_every,
                persist_every,
            );
            persist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick fires at once: replay what an earlier run left.
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = persist.tick(), if persist_every < opts.interval => {
                        let this2 = Arc::clone(&this);
                        let flushed = tokio::task::spawn_blocking(move || this2.flush_usage()).await;
                        if let Ok(Err(e)) = flushed {
                            tracing::error!(error = %e, "cannot write usage to the on-disk buffer; it stays in memory until the next try");
                        }
                        continue;
                    }
                }
                // Quota usage against each limit, as `GET /admin/limits` shows it now.
                let snapshot = tollgate_proxy::admin_limits::snapshot(&gateway).await;
                let limits = limit_rows(&snapshot, std::time::SystemTime::now());
                let this2 = Arc::clone(&this);
                let flushed = tokio::task::spawn_blocking(move || this2.flush_with(limits)).await;
                if let Ok(Err(e)) = flushed {
                    tracing::error!(error = %e, "cannot write usage to the on-disk buffer; this interval's usage stays in memory until the next try");
                }
                this.upload_usage(&buffer).await;
            }
        }))
    }

    /// Drains the aggregator into one buffered batch (no-op when nothing was recorded).
    /// Blocking (file I/O); also called at graceful shutdown after requests have drained.
    pub fn flush_usage(&self) -> std::io::Result<()> {
        self.flush_with(Vec::new())
    }

    /// [`Agent::flush_usage`] with the limit keys' state, sent with the first batch.
    fn flush_with(&self, mut limits: Vec<LimitRow>) -> std::io::Result<()> {
        let Some(p) = self.usage.get() else {
            return Ok(());
        };
        limits.truncate(BATCH_ROWS);
        let (mut rows, mut events) = p.usage.drain();
        if rows.is_empty() && events.is_empty() && !limits.is_empty() {
            // Limits alone do not make a batch unless they changed something worth storing:
            // an idle gateway with counters still in their window reports them once a minute.
            let minute = limits[0].minute;
            if p.last_limits_minute
                .swap(minute, std::sync::atomic::Ordering::Relaxed)
                == minute
            {
                return Ok(());
            }
        }
        let mut first = true;
        // Several batches when the interval saw many keys: each stays well under the control
        // plane's per-batch limit and request body limit.
        while !rows.is_empty() || !events.is_empty() || (first && !limits.is_empty()) {
            let rest_rows = rows.split_off(rows.len().min(BATCH_ROWS));
            let rest_events = events.split_off(events.len().min(BATCH_ROWS));
            let mut batch = UsageBatch {
                seq: 0,
                rows: std::mem::replace(&mut rows, rest_rows),
                events: std::mem::replace(&mut events, rest_events),
                limits: if first {
                    std::mem::take(&mut limits)
                } else {
                    Vec::new()
                },
            };
            first = false;
            let records = (batch.rows.len(), batch.events.len());
            let pushed = p.buffer.push(|seq| {
                batch.seq = seq;
                serde_json::to_vec(&batch).unwrap_or_default()
            });
            match pushed {
                Ok(pushed) => tracing::debug!(
                    usage.seq = pushed.seq,
                    usage.rows = records.0,
                    usage.events = records.1,
                    "usage batch buffered"
                ),
                Err(e) => {
                    // Put everything not yet buffered back: the next interval tries again.
                    batch.rows.append(&mut rows);
                    batch.events.append(&mut events);
                    p.usage.restore(batch.rows, batch.events);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// A usage event of the gateway itself (e.g. `config_applied`), when usage is on.
    pub(super) fn usage_event(&self, kind: &'static str, reason: &str) {
        if let Some(p) = self.usage.get() {
            p.usage.event(kind, reason);
        }
    }

    /// Sends buffered batches oldest first until the buffer is empty or a send fails.
    async fn upload_usage(&self, buffer: &Arc<Buffer>) {
        loop {
            let b = Arc::clone(buffer);
            let next = match tokio::task::spawn_blocking(move || b.oldest()).await {
                Ok(Ok(Some(n))) => n,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot read the usage buffer");
                    return;
                }
                Err(_) => return,
            };
            let (seq, body) = next;
            let reply = self
                .client
                .call(
                    Method::POST,
                    "/v1/gateway/usage",
                    Some(&self.enrollment.credential),
                    Some(body),
                    Duration::from_secs(30),
                )
                .await;
            let delete = match reply {
                Ok(r) if r.status.is_success() => {
                    self.metrics.usage_uploaded();
                    true
                }
                // Malformed or too large: sending it again cannot succeed, and it would block
                // every later batch. Counted and logged; the batch is dropped.
                Ok(r)
                    if r.status == StatusCode::BAD_REQUEST
                        || r.status == StatusCode::PAYLOAD_TOO_LARGE
                        || r.status == StatusCode::UNPROCESSABLE_ENTITY =>
                {
                    self.metrics.usage_rejected();
                    tracing::error!(usage.seq = seq, status = r.status.as_u16(), error = %super::api_message(&r.body), "the control plane refused a usage batch as invalid; dropping it");
                    true
                }
                Ok(r) => {
                    self.metrics.usage_upload_failed();
                    tracing::warn!(usage.seq = seq, status = r.status.as_u16(), error = %super::api_message(&r.body), "usage upload failed; the batch stays buffered");
                    false
                }
                Err(e) => {
                    self.metrics.usage_upload_failed();
                    tracing::debug!(usage.seq = seq, error = %e, "usage upload failed; the batch stays buffered");
                    false
                }
            };
            if !delete {
                return;
            }
            let b = Arc::clone(buffer);
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || b.ack(seq)).await {
                // It will be sent again; the control plane answers "duplicate".
                tracing::error!(usage.seq = seq, error = %e, "cannot delete an acknowledged usage batch");
                return;
            }
        }
    }
}
