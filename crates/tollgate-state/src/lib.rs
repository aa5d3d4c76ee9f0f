//! Counter engine for Tollgate's rate limits and quotas: in-process ([`LocalStore`]) or shared
//! through Redis ([`RedisStore`]), behind one [`Store`] enum.
//!
//! # Semantics
//!
//! A request carries one [`LimitRequest`] per applicable limit. [`Store::check_all`] decides
//! them together: the request is admitted only if **every** limit admits it, and then each
//! limit is charged its `cost`; if **any** limit denies, **nothing** is charged anywhere (a
//! denied request consumes no quota). Decisions come back in request order.
//!
//! What counts: `cost` units per request (1 for "one request"; callers may pass bytes or
//! tokens). A `cost` of 0 is a peek: always allowed, charges nothing. A `cost` larger than the
//! limit (or burst) is always denied.
//!
//! Windows:
//! - [`Window::Second`], [`Window::Minute`], [`Window::Hour`], [`Window::Day`]: fixed windows
//!   aligned to the UTC clock, i.e. to multiples of their length since the Unix epoch (a minute
//!   window starts at `hh:mm:00.000`, a day window at 00:00 UTC).
//! - [`Window::LocalDay`]: the calendar day of a [`Zone`] (a fixed UTC offset or an IANA zone
//!   such as `Europe/Berlin`), from the first instant of the local day to the first instant of
//!   the next: 24 hours, or 23/25 hours across a daylight-saving change.
//! - [`Window::Month`]: a calendar month in a [`Zone`] that starts at the first instant (00:00
//!   local time) of `renewal_day`. In months shorter than `renewal_day` the period starts on
//!   that month's last day (renewal day 31 → April 30, February 28 or 29). `renewal_day` is
//!   clamped to 1..=31. Daylight-saving changes of an IANA zone are followed: the period
//!   always renews at local midnight.
//! - [`LimitSpec::Sliding`]: two-window approximation. Time is cut into sub-windows of
//!   `window_ms` aligned to the epoch; the estimate at time `t` is
//!   `ceil(prev × (window_ms − elapsed) / window_ms) + cur`, where `elapsed` is the time since
//!   the current sub-window began. Rounding up means the estimate never under-counts the
//!   proportion, so it never admits more than the exact weighted share would.
//! - [`LimitSpec::Gcra`]: generic cell rate algorithm (a token bucket without a refill task).
//!   Capacity `burst` units, refilled at `rate_per_sec` units per second (one unit every
//!   `round(1e6 / rate_per_sec)` µs). A full bucket admits `burst` units at once, then the
//!   steady rate.
//!
//! [`Decision`] fields: `limit` is the window's limit (the burst for GCRA); `remaining` is what is
//! left after this request (or now, if denied); `reset_after_ms` is when the counter returns to
//! its full limit (window end for fixed windows; when all recorded use has slid out for the
//! sliding window; when the bucket is full again for GCRA); `retry_after_ms` is 0 when allowed,
//! else the earliest wait after which this same request could fit if nothing else is charged.
//! When several limits are checked and one denies, the others are reported as they stand (no
//! charge, `allowed: false`, `retry_after_ms: 0`); the denying limit carries the retry time.
//! A key whose state is of another kind (its spec changed from, say, a fixed window to GCRA)
//! starts afresh.
//!
//! # Shares
//!
//! A fixed or sliding limit may be split between groups of consumers ([`ShareSpec`], carried by
//! [`LimitRequest::shares`]). Each group `j` has a guarantee `g_j = floor(limit × share_j)`
//! ([`guarantee`]) and its own counter, stored under `<key>|<group>`; the limit's total is the
//! sum of the groups' counters (for the sliding window, the estimate of the summed counters).
//! With `used_j` each group's count (its sliding estimate) and `total` the limit's, a request of
//! `cost` from group `i` is admitted if
//!
//! - `used_i + cost ≤ g_i` and `total + cost ≤ limit` (within its guarantee), or
//! - borrowing is on ([`Borrow`]) and `total + cost ≤ limit − reserved_i`, where `reserved_i`
//!   is the others' unused guarantee `Σ max(0, g_j − used_j)` over the groups `j ≠ i` that
//!   still hold a reservation: every other group with [`Borrow::Unallocated`] (so only the
//!   capacity no guarantee covers, `limit − Σ g_j`, can be borrowed), and only the **active**
//!   ones with [`Borrow::Idle`] (the default), so idle groups' guarantees can be borrowed too.
//!
//! A group is *active* when it was charged, or refused by this limit, in the current window or
//! the previous one (fixed windows: the previous aligned window of the same kind; sliding: the
//! previous sub-window); otherwise it is *idle*. Each group's counter records the instant it
//! was last charged or refused (`seen_ms`), which is the one write a refused request makes: it
//! consumes nothing, but claims the group's reservation back at once (a refused request of cost
//! 0, or one refused by another limit of the same request, marks nothing). An active group's
//! unused guarantee is never lent, so it is never pushed below its guarantee; what was lent
//! while it was idle stays used until it leaves the window.
//!
//! Only the requester's group is charged. `remaining` is what the group could still take after
//! this request: `max(min(g_i − used_i, limit − total), borrowable)`. `limit` is the whole
//! limit's. A refused request's `retry_after_ms` is the window end for fixed windows; for
//! sliding windows the earlier of "its own counter and the total have decayed enough" and (when
//! borrowing) "the total has decayed under `limit` minus the current reservations" (the
//! reservations may grow meanwhile, so it is a lower bound). GCRA limits cannot be shared (the
//! group is ignored; configuration rejects it).
//!
//! Precision: the Redis script does the same arithmetic in Lua doubles, exact for integers up
//! to 2^53 (limits and costs beyond that are not supported). GCRA keeps microseconds; locally
//! the injected clock has millisecond resolution, in Redis `TIME` gives microseconds.
//!
//! Time: [`LocalStore`] uses the process clock (or an injected instant via
//! [`LocalStore::check_all_at`]); [`RedisStore`] uses Redis' own clock (`TIME`) inside the
//! script, so gateways with skewed clocks agree on window edges. Calendar windows
//! ([`Window::LocalDay`], [`Window::Month`]) need the time-zone database, which Redis' Lua does
//! not have: the gateway computes the window boundaries around its own clock (see
//! [`algo::calendar_edges`]) and the script picks the window that contains Redis' time, so the
//! edges still follow Redis' clock as long as the two clocks differ by less than a window.

pub mod algo;
pub mod local;
pub mod redis;
pub mod zone;

pub use local::LocalStore;
pub use redis::{RedisConfig, RedisStore};
pub use zone::Zone;

/// Calendar/clock alignment of a fixed window. See the crate docs for exact boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Second,
    Minute,
    Hour,
    Day,
    /// The calendar day of a time zone (for UTC, [`Window::Day`] is the same window).
    LocalDay {
        zone: Zone,
    },
    Month {
        zone: Zone,
        renewal_day: u8,
    },
}

/// One limit's algorithm and parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LimitSpec {
    FixedWindow { limit: u64, window: Window },
    Sliding { limit: u64, window_ms: u64 },
    Gcra { rate_per_sec: f64, burst: u64 },
}

/// One limit to check for a request: the counter key, its spec and the units to charge.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitRequest {
    /// Counter key. For [`RedisStore`] the part before the first `:` names the group (normally
    /// the API) that becomes the Redis Cluster hash tag; all keys of one call must share it.
    pub key: String,
    pub spec: LimitSpec,
    pub cost: u64,
    /// Guaranteed shares of this limit between groups of consumers, and the requester's group.
    /// `None`: one plain counter. Only fixed and sliding windows support shares (a GCRA limit
    /// ignores them).
    pub shares: Option<ShareOf>,
}

impl LimitRequest {
    /// A plain (unshared) limit request.
    pub fn new(key: impl Into<String>, spec: LimitSpec, cost: u64) -> Self {
        Self {
            key: key.into(),
            spec,
            cost,
            shares: None,
        }
    }

    /// The counter keys this request reads: the key itself, or one key per share group
    /// (`<key>|<group>`), in group order. Shares without groups count as a plain limit.
    pub fn counter_keys(&self) -> Vec<String> {
        match &self.shares {
            Some(s) if !s.spec.groups.is_empty() => s
                .spec
                .groups
                .iter()
                .map(|g| group_key(&self.key, &g.name))
                .collect(),
            _ => vec![self.key.clone()],
        }
    }
}

/// The counter key of one share group of a shared limit.
pub fn group_key(key: &str, group: &str) -> String {
    format!("{key}|{group}")
}

/// How one limit is split between groups of consumers. Built once per limit from config;
/// see the crate docs ("Shares") for the admission rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareSpec {
    /// Every group with its guarantee in units (`floor(limit × share)`, see [`guarantee`]).
    /// The order must be the same on every call for one limit.
    pub groups: Vec<ShareGroup>,
    /// What a group may use beyond its guarantee.
    pub borrow: Borrow,
}

/// What a group of a shared limit may use beyond its own guarantee (see the crate docs,
/// "Shares").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Borrow {
    /// Nothing: each group gets at most its guarantee.
    Off,
    /// The capacity no guarantee covers; every other group's unused guarantee stays reserved.
    Unallocated,
    /// The capacity no guarantee covers plus the unused guarantees of idle groups (those not
    /// charged or refused in the current or previous window).
    #[default]
    Idle,
}

/// One group of a [`ShareSpec`]: a consumer, or every unlisted consumer together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareGroup {
    pub name: String,
    pub guarantee: u64,
}

/// The share split of a limit and which group the requester belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareOf {
    pub spec: std::sync::Arc<ShareSpec>,
    /// Index into `spec.groups`.
    pub group: usize,
}

impl ShareOf {
    /// The same split with every guarantee divided by `n` (rounded down), for deciding a
    /// `1/n` fair share of the limit locally.
    pub fn scaled(&self, n: u64) -> ShareOf {
        let n = n.max(1);
        ShareOf {
            spec: std::sync::Arc::new(ShareSpec {
                groups: self
                    .spec
                    .groups
                    .iter()
                    .map(|g| ShareGroup {
                        name: g.name.clone(),
                        guarantee: g.guarantee / n,
                    })
                    .collect(),
                borrow: self.spec.borrow,
            }),
            group: self.group,
        }
    }
}

/// `floor(limit × share)` for a share given in millionths (250 000 = 25%), in integers so the
/// result never depends on floating-point rounding. Shares above 100% are treated as 100%.
pub fn guarantee(limit: u64, share_millionths: u32) -> u64 {
    let ppm = u128::from(share_millionths.min(1_000_000));
    u64::try_from(u128::from(limit) * ppm / 1_000_000).unwrap_or(u64::MAX)
}

/// Outcome of one limit for one request. See the crate docs for each field's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    pub reset_after_ms: u64,
    pub retry_after_ms: u64,
}

/// Why a store could not decide. Local stores only fail on persistence.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The shared store did not answer in time or the connection failed. Safe to retry; callers
    /// apply the limit's `on_store_failure` (fail open locally or closed with 503).
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// The store answered with something unexpected (script error, wrong reply shape).
    #[error("state store protocol error: {0}")]
    Protocol(String),
    /// The request itself cannot be evaluated (e.g. keys of one call in different groups).
    #[error("invalid limit request: {0}")]
    Invalid(String),
    /// Reading or writing the persisted local counters failed.
    #[error("state persistence failed: {0}")]
    Persist(String),
}

/// The configured counter store. An enum rather than a trait object: two known backends.
#[derive(Debug, Clone)]
pub enum Store {
    Local(LocalStore),
    Redis(RedisStore),
}

impl Store {
    /// Decides all limits of one request atomically (all-or-nothing), charging on success.
    pub async fn check_all(&self, reqs: &[LimitRequest]) -> Result<Vec<Decision>, StoreError> {
        match self {
            Store::Local(s) => Ok(s.check_all(reqs)),
            Store::Redis(s) => s.check_all(reqs).await,
        }
    }

    /// Gives back what [`Store::check_all`] charged `reqs` when the request then did not go
    /// ahead (e.g. a concurrency limit refused it), so a request refused by one limit consumes
    /// none of the others. See [`algo::refund`]; best effort across a window edge.
    pub async fn refund(&self, reqs: &[LimitRequest]) -> Result<(), StoreError> {
        match self {
            Store::Local(s) => {
                s.refund(reqs);
                Ok(())
            }
            Store::Redis(s) => s.refund(reqs).await.map(|_| ()),
        }
    }

    /// Like [`Store::check_all`] but charges nothing (for reporting remaining quota).
    pub async fn peek_all(&self, reqs: &[LimitRequest]) -> Result<Vec<Decision>, StoreError> {
        match self {
            Store::Local(s) => Ok(s.peek_all(reqs)),
            Store::Redis(s) => s.peek_all(reqs).await,
        }
    }
}
