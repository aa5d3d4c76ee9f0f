//! The dashboard's view of the fleet's usage and events, read through the usage store
//! functions (`server::usage`). Kept behind this one adapter so the pages do not depend on the
//! storage shapes; `None` would mean that kind of data is not stored.

use crate::server::AppState;
use crate::server::usage::{EventQuery, UsageDim, UsageQuery};

use super::UiError;

/// Split a query by one dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum By {
    Group,
    Api,
    Consumer,
    Endpoint,
}

/// One bucket (or, with `step == 0`, the whole range) of usage.
#[derive(Debug, Clone, Default)]
pub(crate) struct Point {
    pub t: u64,
    pub key: String,
    pub requests: u64,
    pub errors: u64,
    pub limited: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

/// A fleet audit event (denials, DLP hits, limit breaches …), aggregated per minute.
#[derive(Debug, Clone, Default)]
pub(crate) struct Event {
    pub gateway: String,
    pub group: String,
    pub api: String,
    pub consumer: String,
    pub reason: String,
    pub count: u64,
    pub last_at_ms: u64,
}

/// A limit's use against its quota at one point in time (the highest use in the bucket).
#[derive(Debug, Clone, Default)]
pub(crate) struct LimitUse {
    pub t: u64,
    pub group: String,
    /// The reporting gateway (`global` limits are one shared counter every gateway reports).
    pub gateway: String,
    pub api: String,
    pub limit: String,
    /// `-` (the whole API), a consumer name, …
    pub key: String,
    pub scope: String,
    pub used: u64,
    pub max: u64,
}

/// What a page asks for.
#[derive(Debug, Clone)]
pub(crate) struct Query {
    /// Always set for a group-scoped operator.
    pub group: Option<String>,
    pub from: u64,
    pub to: u64,
    pub step: u64,
    pub by: Option<By>,
}

impl By {
    fn dim(self) -> UsageDim {
        match self {
            By::Group => UsageDim::Group,
            By::Api => UsageDim::Api,
            By::Consumer => UsageDim::Consumer,
            By::Endpoint => UsageDim::Endpoint,
        }
    }
}

pub(crate) async fn usage(state: &AppState, q: Query) -> Result<Option<Vec<Point>>, UiError> {
    let points = state
        .store
        .usage(UsageQuery {
            group: q.group,
            from: q.from,
            to: q.to,
            step: q.step,
            by: q.by.map(By::dim),
            ..UsageQuery::default()
        })
        .await?;
    Ok(Some(
        points
            .into_iter()
            .map(|p| Point {
                t: p.t,
                key: p.key,
                requests: p.requests,
                errors: p.errors,
                limited: p.limited,
                bytes_in: p.bytes_in,
                bytes_out: p.bytes_out,
                p50_ms: p.p50_ms,
                p90_ms: p.p90_ms,
                p99_ms: p.p99_ms,
            })
            .collect(),
    ))
}

/// Each limit's use against its quota, as the gateways report it.
pub(crate) async fn limits(state: &AppState, q: Query) -> Result<Option<Vec<LimitUse>>, UiError> {
    let points = state
        .store
        .usage_limits(UsageQuery {
            group: q.group,
            from: q.from,
            to: q.to,
            step: q.step,
            ..UsageQuery::default()
        })
        .await?;
    Ok(Some(
        points
            .into_iter()
            .map(|p| LimitUse {
                t: p.t,
                group: p.group,
                gateway: p.gateway,
                api: p.api,
                limit: p.limit,
                key: p.key,
                scope: p.scope,
                used: p.used,
                max: p.quota,
            })
            .collect(),
    ))
}

/// The newest fleet events of one kind (`deny`, `dlp`, `limit` …) over the last 7 days.
pub(crate) async fn events(
    state: &AppState,
    group: Option<String>,
    kind: Option<&str>,
    limit: u64,
) -> Result<Option<Vec<Event>>, UiError> {
    let to = crate::server::unix_now() + 60;
    let events = state
        .store
        .usage_events(EventQuery {
            group,
            kind: kind.map(str::to_owned),
            from: to.saturating_sub(7 * 86_400),
            to,
            limit,
            ..EventQuery::default()
        })
        .await?;
    Ok(Some(
        events
            .into_iter()
            .map(|e| Event {
                gateway: e.gateway,
                group: e.group,
                api: e.api,
                consumer: e.consumer,
                reason: e.reason,
                count: e.count,
                last_at_ms: e.last_at_ms,
            })
            .collect(),
    ))
}
