//! The circuit breaker: stop sending to an API that keeps failing.
//!
//! Closed, every request goes upstream and each attempt's outcome is recorded
//! (failures are what `breaker.on` lists: by default 5xx, connect errors,
//! timeouts and resets). It opens after `consecutive_failures` failures in a
//! row, or when at least `min_requests` attempts in the sliding `window` saw a
//! failure share of `failure_rate` or more. Open, a client sees **503**
//! `tollgate-error: circuit_open` with `Retry-After: <seconds until half-open>`
//! and nothing is sent. After `open_for` it is half-open: `half_open_probes`
//! requests at a time go through; the first success closes it, a failure opens
//! it again for another `open_for`.
//!
//! The closed fast path is one atomic load; outcomes update a few atomics and a
//! short non-async mutex around the window's buckets. Time comes from tokio's
//! clock so tests can pause it.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tollgate_config::{Breaker as BreakerConfig, Condition};
use tollgate_telemetry::Metrics;

pub const CLOSED: u8 = 0;
pub const HALF_OPEN: u8 = 1;
pub const OPEN: u8 = 2;

/// Buckets the failure-rate window is divided into.
const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which bucket period (time / bucket length) these counts belong to.
    period: u64,
    total: u32,
    failures: u32,
}

/// One API's breaker.
pub struct Breaker {
    cfg: BreakerConfig,
    api: Arc<str>,
    metrics: Arc<Metrics>,
    epoch: Instant,
    state: AtomicU8,
    /// When it last opened, in ms after `epoch`.
    opened_at: AtomicU64,
    probes: AtomicU32,
    consecutive: AtomicU32,
    window: Mutex<[Bucket; BUCKETS]>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("api", &self.api)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// Leave to send one attempt; hand it back through [`Breaker::record`]. Dropped
/// without a record (client gone), it only frees its half-open probe slot.
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<Breaker>,
    probe: bool,
    done: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.probe && !self.done {
            self.breaker.probes.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Breaker {
    pub fn new(cfg: BreakerConfig, api: Arc<str>, metrics: Arc<Metrics>) -> Self {
        // The gauge exists (closed) from the start, so dashboards see every breaker.
        metrics.breaker_state(&api, i64::from(CLOSED));
        Self {
            cfg,
            api,
            metrics,
            epoch: Instant::now(),
            state: AtomicU8::new(CLOSED),
            opened_at: AtomicU64::new(0),
            probes: AtomicU32::new(0),
            consecutive: AtomicU32::new(0),
            window: Mutex::new([Bucket::default(); BUCKETS]),
        }
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.cfg
    }

    pub fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn open_for_ms(&self) -> u64 {
        u64::try_from(self.cfg.open_for.get().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether an attempt that ended with `status` (or the named failure) is a failure.
    pub fn is_failure(&self, outcome: Outcome) -> bool {
        self.cfg.on.iter().any(|c| match (outcome, c) {
            (Outcome::Status(s), c) => c.matches_status(s),
            (Outcome::Connect, Condition::Connect)
            | (Outcome::Timeout, Condition::Timeout)
            | (Outcome::Reset, Condition::Reset) => true,
            _ => false,
        })
    }

    fn transition(&self, from: u8, to: u8) -> bool {
        let ok = self
            .state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if ok {
            self.metrics.breaker_transition(&self.api, i64::from(to));
            tracing::info!(
                api = %self.api,
                breaker.from = state_name(from),
                breaker.to = state_name(to),
                "circuit breaker changed state"
            );
        }
        ok
    }

    fn open(&self, from: u8) {
        self.opened_at.store(self.now_ms(), Ordering::Release);
        if self.transition(from, OPEN) {
            self.consecutive.store(0, Ordering::Release);
            self.reset_window();
        }
    }

    fn reset_window(&self) {
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        *w = [Bucket::default(); BUCKETS];
    }

    /// While open: the time until it turns half-open.
    pub fn open_remaining(&self) -> Option<Duration> {
        if self.state() != OPEN {
            return None;
        }
        let since = self
            .now_ms()
            .saturating_sub(self.opened_at.load(Ordering::Acquire));
        Some(Duration::from_millis(
            self.open_for_ms().saturating_sub(since),
        ))
    }

    /// Leave to send, or the time until the breaker lets a probe through.
    pub fn acquire(self: &Arc<Self>) -> Result<Permit, Duration> {
        let mut state = self.state();
        if state == OPEN {
            let since = self
                .now_ms()
                .saturating_sub(self.opened_at.load(Ordering::Acquire));
            let open_for = self.open_for_ms();
            if since < open_for {
                return Err(Duration::from_millis(open_for - since));
            }
            // Whoever wins the swap announces it; everyone then competes for probe slots.
            self.transition(OPEN, HALF_OPEN);
            state = self.state();
        }
        if state == HALF_OPEN {
            let max = self.cfg.half_open_probes;
            let taken = self
                .probes
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                    (p < max).then_some(p + 1)
                })
                .is_ok();
            if !taken {
                // Probes are out; their result decides. Ask the client to come back soon.
                return Err(Duration::from_secs(1));
            }
            return Ok(Permit {
                breaker: self.clone(),
                probe: true,
                done: false,
            });
        }
        Ok(Permit {
            breaker: self.clone(),
            probe: false,
            done: false,
        })
    }

    /// Records the outcome of the attempt `permit` allowed.
    pub fn record(&self, mut permit: Permit, failure: bool) {
        permit.done = true;
        if permit.probe {
            self.probes.fetch_sub(1, Ordering::AcqRel);
            if failure {
                self.open(HALF_OPEN);
            } else if self.transition(HALF_OPEN, CLOSED) {
                self.consecutive.store(0, Ordering::Release);
                self.reset_window();
            }
            return;
        }
        // Outcomes of attempts that started before the breaker opened change nothing.
        if self.state() != CLOSED {
            return;
        }
        let consecutive = if failure {
            self.consecutive.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            self.consecutive.store(0, Ordering::Release);
            0
        };
        let (total, failures) = self.count(failure);
        let by_count =
            self.cfg.consecutive_failures > 0 && consecutive >= self.cfg.consecutive_failures;
        let rate = self.cfg.failure_rate.fraction();
        let by_rate = rate > 0.0
            && total >= self.cfg.min_requests
            && f64::from(failures) >= rate * f64::from(total);
        if failure && (by_count || by_rate) {
            self.open(CLOSED);
        }
    }

    /// Adds one outcome to the window; returns the window's (total, failures).
    fn count(&self, failure: bool) -> (u32, u32) {
        let window_ms = u64::try_from(self.cfg.window.get().as_millis())
            .unwrap_or(u64::MAX)
            .max(BUCKETS as u64);
        let bucket_ms = window_ms / BUCKETS as u64;
        let period = self.now_ms() / bucket_ms;
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = &mut w[(period % BUCKETS as u64) as usize];
        if slot.period != period {
            *slot = Bucket {
                period,
                ..Bucket::default()
            };
        }
        slot.total += 1;
        slot.failures += u32::from(failure);
        let oldest = period.saturating_sub(BUCKETS as u64 - 1);
        w.iter()
            .filter(|b| b.period >= oldest && b.period <= period && b.total > 0)
            .fold((0, 0), |(t, f), b| (t + b.total, f + b.failures))
    }
}

/// How one upstream attempt ended, for breaker and retry rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Status(u16),
    Connect,
    Timeout,
    Reset,
}

pub fn state_name(s: u8) -> &'static str {
    match s {
        CLOSED => "closed",
        HALF_OPEN => "half_open",
        _ => "open",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_config::resilience::Percentage;

    fn breaker(f: impl FnOnce(&mut BreakerConfig)) -> Arc<Breaker> {
        let mut cfg = BreakerConfig::default();
        f(&mut cfg);
        Arc::new(Breaker::new(cfg, "api".into(), Arc::new(Metrics::new())))
    }

    fn fail(b: &Arc<Breaker>) {
        let p = b.acquire().unwrap();
        b.record(p, true);
    }
    fn succeed(b: &Arc<Breaker>) {
        let p = b.acquire().unwrap();
        b.record(p, false);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_consecutive_failures_then_probes_and_closes() {
        let b = breaker(|c| {
            c.consecutive_failures = 3;
            c.open_for = tollgate_config::Duration::from_secs(10);
        });
        fail(&b);
        fail(&b);
        succeed(&b); // the run is broken
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), CLOSED);
        fail(&b);
        assert_eq!(b.state(), OPEN);
        assert_eq!(b.acquire().unwrap_err(), Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(b.acquire().unwrap_err(), Duration::from_secs(6));
        tokio::time::advance(Duration::from_secs(6)).await;
        // Half-open: one probe at a time.
        let probe = b.acquire().unwrap();
        assert_eq!(b.state(), HALF_OPEN);
        assert!(b.acquire().is_err());
        b.record(probe, false);
        assert_eq!(b.state(), CLOSED);
        succeed(&b);
        let text = b.metrics.encode();
        assert!(
            text.contains("tollgate_breaker_state{api=\"api\"} 0"),
            "{text}"
        );
        for to in ["open", "half_open", "closed"] {
            let line = format!("tollgate_breaker_transitions_total{{api=\"api\",to=\"{to}\"}} 1");
            assert!(text.contains(&line), "{line}\n{text}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens_and_dropped_probe_frees_its_slot() {
        let b = breaker(|c| {
            c.consecutive_failures = 1;
            c.open_for = tollgate_config::Duration::from_secs(5);
        });
        fail(&b);
        tokio::time::advance(Duration::from_secs(5)).await;
        let probe = b.acquire().unwrap();
        drop(probe); // the client went away: no verdict, the slot is free again
        let probe = b.acquire().unwrap();
        b.record(probe, true);
        assert_eq!(b.state(), OPEN);
        assert_eq!(b.acquire().unwrap_err(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_failure_rate_with_minimum_volume_in_window() {
        let b = breaker(|c| {
            c.consecutive_failures = 0;
            c.failure_rate = Percentage(50.0);
            c.min_requests = 10;
            c.window = tollgate_config::Duration::from_secs(10);
        });
        // 4 of 8 failed: the rate is there, the volume is not.
        for _ in 0..4 {
            succeed(&b);
            fail(&b);
        }
        assert_eq!(b.state(), CLOSED);
        // Those 8 age out of the window; 9 fresh successes and a failure stay below 50%.
        tokio::time::advance(Duration::from_secs(11)).await;
        for _ in 0..9 {
            succeed(&b);
        }
        fail(&b);
        assert_eq!(b.state(), CLOSED);
        for _ in 0..7 {
            fail(&b);
        }
        assert_eq!(b.state(), CLOSED, "8 of 17 failed");
        fail(&b);
        assert_eq!(b.state(), OPEN, "9 of 18 failed");
    }

    #[test]
    fn failure_conditions() {
        let b = breaker(|_| {});
        assert!(b.is_failure(Outcome::Status(502)));
        assert!(!b.is_failure(Outcome::Status(429)));
        assert!(b.is_failure(Outcome::Connect));
        assert!(b.is_failure(Outcome::Reset));
    }
}
