//! The transport-independent half, ported from the Python client's core.py so
//! both libraries make the same decisions: when a failure allows a direct
//! call, the circuit breaker, and the counters.
//!
//! The one rule: a request is re-sent directly only when it provably did not
//! reach the provider through the gateway — nothing was sent to the gateway,
//! or the gateway answered with its own fault code whose catalogue entry
//! (crates/tollgate-policy/src/error.rs) says nothing was sent upstream. A
//! policy answer (403, 429, ...) is returned to the caller as is.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Gateway faults after which nothing was sent upstream: any method may go direct.
pub const GATEWAY_FAULT_NOT_SENT: &[&str] = &["shutting_down", "limit_store_unavailable"];
/// Gateway faults after which the request may have been forwarded: only idempotent requests go direct.
pub const GATEWAY_FAULT_MAYBE_SENT: &[&str] = &["internal_error"];

/// RFC 9110 idempotent methods; any other method is idempotent only with an `Idempotency-Key`.
pub fn is_idempotent(method: &reqwest::Method, headers: &reqwest::header::HeaderMap) -> bool {
    matches!(
        method.as_str(),
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    ) || headers.contains_key("idempotency-key")
}

/// What happened on a gateway attempt that ended in an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing reached the gateway (refused, connect timeout, DNS).
    NotSent,
    /// The connection broke after the request may have been written.
    MaybeSent,
    /// The gateway (or the provider behind it) is slow: not a fault signal.
    Timeout,
    /// CONNECT answered non-2xx: the status alone cannot tell policy from fault.
    TunnelRefused,
    /// Anything else: surfaced unchanged.
    Other,
}

/// Go direct or not, and whether the attempt counts against the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub fallback: bool,
    pub reason: String,
    pub gateway_fault: bool,
    pub code: Option<String>,
}

/// After an error on the gateway attempt.
pub fn decide_on_error(
    kind: Outcome,
    detail: &str,
    idempotent: bool,
    resendable: bool,
) -> Decision {
    let (fallback, gateway_fault) = match kind {
        Outcome::NotSent => (resendable, true),
        // The gateway may already have forwarded it: re-send only what is idempotent.
        Outcome::MaybeSent => (idempotent && resendable, true),
        _ => (false, false),
    };
    Decision {
        fallback,
        reason: detail.to_string(),
        gateway_fault,
        code: None,
    }
}

/// After the gateway answered; `code` is its `tollgate-error` header (None
/// when the response is the provider's). Only the gateway's own faults go direct.
pub fn decide_on_response(code: Option<&str>, idempotent: bool, resendable: bool) -> Decision {
    let code_owned = code.map(str::to_string);
    match code {
        Some(c) if GATEWAY_FAULT_NOT_SENT.contains(&c) => Decision {
            fallback: resendable,
            reason: "gateway_error".into(),
            gateway_fault: true,
            code: code_owned,
        },
        Some(c) if GATEWAY_FAULT_MAYBE_SENT.contains(&c) => Decision {
            fallback: idempotent && resendable,
            reason: "gateway_error".into(),
            gateway_fault: true,
            code: code_owned,
        },
        _ => Decision {
            fallback: false,
            reason: "answered".into(),
            gateway_fault: false,
            code: code_owned,
        },
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain counters/state: keep going.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A snapshot of the counters (`FailSafeClient::stats()`, `global_stats()`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Managed requests answered through the gateway.
    pub via_gateway: u64,
    /// Requests sent directly because the gateway was unavailable.
    pub fallbacks: u64,
    /// Fallbacks by reason (`gateway_unreachable`, `connect_timeout`, `breaker_open`,
    /// `connection_lost`, `gateway_error:<code>`).
    pub fallbacks_by_reason: BTreeMap<String, u64>,
    /// Gateway failures raised to the caller because a re-send could duplicate the request.
    pub not_resent: u64,
    pub breaker_opened: u64,
    pub probes: u64,
    /// Requests to hosts that are not managed (sent direct, not a fallback).
    pub unmanaged: u64,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Counter {
    ViaGateway,
    NotResent,
    BreakerOpened,
    Probes,
    Unmanaged,
}

impl Stats {
    pub(crate) fn incr(&mut self, c: Counter) {
        let slot = match c {
            Counter::ViaGateway => &mut self.via_gateway,
            Counter::NotResent => &mut self.not_resent,
            Counter::BreakerOpened => &mut self.breaker_opened,
            Counter::Probes => &mut self.probes,
            Counter::Unmanaged => &mut self.unmanaged,
        };
        *slot += 1;
    }

    pub(crate) fn fallback(&mut self, reason: &str) {
        self.fallbacks += 1;
        *self
            .fallbacks_by_reason
            .entry(reason.to_string())
            .or_default() += 1;
    }
}

static GLOBAL: Mutex<Stats> = Mutex::new(Stats {
    via_gateway: 0,
    fallbacks: 0,
    fallbacks_by_reason: BTreeMap::new(),
    not_resent: 0,
    breaker_opened: 0,
    probes: 0,
    unmanaged: 0,
});

/// Totals over every client in the process.
pub fn global_stats() -> Stats {
    lock(&GLOBAL).clone()
}

/// Per-client counters, also summed into the process-wide totals.
#[derive(Debug, Default)]
pub(crate) struct Counters(Mutex<Stats>);

impl Counters {
    pub(crate) fn incr(&self, c: Counter) {
        lock(&self.0).incr(c);
        lock(&GLOBAL).incr(c);
    }
    pub(crate) fn fallback(&self, reason: &str) {
        lock(&self.0).fallback(reason);
        lock(&GLOBAL).fallback(reason);
    }
    pub(crate) fn snapshot(&self) -> Stats {
        lock(&self.0).clone()
    }
}

/// Breaker state as `FailSafeClient::breaker_state()` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// What `Breaker::acquire` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    Normal,
    Probe,
}

#[derive(Debug)]
struct BreakerInner {
    state: BreakerState,
    failures: u32,
    opened_at: Instant,
    probe_out: bool,
}

/// Closed: every managed request tries the gateway. After `threshold`
/// consecutive gateway faults it opens: requests go direct for `cooldown`
/// without trying. Then it is half-open: exactly one request (the probe) tries
/// the gateway while the others keep going direct; the probe's success closes
/// it, its failure re-opens it for another cool-down. Nothing ever disables
/// the gateway for good.
#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    inner: Mutex<BreakerInner>,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold,
            cooldown,
            inner: Mutex::new(BreakerInner {
                state: BreakerState::Closed,
                failures: 0,
                opened_at: Instant::now(),
                probe_out: false,
            }),
        }
    }

    fn tick(&self, b: &mut BreakerInner) {
        if b.state == BreakerState::Open && b.opened_at.elapsed() >= self.cooldown {
            b.state = BreakerState::HalfOpen;
            b.probe_out = false;
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        let mut b = lock(&self.inner);
        self.tick(&mut b);
        b.state
    }

    /// None: go direct without trying.
    pub(crate) fn acquire(&self) -> Option<Slot> {
        let mut b = lock(&self.inner);
        self.tick(&mut b);
        match b.state {
            BreakerState::Closed => Some(Slot::Normal),
            BreakerState::HalfOpen if !b.probe_out => {
                b.probe_out = true;
                Some(Slot::Probe)
            }
            _ => None,
        }
    }

    pub(crate) fn success(&self) {
        let mut b = lock(&self.inner);
        b.state = BreakerState::Closed;
        b.failures = 0;
        b.probe_out = false;
    }

    /// Records a gateway fault; true when this opened the breaker.
    pub(crate) fn failure(&self) -> bool {
        let mut b = lock(&self.inner);
        b.failures = b.failures.saturating_add(1);
        let opens = b.state == BreakerState::HalfOpen
            || (b.state == BreakerState::Closed && b.failures >= self.threshold);
        if opens {
            b.state = BreakerState::Open;
            b.opened_at = Instant::now();
            b.probe_out = false;
        }
        opens
    }

    /// The probe ended without telling anything about the gateway (e.g. a read timeout).
    pub(crate) fn release_probe(&self) {
        lock(&self.inner).probe_out = false;
    }

    /// Open now (a failed start-up health check): direct until the next probe.
    pub(crate) fn trip(&self) {
        let mut b = lock(&self.inner);
        b.state = BreakerState::Open;
        b.opened_at = Instant::now();
        b.probe_out = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_table_matches_the_python_client() {
        // Nothing sent: any resendable request goes direct.
        assert!(decide_on_error(Outcome::NotSent, "gateway_unreachable", false, true).fallback);
        // Maybe sent: only idempotent.
        assert!(!decide_on_error(Outcome::MaybeSent, "connection_lost", false, true).fallback);
        assert!(decide_on_error(Outcome::MaybeSent, "connection_lost", true, true).fallback);
        // Timeouts and refused tunnels are not faults and never go direct.
        for k in [Outcome::Timeout, Outcome::TunnelRefused, Outcome::Other] {
            let d = decide_on_error(k, "x", true, true);
            assert!(!d.fallback && !d.gateway_fault);
        }
        assert!(decide_on_response(Some("shutting_down"), false, true).fallback);
        assert!(decide_on_response(Some("limit_store_unavailable"), false, true).fallback);
        assert!(!decide_on_response(Some("internal_error"), false, true).fallback);
        assert!(decide_on_response(Some("internal_error"), true, true).fallback);
        for policy in [
            "rate_limited",
            "endpoint_not_allowed",
            "upstream_connect_failed",
            "circuit_open",
        ] {
            let d = decide_on_response(Some(policy), true, true);
            assert!(!d.fallback && !d.gateway_fault, "{policy}");
        }
        assert!(!decide_on_response(None, true, true).fallback);
    }

    #[test]
    fn breaker_opens_probes_once_and_closes() {
        let b = Breaker::new(2, Duration::ZERO);
        assert!(!b.failure());
        assert!(b.failure());
        // Zero cool-down: half-open at once; exactly one probe.
        assert_eq!(b.acquire(), Some(Slot::Probe));
        assert_eq!(b.acquire(), None);
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
        let slow = Breaker::new(1, Duration::from_secs(3600));
        assert!(slow.failure());
        assert_eq!(slow.acquire(), None);
        assert_eq!(slow.state(), BreakerState::Open);
    }
}
